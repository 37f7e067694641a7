package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

func TestListShowsLiveThenExited(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)
	mustRun(t, "capture", "--store", store, pid, "listed")

	entry := findEntry(listJSON(t, store), p.PID, "listed")
	if entry == nil {
		t.Fatalf("list --json has no snapshot listed of pid %d", p.PID)
	}
	if entry.State != stateLive {
		t.Errorf("state of running pid %d is %q, want %q", p.PID, entry.State, stateLive)
	}
	if entry.Command != "cli_counter" {
		t.Errorf("command of pid %d is %q, want cli_counter", p.PID, entry.Command)
	}
	if entry.Memory == 0 || entry.OnDisk == 0 {
		t.Errorf("snapshot listed has memory %d bytes and %d on disk, want both above 0", entry.Memory, entry.OnDisk)
	}
	checkTableRow(t, store, p.PID, "listed", stateLive)

	p.Kill()
	entry = findEntry(listJSON(t, store, pid), p.PID, "listed")
	if entry == nil {
		t.Fatalf("list --json %d lost snapshot listed after the process exited", p.PID)
	}
	if entry.State != stateExited {
		t.Errorf("state of killed pid %d is %q, want %q", p.PID, entry.State, stateExited)
	}
	checkTableRow(t, store, p.PID, "listed", stateExited)
}

// checkTableRow checks that the table of list shows snapshot name of pid
// with state.
func checkTableRow(t *testing.T, store string, pid int, name, state string) {
	t.Helper()
	r := mustRun(t, "list", "--store", store)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	header := strings.Fields(lines[0])
	wantHeader := []string{"PID", "COMMAND", "SNAPSHOT", "CAPTURED", "MEMORY", "ON", "DISK", "STATE"}
	if strings.Join(header, " ") != strings.Join(wantHeader, " ") {
		t.Errorf("list header is %q, want %q", lines[0], strings.Join(wantHeader, " "))
	}
	for _, line := range lines[1:] {
		fields := strings.Fields(line)
		if len(fields) > 2 && fields[0] == strconv.Itoa(pid) && fields[2] == name {
			if got := fields[len(fields)-1]; got != state {
				t.Errorf("list row %q ends in state %q, want %q", line, got, state)
			}
			return
		}
	}
	t.Errorf("list has no row for snapshot %s of pid %d:\n%s", name, pid, r.stdout)
}

func TestRmRemovesSnapshot(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)
	mustRun(t, "capture", "--store", store, pid, "doomed")
	mustRun(t, "capture", "--store", store, pid, "kept")

	mustRun(t, "rm", "--store", store, pid, "doomed")
	entries := listJSON(t, store, pid)
	if findEntry(entries, p.PID, "doomed") != nil {
		t.Errorf("snapshot doomed of pid %d is still listed after rm", p.PID)
	}
	if findEntry(entries, p.PID, "kept") == nil {
		t.Errorf("rm of doomed also removed snapshot kept of pid %d", p.PID)
	}

	r := ckptfs(t, "rm", "--store", store, pid, "doomed")
	if r.code != exitFailed {
		t.Errorf("second rm of doomed: exit %d, want %d", r.code, exitFailed)
	}
	if !strings.Contains(r.stderr, "pid "+pid) || !strings.Contains(r.stderr, `"doomed"`) {
		t.Errorf("stderr of the failed rm does not name pid %s and snapshot doomed:\n%s", pid, r.stderr)
	}
}

func TestRestoreRollsCounterBack(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)

	p.Drain()
	mustRun(t, "capture", "--store", store, pid, "early")

	// Let the counter run well past its value in the snapshot.
	last := readCount(t, p)
	for range 25 {
		last = readCount(t, p)
	}

	// The newest snapshot, early, is also called latest.
	r := mustRun(t, "restore", "--store", store, pid, "latest")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if lines[0] != "restored pid "+pid+" to snapshot early" {
		t.Errorf("restore printed %q first, want it to confirm the rollback", lines[0])
	}
	for _, line := range lines[1:] {
		if !strings.HasPrefix(line, "left alone: ") {
			t.Errorf("restore printed %q, want each line after the first to start with \"left alone: \"", line)
		}
	}
	if r.stderr != "" {
		t.Errorf("restore at the default log level wrote to stderr:\n%s", r.stderr)
	}

	// Counts printed before the restore only grow; the first smaller one
	// comes from the rolled-back process.
	for range 2000 {
		n := readCount(t, p)
		if n < last {
			t.Logf("counter dropped from %d to %d", last, n)
			return
		}
		last = n
	}
	t.Fatalf("counter of pid %d never dropped after restore; last value %d", p.PID, last)
}

// readCount returns the next value that cli_counter prints.
func readCount(t *testing.T, p *testproc.Proc) uint64 {
	t.Helper()
	text := p.Expect("count ")
	n, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		t.Fatalf("cli_counter printed %q after count: %v", text, err)
	}
	return n
}

func TestRestoreUnknownSnapshot(t *testing.T) {
	needRoot(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)

	r := ckptfs(t, "restore", "--store", newStore(t), pid, "never-taken")
	if r.code != exitFailed {
		t.Fatalf("restore of a missing snapshot: exit %d, want %d; stderr:\n%s", r.code, exitFailed, r.stderr)
	}
	for _, want := range []string{"process " + pid, "never-taken", "ckptfs list " + pid} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr of the failed restore lacks %q:\n%s", want, r.stderr)
		}
	}
	if n := strings.Count(r.stderr, "load snapshot"); n != 1 {
		t.Errorf("stderr says \"load snapshot\" %d times, want once:\n%s", n, r.stderr)
	}
	if !p.Alive() {
		t.Errorf("pid %d exited after a failed restore", p.PID)
	}
}

func TestRestoreOntoRecycledPID(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	old := startCounter(t)
	pid := strconv.Itoa(old.PID)
	mustRun(t, "capture", "--store", store, pid, "old")
	old.Kill()

	// Put a new process on the same pid.
	spawner := testproc.Start(t, testproc.Build(t, "cli_at_pid"), pid)
	if line := spawner.Line(); line != "child "+pid {
		t.Fatalf("cli_at_pid %s printed %q, want a child on that pid", pid, line)
	}

	r := ckptfs(t, "restore", "--store", store, pid, "old")
	if r.code != exitFailed {
		t.Fatalf("restore of old onto the new process with pid %s: exit %d, want %d; stderr:\n%s",
			pid, r.code, exitFailed, r.stderr)
	}
	if !strings.Contains(r.stderr, "earlier process with pid "+pid) {
		t.Errorf("stderr does not say the snapshot belongs to an earlier process:\n%s", r.stderr)
	}

	entry := findEntry(listJSON(t, store, pid), old.PID, "old")
	if entry == nil {
		t.Fatalf("list --json %s lost snapshot old", pid)
	}
	if entry.State != stateExited {
		t.Errorf("state of snapshot old is %q while another process has pid %s, want %q", entry.State, pid, stateExited)
	}
}

func TestRestoreWaitsThroughInterrupt(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	tg := testproc.StartMem(t, 256, false)
	pid := strconv.Itoa(tg.PID)
	mustRun(t, "capture", "--store", store, pid, "base")
	tg.Touch(t)

	cmd := exec.Command(binary, "restore", "--store", store, pid, "base")
	cmd.Env = append(os.Environ(), "CKPTFS_STORE=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt the command once its worker holds the target.
	for deadline := time.Now().Add(30 * time.Second); tracerPID(t, tg.PID) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no restore worker froze pid %d; stderr:\n%s", tg.PID, stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()

	if err != nil {
		t.Errorf("interrupted restore: %v, want exit 0 once the restore completed\nstderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "ckptfs: SIGINT: the restore of process") {
		t.Errorf("stderr %q, want the interrupt acknowledged", stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "restored pid "+pid+" to snapshot base") {
		t.Errorf("stdout %q, want the restore confirmed", stdout.String())
	}
	if seeds := tg.Seeds(t); len(seeds) != 1 || seeds[0x5afe0001] == 0 {
		t.Errorf("memory seeds after the restore %v, want only the snapshot's", seeds)
	}
}

// tracerPID returns the TracerPid of pid.
func tracerPID(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no TracerPid in /proc/%d/status", pid)
	return 0
}
