package engine

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// maxStopRounds bounds the resumes while waiting for one thread's stop
// (each resume delivers a signal or passes a clone event).
const maxStopRounds = 64

// waitStops waits until every seized thread is in a ptrace stop, adopts
// threads cloned meanwhile, and drops threads that exited. A last scan of
// /proc/PID/task seizes any thread still missing.
//
// Precondition: called on the op's locked thread, after freeze.
func (op *Op) waitStops() error {
	for {
		for i := 0; i < len(op.threads); i++ {
			th := op.threads[i]
			if th.stopped || th.exited {
				continue
			}
			if err := op.waitStop(th); err != nil {
				return err
			}
		}
		op.dropExited()
		if err := op.checkMainSeized(); err != nil {
			return err
		}

		tids, err := listTasks(op.pid)
		if err != nil {
			return err
		}
		added, err := op.seizeNew(tids)
		if err != nil {
			return err
		}
		if added == 0 {
			return nil
		}
	}
}

// dropExited removes threads that ended during the operation.
//
// Precondition: called on the op's locked thread.
func (op *Op) dropExited() {
	kept := op.threads[:0]
	for _, th := range op.threads {
		if !th.exited {
			kept = append(kept, th)
		}
	}
	op.threads = kept
}

// waitStop waits for th to reach the stop Begin requested. A signal that
// arrives first is delivered: the thread runs its handler or enters a
// job-control stop, and a repeated interrupt stops it afterwards. A thread
// reported by a clone event is adopted, and th is marked exited when it
// ended.
//
// Precondition: called on the op's locked thread; th was interrupted.
func (op *Op) waitStop(th *thread) error {
	for range maxStopRounds {
		ws, err := waitTid(th.tid)
		if err != nil {
			return err
		}
		if ws.Exited() || ws.Signaled() {
			th.exited = true
			return nil
		}
		if !ws.Stopped() {
			continue
		}

		done, err := op.handleFreezeStop(th, ws)
		if done || err != nil {
			return err
		}
	}
	return fmt.Errorf("wait for stop of tid %d: still running after %d resumes: %w", th.tid, maxStopRounds, unix.EAGAIN)
}

// handleFreezeStop acts on one stop seen while waiting for th to freeze
// and reports whether th is now frozen.
//
// Precondition: called on the op's locked thread; th is in a ptrace stop.
func (op *Op) handleFreezeStop(th *thread, ws unix.WaitStatus) (bool, error) {
	sig := ws.StopSignal()
	switch stopEvent(ws) {
	case unix.PTRACE_EVENT_STOP:
		th.stopped = true
		th.jobStop = isJobStopSignal(sig)
		return true, nil

	case unix.PTRACE_EVENT_EXEC:
		// The thread sits in the exec event stop, so thaw can detach it.
		th.stopped = true
		return false, fmt.Errorf("tid %d: %w", th.tid, errExec)

	case unix.PTRACE_EVENT_CLONE:
		if err := op.adoptClone(th); err != nil {
			return false, err
		}
		return false, op.resumeAndInterrupt(th, 0)

	case 0:
		if sig == unix.SIGTRAP|0x80 {
			return false, op.resumeAndInterrupt(th, 0)
		}
		op.log.Debug("delivering signal that arrived before the freeze", "tid", th.tid, "signal", sig)
		return false, op.resumeAndInterrupt(th, sig)

	default:
		return false, op.resumeAndInterrupt(th, 0)
	}
}

// adoptClone records the thread created by th's clone, which the kernel
// attached automatically and which reports its own stop later.
//
// Precondition: called on the op's locked thread; th is in a clone event stop.
func (op *Op) adoptClone(th *thread) error {
	msg, err := ptraceGetEventMsg(th.tid)
	if err != nil {
		return fmt.Errorf("read clone event of tid %d: %w", th.tid, err)
	}
	if op.thread(int(msg)) == nil {
		op.addThread(int(msg))
	}
	return nil
}

// resumeAndInterrupt continues th with sig and interrupts it again.
//
// Precondition: called on the op's locked thread; th is in a ptrace stop.
func (op *Op) resumeAndInterrupt(th *thread, sig unix.Signal) error {
	if err := ptraceCont(th.tid, sig); err != nil {
		return fmt.Errorf("resume tid %d: %w", th.tid, err)
	}
	if err := ptraceInterrupt(th.tid); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("interrupt tid %d: %w", th.tid, err)
	}
	return nil
}
