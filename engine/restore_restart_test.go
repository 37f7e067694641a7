package engine

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// sleepSeconds is the timeout of the calls of rst_sleep, far longer than
// any test takes, so that no call returns by itself.
const sleepSeconds = "600"

// sleeper is a running rst_sleep with the tids of its three sleeping
// threads and the system call each blocks in first.
type sleeper struct {
	*commanded
	tids  []string
	calls []int
}

func startSleeper(t *testing.T) *sleeper {
	p := startCommanded(t, "rst_sleep", sleepSeconds)
	s := &sleeper{
		commanded: p,
		tids:      strings.Fields(p.Expect("ready ")),
		calls:     []int{unix.SYS_CLOCK_NANOSLEEP, unix.SYS_FUTEX, unix.SYS_POLL},
	}
	s.waitCalls(t, s.calls...)
	return s
}

// waitCalls waits until each sleeping thread blocks in the call given for
// it, or in the first call given for all of them when there is one.
func (s *sleeper) waitCalls(t *testing.T, calls ...int) {
	t.Helper()
	for i, tid := range s.tids {
		nr := calls[0]
		if len(calls) > 1 {
			nr = calls[i]
		}
		waitSyscall(t, s.PID, tid, nr)
	}
}

// checkAsleep checks that no call of rst_sleep has returned.
func (s *sleeper) checkAsleep(t *testing.T, when string) {
	t.Helper()
	status := s.send(t, "status", "status ")
	last := s.Expect("last ")
	if status != "nanosleep=0 futex=0 poll=0" {
		t.Errorf("%s: returns %s (last %s), want nanosleep=0 futex=0 poll=0", when, status, last)
	}
	checkRunning(t, s.Proc)
}

// checkInRestart fails the test unless the sleeping threads were captured
// inside restart_syscall, so that a test of that case cannot pass without
// exercising it.
func (s *sleeper) checkInRestart(t *testing.T, img *snapshot.Image) {
	t.Helper()
	for _, tid := range s.tids {
		n, _ := strconv.Atoi(tid)
		th := imageThreadByTID(img, n)
		if th == nil || !inRestartSyscall(&th.RawRegs) {
			t.Fatalf("thread %s not captured inside restart_syscall: %+v", tid, th)
		}
	}
}

func imageThreadByTID(img *snapshot.Image, tid int) *snapshot.Thread {
	for i := range img.Threads {
		if img.Threads[i].TID == tid {
			return &img.Threads[i]
		}
	}
	return nil
}

// TestRestoreRestartSyscall captures threads blocked in nanosleep, a futex
// wait and poll, each with a timeout, twice. After the first capture they
// continue through restart_syscall, so the second snapshot has them inside
// it. Both snapshots restore in either order, and no call returns early.
func TestRestoreRestartSyscall(t *testing.T) {
	s := startSleeper(t)
	first := captureImage(t, s.PID)
	s.waitCalls(t, unix.SYS_RESTART_SYSCALL)
	second := captureImage(t, s.PID)
	s.checkInRestart(t, second)

	restoreImage(t, s.Proc, second)
	s.waitCalls(t, unix.SYS_RESTART_SYSCALL)
	s.checkAsleep(t, "after restoring the second snapshot")

	// The first snapshot issues the original calls again.
	restoreImage(t, s.Proc, first)
	s.waitCalls(t, s.calls...)
	s.checkAsleep(t, "after restoring the first snapshot")

	// The threads are now in their original calls, whose restart is
	// pending, and the second snapshot restores onto them too.
	restoreImage(t, s.Proc, second)
	s.waitCalls(t, unix.SYS_RESTART_SYSCALL)
	s.checkAsleep(t, "after restoring the second snapshot again")
}

// TestRestoreRestartSyscallMoved rejects a snapshot with a thread inside
// restart_syscall once that thread has left the call: its restart block
// would belong to another call.
func TestRestoreRestartSyscallMoved(t *testing.T) {
	s := startSleeper(t)
	captureImage(t, s.PID)
	s.waitCalls(t, unix.SYS_RESTART_SYSCALL)
	img := captureImage(t, s.PID)
	s.checkInRestart(t, img)

	s.send(t, "post", "posted")
	futexTID := s.tids[1]
	waitSyscall(t, s.PID, futexTID, unix.SYS_PAUSE)

	_, err := Restore(s.PID, img, imageMemory{img}, nil, testLogger(t))
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "thread "+futexTID) {
		t.Fatalf("restore: %v, want an EOPNOTSUPP RejectError naming thread %s", err, futexTID)
	}
	t.Logf("rejected: %v", err)
	if got := s.send(t, "status", "status "); got != "nanosleep=0 futex=1 poll=0" {
		t.Errorf("after the rejected restore: returns %s, want nanosleep=0 futex=1 poll=0", got)
	}
	checkRunning(t, s.Proc)
}

// TestRestoreSleepCommand restores sleep(1), which sleeps in one relative
// clock_nanosleep, from its second snapshot and from its first.
func TestRestoreSleepCommand(t *testing.T) {
	p := testproc.Start(t, "/bin/sleep", sleepSeconds)
	tid := strconv.Itoa(p.PID)
	waitSyscall(t, p.PID, tid, unix.SYS_CLOCK_NANOSLEEP)
	first := captureImage(t, p.PID)
	waitSyscall(t, p.PID, tid, unix.SYS_RESTART_SYSCALL)
	second := captureImage(t, p.PID)
	if !inRestartSyscall(&second.Threads[0].RawRegs) {
		t.Fatalf("sleep not captured inside restart_syscall: %+v", second.Threads[0].RawRegs)
	}

	restoreImage(t, p, second)
	waitSyscall(t, p.PID, tid, unix.SYS_RESTART_SYSCALL)
	restoreImage(t, p, first)
	waitSyscall(t, p.PID, tid, unix.SYS_CLOCK_NANOSLEEP)
	checkRunning(t, p)
}

// pythonSleep sleeps 600 s at a time in its main thread and counts the
// sleeps that ended. A second thread prints the count for each line read.
const pythonSleep = `
import sys, threading, time
slept = 0
def status():
    for line in sys.stdin:
        print("status slept=%d" % slept, flush=True)
threading.Thread(target=status, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(600)
    slept += 1
`

// TestRestorePythonSleep restores a Python process sleeping in
// time.sleep from its second snapshot and from its first.
func TestRestorePythonSleep(t *testing.T) {
	p := startCommandedBin(t, "/usr/bin/python3", "-c", pythonSleep)
	p.Expect("ready")
	tid := strconv.Itoa(p.PID)
	waitSyscall(t, p.PID, tid, unix.SYS_CLOCK_NANOSLEEP)
	first := captureImage(t, p.PID)
	second := captureImage(t, p.PID)

	for _, c := range []struct {
		name string
		img  *snapshot.Image
	}{{"second", second}, {"first", first}, {"second again", second}} {
		restoreImage(t, p.Proc, c.img)
		waitSyscall(t, p.PID, tid, unix.SYS_CLOCK_NANOSLEEP)
		if got := p.send(t, "status", "status "); got != "slept=0" {
			t.Errorf("after restoring the %s snapshot: %s, want slept=0", c.name, got)
		}
	}
	checkRunning(t, p.Proc)
}
