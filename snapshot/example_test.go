package snapshot_test

import (
	"bytes"
	"errors"
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

// captureSleeper starts /bin/sleep with one environment variable, waits
// until it sleeps, and captures it. The caller kills the process.
func captureSleeper() (*exec.Cmd, *snapshot.Image) {
	cmd := exec.Command("/bin/sleep", "600")
	cmd.Env = []string{"GREETING=hello from the stack"}
	if err := cmd.Start(); err != nil {
		log.Fatalf("start sleep: %v", err)
	}

	// Wait past the dynamic loader, whose mappings change while it runs.
	pid := cmd.Process.Pid
	asleep := fmt.Sprintf("%d ", unix.SYS_CLOCK_NANOSLEEP)
	for data := ""; !strings.HasPrefix(data, asleep); time.Sleep(time.Millisecond) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
		if err != nil {
			log.Fatalf("read system call of pid %d: %v", pid, err)
		}
		data = string(raw)
	}

	img, err := engine.Capture(pid, nil)
	if err != nil {
		log.Fatal(err)
	}
	return cmd, img
}

// Save snapshots of a process in a store in a directory, list them, read a
// saved region, and remove them.
func ExampleStore_Save() {
	sleeper, img := captureSleeper()
	defer func() {
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait()
	}()

	// OpenURL takes a directory, as here, or s3://BUCKET/PREFIX.
	dir, err := os.MkdirTemp("", "ckptfs-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := snapshot.OpenURL(dir, nil)
	if err != nil {
		log.Fatal(err)
	}

	// An empty name picks the next snap-N of the process.
	for _, name := range []string{"", "before-upgrade", ""} {
		info, err := store.Save(img, name)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("saved", info.Name)
	}
	_, err = store.Save(img, "before-upgrade")
	fmt.Println("saving a taken name again fails with EEXIST:", errors.Is(err, unix.EEXIST))

	// List sorts by capture time, then by name: all three hold one image.
	list, err := store.List(img.Process.PID)
	if err != nil {
		log.Fatal(err)
	}
	for _, info := range list {
		fmt.Printf("listed %s of %s, %d thread\n", info.Name, info.Comm, info.Threads)
	}

	snap, err := store.Load(img.Process, "before-upgrade")
	if err != nil {
		log.Fatal(err)
	}
	defer snap.Close()
	for i, r := range snap.Image.Regions {
		if r.Path != "[stack]" {
			continue
		}
		stack := make([]byte, r.Len())
		if err := snap.ReadRegion(i, stack, 0); err != nil {
			log.Fatal(err)
		}
		start := bytes.Index(stack, []byte("GREETING="))
		end := start + bytes.IndexByte(stack[start:], 0)
		fmt.Printf("read %s from the saved stack\n", stack[start:end])
	}

	for _, info := range list {
		if err := store.Remove(info.Process, info.Name); err != nil {
			log.Fatal(err)
		}
	}
	_, err = store.Load(img.Process, "before-upgrade")
	fmt.Println("loading a removed snapshot fails with ENOENT:", errors.Is(err, unix.ENOENT))

	// Output:
	// saved snap-1
	// saved before-upgrade
	// saved snap-2
	// saving a taken name again fails with EEXIST: true
	// listed before-upgrade of sleep, 1 thread
	// listed snap-1 of sleep, 1 thread
	// listed snap-2 of sleep, 1 thread
	// read GREETING=hello from the stack from the saved stack
	// loading a removed snapshot fails with ENOENT: true
}

// ValidName accepts the names a user may give a snapshot.
func ExampleValidName() {
	for _, name := range []string{"before-upgrade", "v1.2_rc", "-dash", "status", strings.Repeat("x", 65)} {
		err := snapshot.ValidName(name)
		fmt.Printf("%.12s valid: %v\n", name, err == nil)
	}

	// Output:
	// before-upgra valid: true
	// v1.2_rc valid: true
	// -dash valid: false
	// status valid: false
	// xxxxxxxxxxxx valid: false
}
