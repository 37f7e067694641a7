package engine_test

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// startSleeper starts /bin/sleep with one environment variable, which the
// kernel copies onto the top of its stack at exec. Capturing and restoring
// need root, or the same uid as the process and a ptrace_scope that allows
// it.
func startSleeper() *exec.Cmd {
	cmd := exec.Command("/bin/sleep", "600")
	cmd.Env = []string{"GREETING=hello from the stack"}
	if err := cmd.Start(); err != nil {
		log.Fatalf("start sleep: %v", err)
	}
	waitAsleep(cmd.Process.Pid)
	return cmd
}

// waitAsleep waits until process pid blocks in clock_nanosleep, past the
// dynamic loader, whose mappings change while it runs.
func waitAsleep(pid int) {
	prefix := fmt.Sprintf("%d ", unix.SYS_CLOCK_NANOSLEEP)
	for range 10000 {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
		if err != nil {
			log.Fatalf("read system call of pid %d: %v", pid, err)
		}
		if strings.HasPrefix(string(data), prefix) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	log.Fatalf("pid %d did not reach clock_nanosleep", pid)
}

// stopSleeper kills the process by its pid and reaps it.
func stopSleeper(cmd *exec.Cmd) {
	if err := cmd.Process.Kill(); err != nil {
		log.Printf("kill sleep: %v", err)
	}
	_ = cmd.Wait()
}

// Capture a process, save it in a store, read its stack back from the
// store, and roll the live process back to the snapshot.
func Example() {
	sleeper := startSleeper()
	defer stopSleeper(sleeper)
	pid := sleeper.Process.Pid

	// The process is stopped only while its state is copied out.
	img, err := engine.Capture(pid, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("captured %s: %d thread\n", img.Comm, len(img.Threads))

	dir, err := os.MkdirTemp("", "ckptfs-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := snapshot.Open(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	info, err := store.Save(img, "")
	if err != nil {
		log.Fatal(err)
	}
	list, err := store.Snapshots(img.Process)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("saved %s; the store lists %d snapshot\n", info.Name, len(list))

	snap, err := store.Load(img.Process, info.Name)
	if err != nil {
		log.Fatal(err)
	}
	defer snap.Close()
	fmt.Println(findInStack(snap, "GREETING="))

	// Restore rolls the same process back in place; it goes on sleeping.
	if _, err := engine.Restore(pid, snap.Image, snap, nil, nil); err != nil {
		log.Fatal(err)
	}
	fmt.Println("restored; still running:", unix.Kill(pid, 0) == nil)

	if err := store.Remove(img.Process, info.Name); err != nil {
		log.Fatal(err)
	}

	// Output:
	// captured sleep: 1 thread
	// saved snap-1; the store lists 1 snapshot
	// GREETING=hello from the stack
	// restored; still running: true
}

// findInStack returns the NUL-terminated string that starts with prefix in
// the saved [stack] region of snap, or "" when there is none.
func findInStack(snap *snapshot.Snapshot, prefix string) string {
	for i, r := range snap.Image.Regions {
		if r.Path != "[stack]" {
			continue
		}
		stack := make([]byte, r.Len())
		if err := snap.ReadRegion(i, stack, 0); err != nil {
			log.Fatal(err)
		}
		start := bytes.Index(stack, []byte(prefix))
		if start < 0 {
			return ""
		}
		end := bytes.IndexByte(stack[start:], 0)
		return string(stack[start : start+end])
	}
	return ""
}

// Begin freezes a process without waiting for it to stop; Capture then
// waits, reads the process and thaws it.
func ExampleBegin() {
	sleeper := startSleeper()
	defer stopSleeper(sleeper)

	op, err := engine.Begin(sleeper.Process.Pid, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer op.Close()
	img, err := op.Capture()
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println("main thread first:", img.Threads[0].TID == op.PID())
	for _, r := range img.Regions {
		if r.Path == "[stack]" {
			fmt.Println("stack saved:", r.Saved && len(r.Runs) > 0)
		}
	}

	// Output:
	// main thread first: true
	// stack saved: true
}
