package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errOpClosed is returned by work sent to an op whose goroutine has ended.
var errOpClosed = errors.New("operation already closed")

// Op is one capture or restore of one process: from Begin, which freezes
// the process, to Close, which thaws it. All ptrace requests of an op run
// on one goroutine locked to its OS thread, because the kernel accepts them
// only from the thread that attached.
//
// An Op's methods may be called from any goroutine; they hand their work to
// the op's goroutine and wait for it, one at a time.
type Op struct {
	pid int
	log *slog.Logger

	work      chan func()
	quit      chan struct{}
	done      chan struct{} // closed when the op's goroutine has returned
	closeOnce sync.Once

	// The fields below are used only on the op's locked thread.

	threads     []*thread // main thread first
	frozen      bool      // some thread is seized and not yet detached
	freezeStart time.Time
	frozenFor   time.Duration
	syscallIP   uint64     // address of a `syscall` instruction in the target, 0 until found
	restorerIP  uint64     // rt_sigreturn code found with syscallIP, 0 when none
	scratchAddr uint64     // scratch page in the target, 0 until mapped
	mem         *os.File   // /proc/PID/mem, nil until first used
	clone       cowClone   // copy-on-write clone of CaptureCOW, until closed
	tracker     *Tracker   // set by Track, nil when writes are not tracked
	selfWrite   *selfWrite // set by FailSelfWrite
	// protectLate is set by a first tracked capture that write-protects
	// the memory after the thaw (see protectAfterThaw).
	protectLate bool
}

// Begin freezes process pid for one operation: it checks that the process
// may be operated on, starts the op's goroutine, and seizes and interrupts
// every thread, rescanning /proc/PID/task until a pass finds no new one.
//
// It does not wait for the threads to stop, so it may run inside the
// handler of a FUSE request sent by the target itself; Capture and
// Restore wait for the stops.
//
// Rejections come back as a *RejectError. The errno is EPERM for the
// daemon itself, a kernel thread or a process traced by another tracer.
// It is ESRCH for a zombie or a process that is gone, EINVAL for a tid
// that is not a thread group leader, and EOPNOTSUPP for a 32-bit process.
func Begin(pid int, log *slog.Logger) (*Op, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkTarget(pid); err != nil {
		return nil, err
	}

	op := &Op{
		pid:  pid,
		log:  log.With("pid", pid),
		work: make(chan func()),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	go op.loop()

	if err := op.do(op.freeze); err != nil {
		op.Close()
		return nil, fmt.Errorf("freeze pid %d: %w", pid, err)
	}
	return op, nil
}

// PID returns the process the op acts on.
func (op *Op) PID() int { return op.pid }

// Close thaws the process if it is still frozen and ends the op's
// goroutine. It is safe to call more than once.
func (op *Op) Close() {
	op.closeOnce.Do(func() {
		if err := op.closeClone(); err != nil {
			op.log.Warn("closing the copy-on-write clone failed", "err", err)
		}
		if err := op.do(func() error { op.thaw(); return nil }); err != nil {
			op.log.Warn("thaw on close failed", "err", err)
		}
		close(op.quit)
		<-op.done
	})
}

// loop runs the op's work on one OS thread for the op's whole life. It
// never unlocks the thread: if a tracee were somehow left attached, the
// OS thread ends with the goroutine and the kernel detaches the tracee.
func (op *Op) loop() {
	runtime.LockOSThread()
	defer close(op.done)

	for {
		select {
		case f := <-op.work:
			f()
		case <-op.quit:
			return
		}
	}
}

// do runs f on the op's locked OS thread and returns its error. A panic in
// f is recovered and returned as an error, and the process is thawed.
func (op *Op) do(f func() error) error {
	result := make(chan error, 1)
	job := func() { result <- op.guard(f) }

	select {
	case op.work <- job:
	case <-op.done:
		return fmt.Errorf("run work for pid %d: %w", op.pid, errOpClosed)
	}
	return <-result
}

// guard calls f and turns a panic into an error after thawing.
//
// Precondition: called on the op's locked thread.
func (op *Op) guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			op.log.Error("panic in operation", "panic", r, "stack", string(debug.Stack()))
			op.thaw()
			err = fmt.Errorf("operation on pid %d panicked: %v: %w", op.pid, r, unix.EFAULT)
		}
	}()
	return f()
}

// thread returns the seized thread tid, or nil.
//
// Precondition: called on the op's locked thread.
func (op *Op) thread(tid int) *thread {
	for _, th := range op.threads {
		if th.tid == tid {
			return th
		}
	}
	return nil
}
