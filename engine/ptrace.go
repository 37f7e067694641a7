package engine

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// seizeOptions traces clones (so a thread created during the freeze is
// attached too), marks syscall stops with 0x80 and reports exec, which
// aborts the operation. PTRACE_O_EXITKILL is left out on purpose: if the
// daemon dies, the target must run on.
const seizeOptions = unix.PTRACE_O_TRACECLONE | unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_TRACEEXEC

// stopTimeout bounds how long one thread may take to reach a ptrace stop.
const stopTimeout = 5 * time.Second

// ptraceRaw issues a ptrace request with plain integer arguments, retrying
// EINTR.
//
// Precondition: called on the op's locked thread.
func ptraceRaw(req int, tid int, addr, data uintptr) error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, data, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// Precondition: called on the op's locked thread.
func ptraceSeize(tid int) error {
	return ptraceRaw(unix.PTRACE_SEIZE, tid, 0, seizeOptions)
}

// Precondition: called on the op's locked thread.
func ptraceInterrupt(tid int) error {
	return ptraceRaw(unix.PTRACE_INTERRUPT, tid, 0, 0)
}

// ptraceCont resumes tid, delivering sig unless it is 0.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceCont(tid int, sig unix.Signal) error {
	return ptraceRaw(unix.PTRACE_CONT, tid, 0, uintptr(sig))
}

// ptraceSyscall resumes tid until the next syscall entry or exit.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceSyscall(tid int) error {
	return ptraceRaw(unix.PTRACE_SYSCALL, tid, 0, 0)
}

// ptraceDetach releases tid, delivering sig unless it is 0.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceDetach(tid int, sig unix.Signal) error {
	return ptraceRaw(unix.PTRACE_DETACH, tid, 0, uintptr(sig))
}

// waitTid waits for the next state change of one traced thread. It polls
// with WNOHANG, so a thread that never stops costs an error after
// stopTimeout instead of a hang. It waits only for tid, never for -1, so
// it cannot reap other children of the daemon, which os/exec waits for.
//
// Precondition: called on the op's locked thread.
func waitTid(tid int) (unix.WaitStatus, error) {
	deadline := time.Now().Add(stopTimeout)
	pause := 5 * time.Microsecond
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(tid, &ws, unix.WNOHANG|unix.WALL, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, fmt.Errorf("wait for tid %d: %w", tid, err)
		case got == tid:
			return ws, nil
		}

		if time.Now().After(deadline) {
			return 0, fmt.Errorf("wait for tid %d: no ptrace stop within %v: %w", tid, stopTimeout, unix.ETIMEDOUT)
		}
		// nanosleep blocks this OS thread directly: time.Sleep would park
		// the locked goroutine and add a scheduler handoff to every wake-up.
		ts := unix.NsecToTimespec(pause.Nanoseconds())
		_ = unix.Nanosleep(&ts, nil)
		pause = min(2*pause, time.Millisecond)
	}
}

// stopEvent returns the PTRACE_EVENT_* number of a stop, 0 for a signal or
// syscall stop.
func stopEvent(ws unix.WaitStatus) int {
	return int(ws>>16) & 0xff
}

// isJobStopSignal reports whether sig starts a job-control (group) stop.
func isJobStopSignal(sig unix.Signal) bool {
	switch sig {
	case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		return true
	}
	return false
}
