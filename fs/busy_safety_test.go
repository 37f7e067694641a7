package fs

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
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
	tg := testproc.StartMem(t, 512, false)
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

	// The status reads "running" from the freeze on. A copy-on-write
	// capture keeps the target frozen for a few milliseconds only, so this
	// probe may come during the freeze or during the save.
	waitUntil(t, "the capture starts", func() bool {
		return strings.Contains(m.read(tg.PID, "status"), "result: running")
	})
	probeBusy(t, m, tg.PID, "frozen")

	waitUntil(t, "the capture thaws the target and saves", func() bool {
		return tracerOf(tg.PID) == 0 && len(tmpEntries(t, m.storeDir)) > 0
	})
	tg.CheckCounting(t, "target while its capture saves")
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
	tg.CheckCounting(t, "target after the captures")
}

func TestOwnRequestDuringOtherCaptureIsBusy(t *testing.T) {
	m := newMount(t)
	cmd := exec.Command("bash", "-c", `read x; echo 1 > "$1/self/capture"; echo "rc $?"; read x`, "bash", m.dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	sh := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })
	m.mustWrite("first\n", sh.PID, "capture")

	// The test's capture of the shell is kept saving. Its save would freeze
	// the shell again at the end, so a request of the shell must not wait
	// for it: the shell could not stop while it waits inside the daemon.
	release := lockProcessDir(t, m.storeDir, sh.PID)
	done := make(chan error, 1)
	go func() { done <- m.write("1\n", sh.PID, "capture") }()
	t.Cleanup(func() {
		release()
		if err := m.awaitOrAbort("capture", done); err != nil {
			t.Errorf("capture: %v", err)
		}
	})
	waitUntil(t, "the capture saves", func() bool {
		return tracerOf(sh.PID) == 0 && len(tmpEntries(t, m.storeDir)) > 0
	})

	if _, err := io.WriteString(stdin, "\n"); err != nil {
		t.Fatal(err)
	}
	if got := sh.Expect("rc "); got != "1" {
		t.Errorf("shell's own capture during the test's capture: exit %s, want 1", got)
	}
	// bash's stderr arrives through its own pipe, after or before "rc".
	waitUntil(t, "bash reports EBUSY on stderr", func() bool {
		return strings.Contains(stderr.String(), "Device or resource busy")
	})
	wantRefusal(t, m, sh.PID, unix.EBUSY, "(saving)")
}
