package fs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockProcessDir takes the flock that Store.Save needs to commit a
// snapshot of process pid, so that a capture of it stays in its saving
// phase until the returned function releases the lock.
func lockProcessDir(t *testing.T, storeDir string, pid int) func() {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(storeDir, "*", strconv.Itoa(pid)+"-*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("process directory of pid %d in the store: %v %v", pid, dirs, err)
	}
	dir, err := os.Open(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(dir.Fd()), unix.LOCK_EX); err != nil {
		t.Fatalf("lock %s: %v", dirs[0], err)
	}

	released := false
	release := func() {
		if !released {
			released = true
			dir.Close()
		}
	}
	t.Cleanup(release)
	return release
}

// waitUntil polls cond until it holds, failing the test after pollLimit.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(pollLimit); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", pollLimit, what)
		}
	}
}

// probeBusy writes a capture and a restore to pid and fails unless both
// get EBUSY with a reason naming the operation in progress.
func probeBusy(t *testing.T, m *testMount, pid int, phase string) {
	t.Helper()
	wantErrno(t, "capture during the "+phase+" phase", m.writeOrAbort("probe\n", pid, "capture"), unix.EBUSY)
	wantRefusal(t, m, pid, unix.EBUSY, "a capture requested by pid "+strconv.Itoa(os.Getpid()))
	wantErrno(t, "restore during the "+phase+" phase", m.writeOrAbort("first\n", pid, "restore"), unix.EBUSY)
	wantRefusal(t, m, pid, unix.EBUSY, "is in progress")
}

func TestBusyForWholeCapture(t *testing.T) {
	m := newMount(t)
	tg := startMemTarget(t, 512, false)
	m.mustWrite("first\n", tg.PID, "capture")

	// Holding the process directory's lock keeps the next capture from
	// committing, so its saving phase lasts until the test releases it.
	release := lockProcessDir(t, m.storeDir, tg.PID)
	done := make(chan error, 1)
	go func() { done <- m.write("1\n", tg.PID, "capture") }()
	t.Cleanup(func() {
		release()
		if err := m.awaitOrAbort("capture", done); err != nil {
			t.Errorf("capture: %v", err)
		}
	})

	waitUntil(t, "the capture freezes the target", func() bool { return tracerOf(tg.PID) > 0 })
	probeBusy(t, m, tg.PID, "frozen")

	waitUntil(t, "the capture thaws the target and saves", func() bool {
		return tracerOf(tg.PID) == 0 && len(tmpEntries(t, m.storeDir)) > 0
	})
	tg.checkCounting(t, "target while its capture saves")
	probeBusy(t, m, tg.PID, "saving")
	if status := m.read(tg.PID, "status"); !strings.Contains(status, "(saving)") {
		t.Errorf("status during the save does not name the phase:\n%s", status)
	}

	release()
	if err := m.awaitOrAbort("capture held up by the lock", done); err != nil {
		t.Fatalf("capture held up by the lock: %v", err)
	}
	done <- nil
	if got := m.read(tg.PID, "capture"); got != "snap-1\n" {
		t.Errorf("capture reads %q, want snap-1 (no snapshot from the probes)", got)
	}
	if status := keyValues(m.read(tg.PID, "status")); status["result"] != "ok" || status["snapshot"] != "snap-1" {
		t.Errorf("status after the capture: %v", status)
	}
	m.mustWrite("1\n", tg.PID, "capture")
	tg.checkCounting(t, "target after the captures")
}
