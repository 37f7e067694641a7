package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// checkTimerIDs rejects a restore that must create a POSIX timer when the
// kernel cannot give a new timer a chosen ID (prctl
// PR_TIMER_CREATE_RESTORE_IDS).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) checkTimerIDs() error {
	for _, want := range r.img.Signals.Timers {
		cur, found := findTimer(r.queues.timers, want.ID)
		if found && sameTimerSetup(cur, want) {
			continue
		}
		_, err := r.op.syscall(r.op.threads[0], unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("POSIX timer %d must be created again, and this kernel cannot "+
				"give a new timer a chosen ID (prctl PR_TIMER_CREATE_RESTORE_IDS)", want.ID))
		}
		return err
	}
	return nil
}

// applyQueues sets the POSIX timers, the interval timers and the pending
// signals to the snapshot's.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyQueues() error {
	if err := r.applyPosixTimers(); err != nil {
		return err
	}
	if err := r.applyITimers(); err != nil {
		return err
	}
	return r.applyPending()
}

// applyPosixTimers deletes the timers the snapshot lacks or has with other
// settings, creates the snapshot's timers missing now with their IDs, and
// sets the time left and the period of each. A timer that the restore
// sets counts down from the time it had left at capture.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyPosixTimers() error {
	op, want := r.op, r.img.Signals.Timers
	for _, cur := range r.queues.timers {
		if w, found := findTimer(want, cur.ID); found && sameTimerSetup(cur, w) {
			continue
		}
		r.undo(func() error { return op.createTimer(cur) })
		if err := op.deleteTimer(cur.ID); err != nil {
			return err
		}
	}

	for _, w := range want {
		cur, found := findTimer(r.queues.timers, w.ID)
		if !found || !sameTimerSetup(cur, w) {
			r.undo(func() error { return op.deleteTimer(w.ID) })
			if err := op.createTimer(w); err != nil {
				return err
			}
			continue
		}
		r.undo(func() error { return op.setTimer(cur.ID, cur.State) })
		if err := op.setTimer(w.ID, w.State); err != nil {
			return err
		}
	}
	return nil
}

// applyITimers sets each interval timer that is armed now or was at
// capture.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyITimers() error {
	for which, want := range r.img.Signals.ITimers {
		cur := r.queues.itimers[which]
		if cur == (snapshot.TimerValue{}) && want == (snapshot.TimerValue{}) {
			continue
		}
		r.undo(func() error { return r.op.setITimer(which, cur) })
		if err := r.op.setITimer(which, want); err != nil {
			return err
		}
	}
	return nil
}

// applyPending replaces the queued signals with the snapshot's when they
// differ.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyPending() error {
	cur, want := r.queues.pending, r.img.Signals.Pending
	if slices.EqualFunc(cur, want, func(a, b snapshot.PendingSignal) bool {
		return a.TID == b.TID && bytes.Equal(a.Info, b.Info)
	}) {
		return nil
	}
	r.undo(func() error { return r.op.replacePending(cur) })
	return r.op.replacePending(want)
}

// replacePending empties every signal queue of the process, with injected
// rt_sigtimedwait calls that return at once, and queues the signals of
// list again. The main thread queues those of the process with
// rt_sigqueueinfo, and each thread its own with rt_tgsigqueueinfo.
// The kernel lets a thread queue any siginfo to itself, and every signal
// stays pending while the injection blocks them all. SIGKILL and SIGSTOP
// cannot be queued this way and are left out.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) replacePending(list []snapshot.PendingSignal) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var args [24]byte // sigset_t with every signal, then a zero struct timespec
	binary.LittleEndian.PutUint64(args[0:], ^uint64(0))
	if err := op.writeMem(addr+scratchSigset, args[:]); err != nil {
		return err
	}
	for _, th := range op.threads {
		if err := op.drainSignals(th, addr, len(list)); err != nil {
			return err
		}
	}

	for _, p := range list {
		sig := p.Signo()
		if !settableSignal(sig) {
			continue
		}
		if err := op.writeMem(addr+scratchSiginfo, p.Info); err != nil {
			return err
		}
		th := op.threads[0]
		nr, args := uintptr(unix.SYS_RT_SIGQUEUEINFO), []uintptr{uintptr(op.pid), uintptr(sig), uintptr(addr + scratchSiginfo)}
		if p.TID != 0 {
			if th = op.threadByTID(p.TID); th == nil {
				return fmt.Errorf("queue signal %d for tid %d: no such thread: %w", sig, p.TID, unix.ESRCH)
			}
			nr, args = unix.SYS_RT_TGSIGQUEUEINFO, []uintptr{uintptr(op.pid), uintptr(p.TID), uintptr(sig), uintptr(addr + scratchSiginfo)}
		}
		if _, err := op.syscall(th, nr, args...); err != nil {
			return fmt.Errorf("queue signal %d for tid %d: %w", sig, th.tid, err)
		}
	}
	return nil
}

// drainSignals dequeues every signal th can take: those of its own queue
// and of the queue of the process. known bounds the signals expected, so
// that a queue refilled as fast as it drains fails the restore.
//
// Precondition: called on the op's locked thread; all threads stopped;
// the scratch page holds the arguments replacePending wrote.
func (op *Op) drainSignals(th *thread, addr uint64, known int) error {
	limit := known + 2*(len(op.threads)+64)
	for range limit {
		_, err := op.syscall(th, unix.SYS_RT_SIGTIMEDWAIT, uintptr(addr+scratchSigset), 0, uintptr(addr+scratchTimeout), 8)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dequeue pending signals of tid %d: %w", th.tid, err)
		}
	}
	return fmt.Errorf("dequeue pending signals of tid %d: still pending after %d signals: %w", th.tid, limit, unix.EBUSY)
}

// createTimer creates POSIX timer t with its ID, its notification and its
// state.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) createTimer(t snapshot.PosixTimer) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var ev [64 + 8]byte // struct sigevent, then the timer ID
	le := binary.LittleEndian
	le.PutUint64(ev[0:], t.SigValue)
	le.PutUint32(ev[8:], uint32(t.Signal))
	le.PutUint32(ev[12:], uint32(t.Notify))
	le.PutUint32(ev[16:], uint32(t.TID))
	le.PutUint32(ev[64:], uint32(t.ID))
	if err := op.writeMem(addr+scratchSigevent, ev[:]); err != nil {
		return err
	}

	main := op.threads[0]
	if _, err := op.syscall(main, unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0); err != nil {
		return fmt.Errorf("create POSIX timer %d: enable chosen timer IDs: %w", t.ID, err)
	}
	_, createErr := op.syscall(main, unix.SYS_TIMER_CREATE, uintptr(t.Clock), uintptr(addr+scratchSigevent), uintptr(addr+scratchTimerID))
	if _, err := op.syscall(main, unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0); err != nil && createErr == nil {
		createErr = fmt.Errorf("disable chosen timer IDs: %w", err)
	}
	if createErr != nil {
		return fmt.Errorf("create POSIX timer %d: %w", t.ID, createErr)
	}
	return op.setTimer(t.ID, t.State)
}

// deleteTimer deletes POSIX timer id.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) deleteTimer(id int32) error {
	if _, err := op.syscall(op.threads[0], unix.SYS_TIMER_DELETE, uintptr(id)); err != nil {
		return fmt.Errorf("delete POSIX timer %d: %w", id, err)
	}
	return nil
}

// setTimer arms POSIX timer id to expire after v.Value and then every
// v.Interval, or disarms it when v.Value is zero.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) setTimer(id int32, v snapshot.TimerValue) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var spec [32]byte // struct itimerspec: it_interval, it_value
	putTimespec(spec[0:], v.Interval)
	putTimespec(spec[16:], v.Value)
	if err := op.writeMem(addr+scratchTimer, spec[:]); err != nil {
		return err
	}
	if _, err := op.syscall(op.threads[0], unix.SYS_TIMER_SETTIME, uintptr(id), 0, uintptr(addr+scratchTimer), 0); err != nil {
		return fmt.Errorf("set POSIX timer %d: %w", id, err)
	}
	return nil
}

// setITimer sets interval timer which (ITIMER_REAL, ITIMER_VIRTUAL or
// ITIMER_PROF).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) setITimer(which int, v snapshot.TimerValue) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var val [32]byte // struct itimerval: it_interval, it_value
	putTimeval(val[0:], v.Interval)
	putTimeval(val[16:], v.Value)
	if err := op.writeMem(addr+scratchTimer, val[:]); err != nil {
		return err
	}
	if _, err := op.syscall(op.threads[0], unix.SYS_SETITIMER, uintptr(which), uintptr(addr+scratchTimer), 0); err != nil {
		return fmt.Errorf("set interval timer %d: %w", which, err)
	}
	return nil
}

// findTimer returns the timer of timers with ID id.
func findTimer(timers []snapshot.PosixTimer, id int32) (snapshot.PosixTimer, bool) {
	for _, t := range timers {
		if t.ID == id {
			return t, true
		}
	}
	return snapshot.PosixTimer{}, false
}

// sameTimerSetup reports whether two timers have the same clock and
// notification, so that setting the state of one makes it the other.
func sameTimerSetup(a, b snapshot.PosixTimer) bool {
	a.State, b.State = snapshot.TimerValue{}, snapshot.TimerValue{}
	return a == b
}
