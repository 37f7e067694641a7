package engine

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// thaw undoes freeze on every path: it reaps the copy-on-write clones
// killed since the last freeze, unmaps the scratch page, detaches
// every thread (delivering the signals held back during injections) and,
// when the process was in a job-control stop, makes sure it still is.
// Errors are logged, because thaw runs on paths that already fail.
//
// Precondition: called on the op's locked thread.
func (op *Op) thaw() {
	if !op.frozen {
		return
	}
	jobStopped := op.jobStopped()

	op.reapUnreaped()
	op.unmapScratch()
	for i := 0; i < len(op.threads); i++ {
		op.detach(op.threads[i])
	}
	op.frozenFor = time.Since(op.freezeStart)
	op.frozen = false
	op.threads = nil
	op.syscallIP = 0
	op.closeMem()

	if jobStopped {
		op.keepJobStopped()
	}
}

// detach releases one thread. A thread that was interrupted but never
// waited for is waited for first, because PTRACE_DETACH fails with ESRCH
// on a tracee that is not in a ptrace stop.
//
// Precondition: called on the op's locked thread.
func (op *Op) detach(th *thread) {
	if th.exited {
		return
	}
	if !th.stopped {
		if err := op.waitStop(th); err != nil {
			op.log.Warn("thread did not stop before detach", "tid", th.tid, "err", err)
		}
		if th.exited {
			return
		}
	}

	if len(th.signals) == 0 && !th.jobStop {
		op.rearmInterruptedWait(th)
	}

	var sig unix.Signal
	if len(th.signals) > 0 {
		sig = th.signals[0]
		for _, extra := range th.signals[1:] {
			if err := unix.Tgkill(op.pid, th.tid, extra); err != nil {
				op.log.Warn("re-sending held signal failed", "tid", th.tid, "signal", extra, "err", err)
			}
		}
	}
	if err := ptraceDetach(th.tid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		op.log.Warn("detach failed", "tid", th.tid, "err", err)
	}
}

// rearmInterruptedWait makes th, when the freeze interrupted it in an
// infinite wait that Linux does not restart (see rearmWait), enter the
// call again at detach instead of returning EINTR. A thread that a signal
// waits for keeps its EINTR, which that signal would have caused anyway.
// Failures leave the EINTR.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) rearmInterruptedWait(th *thread) {
	regs, err := th.getRegs()
	if err != nil || !interruptedWait(&regs) {
		return
	}
	var before [2]byte
	if op.readMem(regs.Rip-2, before[:]) != nil || signalWaiting(op.pid, th.tid) {
		return
	}
	rearmed := rearmWait(regs, before)
	if rearmed == regs {
		return
	}
	if err := th.setRegs(&rearmed); err != nil {
		op.log.Debug("re-entering an interrupted wait failed", "tid", th.tid, "err", err)
	}
}

// signalWaiting reports whether thread tid of pid has a signal pending,
// for itself or its process, that it does not block. It reports true when
// the status cannot be read, which keeps the thread as it is.
func signalWaiting(pid, tid int) bool {
	st, err := readStatusFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	return err != nil || (st.SigPnd|st.ShdPnd)&^st.SigBlk != 0
}

// jobStopped reports whether the process was in a job-control stop when
// it was frozen.
//
// Precondition: called on the op's locked thread.
func (op *Op) jobStopped() bool {
	for _, th := range op.threads {
		if th.jobStop {
			return true
		}
	}
	return false
}

// keepJobStopped stops the process again if it was job-stopped before the
// freeze but runs after the detach. The kernel normally re-enters the
// group stop on detach by itself, so this is a safety net.
func (op *Op) keepJobStopped() {
	// The detached threads enter the stop asynchronously: give them a moment.
	for range 100 {
		st, err := readProcStat(op.pid)
		if err != nil || st.State == 'T' {
			return
		}
		time.Sleep(time.Millisecond)
	}
	op.log.Warn("process left its job-control stop during the operation; stopping it again")
	if err := unix.Kill(op.pid, unix.SIGSTOP); err != nil {
		op.log.Warn("stopping the process again failed", "err", err)
	}
}
