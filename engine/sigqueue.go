package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// peekBatch is how many siginfo structures one PTRACE_PEEKSIGINFO copies.
const peekBatch = 32

// Values of sigev_notify (asm-generic/siginfo.h).
const (
	sigevSignal   = 0 // the timer signals the process
	sigevNone     = 1 // the timer signals nothing
	sigevThread   = 2 // glibc runs a function (the kernel gets SIGEV_THREAD_ID)
	sigevThreadID = 4 // the timer signals one thread
)

// captureQueues reads the pending signals, the interval timers and the
// POSIX timers.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) captureQueues(img *snapshot.Image) error {
	q, err := op.readQueues()
	if err != nil {
		return err
	}
	img.Signals.QueuesSaved = true
	img.Signals.Pending, img.Signals.ITimers, img.Signals.Timers = q.pending, q.itimers, q.timers
	return nil
}

// queueState is the pending signals and timers of a process: what capture
// saves, and what a restore overwrites, read before any change so that a
// failed restore can put it back.
type queueState struct {
	pending []snapshot.PendingSignal
	itimers [3]snapshot.TimerValue
	timers  []snapshot.PosixTimer
}

// readQueues reads the pending signals and the timers.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readQueues() (queueState, error) {
	var q queueState
	var err error
	if q.pending, err = op.readPending(); err != nil {
		return q, err
	}
	if q.itimers, err = op.readITimers(); err != nil {
		return q, err
	}
	q.timers, err = op.readPosixTimers()
	return q, err
}

// readPending returns the queued signals of every thread, then those of
// the process, each queue in delivery order.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readPending() ([]snapshot.PendingSignal, error) {
	var out []snapshot.PendingSignal
	for _, th := range op.threads {
		queue, err := peekQueue(th.tid, 0)
		if err != nil {
			return nil, fmt.Errorf("read pending signals of tid %d: %w", th.tid, err)
		}
		for _, info := range queue {
			out = append(out, snapshot.PendingSignal{TID: th.tid, Info: info})
		}
	}
	shared, err := peekQueue(op.threads[0].tid, unix.PTRACE_PEEKSIGINFO_SHARED)
	if err != nil {
		return nil, fmt.Errorf("read pending signals of pid %d: %w", op.pid, err)
	}
	for _, info := range shared {
		out = append(out, snapshot.PendingSignal{Info: info})
	}
	return out, nil
}

// peekQueue returns the siginfo structures of one signal queue of tid.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func peekQueue(tid int, flags uint32) ([][]byte, error) {
	var out [][]byte
	buf := make([]byte, peekBatch*siginfoSize)
	for {
		n, err := ptracePeekSiginfo(tid, uint64(len(out)), flags, buf)
		if err != nil {
			return nil, err
		}
		for i := range n {
			out = append(out, bytes.Clone(buf[i*siginfoSize:(i+1)*siginfoSize]))
		}
		if n < peekBatch {
			return out, nil
		}
	}
}

// readITimers reads ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF with
// injected getitimer calls.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readITimers() ([3]snapshot.TimerValue, error) {
	var out [3]snapshot.TimerValue
	addr, err := op.scratch()
	if err != nil {
		return out, err
	}
	var buf [32]byte // struct itimerval: it_interval, it_value (timeval each)
	for which := range out {
		if _, err := op.syscall(op.threads[0], unix.SYS_GETITIMER, uintptr(which), uintptr(addr+scratchTimer)); err != nil {
			return out, fmt.Errorf("read interval timer %d of pid %d: %w", which, op.pid, err)
		}
		if err := op.readMem(addr+scratchTimer, buf[:]); err != nil {
			return out, err
		}
		out[which] = snapshot.TimerValue{Interval: timevalAt(buf[0:]), Value: timevalAt(buf[16:])}
	}
	return out, nil
}

// readPosixTimers lists the POSIX timers of /proc/PID/timers and reads the
// state of each with an injected timer_gettime.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readPosixTimers() ([]snapshot.PosixTimer, error) {
	raw, err := readProcFile(op.pid, "timers")
	if errors.Is(err, os.ErrNotExist) {
		// NOTE: a kernel without CONFIG_CHECKPOINT_RESTORE has no
		// /proc/PID/timers, and its POSIX timers are then not saved.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	timers, err := parseTimers(raw)
	if err != nil {
		return nil, fmt.Errorf("parse /proc/%d/timers: %w", op.pid, err)
	}
	if len(timers) == 0 {
		return nil, nil
	}

	addr, err := op.scratch()
	if err != nil {
		return nil, err
	}
	var buf [32]byte // struct itimerspec: it_interval, it_value (timespec each)
	for i := range timers {
		t := &timers[i]
		if _, err := op.syscall(op.threads[0], unix.SYS_TIMER_GETTIME, uintptr(t.ID), uintptr(addr+scratchTimer)); err != nil {
			return nil, fmt.Errorf("read POSIX timer %d of pid %d: %w", t.ID, op.pid, err)
		}
		if err := op.readMem(addr+scratchTimer, buf[:]); err != nil {
			return nil, err
		}
		t.State = snapshot.TimerValue{Interval: timespecAt(buf[0:]), Value: timespecAt(buf[16:])}
	}
	return timers, nil
}

// parseTimers parses /proc/PID/timers, whose records read
//
//	ID: 3
//	signal: 10/0000000000001234
//	notify: signal/tid.4321
//	ClockID: 1
//
// with the signal number and sigev_value, then the notification (signal,
// none or thread) and whether it goes to the process (pid) or one thread
// (tid, SIGEV_THREAD_ID).
func parseTimers(raw []byte) ([]snapshot.PosixTimer, error) {
	var (
		out []snapshot.PosixTimer
		cur *snapshot.PosixTimer
	)
	lines := bufio.NewScanner(bytes.NewReader(raw))
	for lines.Scan() {
		key, value, ok := strings.Cut(lines.Text(), ": ")
		if !ok {
			return nil, fmt.Errorf("line %q is not KEY: VALUE", lines.Text())
		}
		if key == "ID" {
			id, err := strconv.ParseInt(value, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("timer ID %q: %w", value, err)
			}
			out = append(out, snapshot.PosixTimer{ID: int32(id)})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("line %q before the first ID", lines.Text())
		}
		if err := parseTimerField(cur, key, value); err != nil {
			return nil, fmt.Errorf("timer %d: %w", cur.ID, err)
		}
	}
	return out, lines.Err()
}

// parseTimerField sets the field of t that one line of /proc/PID/timers
// gives.
func parseTimerField(t *snapshot.PosixTimer, key, value string) error {
	switch key {
	case "signal":
		sig, sival, ok := strings.Cut(value, "/")
		signo, err := strconv.ParseInt(sig, 10, 32)
		if !ok || err != nil {
			return fmt.Errorf("signal %q is not SIGNO/VALUE", value)
		}
		if t.SigValue, err = strconv.ParseUint(sival, 16, 64); err != nil {
			return fmt.Errorf("signal value %q: %w", sival, err)
		}
		t.Signal = int32(signo)
	case "notify":
		kind, target, ok := strings.Cut(value, "/")
		recipient, id, ok2 := strings.Cut(target, ".")
		n, err := strconv.Atoi(id)
		if !ok || !ok2 || err != nil {
			return fmt.Errorf("notify %q is not HOW/pid.N or HOW/tid.N", value)
		}
		switch kind {
		case "signal":
			t.Notify = sigevSignal
		case "none":
			t.Notify = sigevNone
		case "thread":
			t.Notify = sigevThread
		default:
			return fmt.Errorf("unknown notification %q", kind)
		}
		if recipient == "tid" {
			t.Notify |= sigevThreadID
			t.TID = n
		}
	case "ClockID":
		clock, err := strconv.ParseInt(value, 10, 32)
		if err != nil {
			return fmt.Errorf("clock %q: %w", value, err)
		}
		t.Clock = int32(clock)
	}
	return nil
}

// timevalAt decodes a struct timeval.
func timevalAt(b []byte) time.Duration {
	sec, usec := int64(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))
	return time.Duration(sec)*time.Second + time.Duration(usec)*time.Microsecond
}

// timespecAt decodes a struct timespec.
func timespecAt(b []byte) time.Duration {
	sec, nsec := int64(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))
	return time.Duration(sec)*time.Second + time.Duration(nsec)
}

// putTimeval encodes d as a struct timeval.
func putTimeval(b []byte, d time.Duration) {
	binary.LittleEndian.PutUint64(b, uint64(d/time.Second))
	binary.LittleEndian.PutUint64(b[8:], uint64(d%time.Second/time.Microsecond))
}

// putTimespec encodes d as a struct timespec.
func putTimespec(b []byte, d time.Duration) {
	binary.LittleEndian.PutUint64(b, uint64(d/time.Second))
	binary.LittleEndian.PutUint64(b[8:], uint64(d%time.Second))
}

// threadByTID returns the op's thread tid, or nil.
func (op *Op) threadByTID(tid int) *thread {
	for _, th := range op.threads {
		if th.tid == tid {
			return th
		}
	}
	return nil
}
