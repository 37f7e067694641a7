package engine

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// maxSeizePasses bounds the rescans of /proc/PID/task for a process that
// keeps creating threads faster than they can be seized.
const maxSeizePasses = 100

// errExec aborts an operation whose target called execve while frozen.
var errExec = errors.New("process called execve during the operation")

// freeze seizes and interrupts every thread of the process, rescanning
// /proc/PID/task until a pass finds no thread that is not seized yet. It
// does not wait for the stops.
//
// NOTE: a thread blocked in a system call that the kernel never restarts
// (epoll_wait, sigtimedwait, io_getevents, and the others signal(7) lists
// for stop signals) returns EINTR when interrupted. Capture and detach
// send a wait without a timeout back into the call (rearmWait); one with
// a timeout shows each freeze as an EINTR.
//
// Precondition: called on the op's locked thread.
func (op *Op) freeze() error {
	op.freezeStart = time.Now()
	op.frozen = true

	for pass := 0; pass < maxSeizePasses; pass++ {
		tids, err := listTasks(op.pid)
		if err != nil {
			return err
		}
		added, err := op.seizeNew(tids)
		if err != nil {
			return err
		}
		if added == 0 {
			return op.checkMainSeized()
		}
	}
	return fmt.Errorf("seize threads of pid %d: still new threads after %d passes: %w", op.pid, maxSeizePasses, unix.EAGAIN)
}

// seizeNew seizes and interrupts each tid not seized yet and returns how
// many it added. Threads that are gone are skipped.
//
// Precondition: called on the op's locked thread.
func (op *Op) seizeNew(tids []int) (int, error) {
	added := 0
	for _, tid := range tids {
		if op.thread(tid) != nil {
			continue
		}

		err := ptraceSeize(tid)
		if errors.Is(err, unix.EPERM) {
			// The kernel returns EPERM both for a thread that a seized
			// thread's clone attached to us already and for one that is
			// exiting.
			switch st, serr := readStatusFile(fmt.Sprintf("/proc/%d/task/%d/status", op.pid, tid)); {
			case serr != nil || st.State == 'Z' || st.State == 'X':
				err = unix.ESRCH
			case st.TracerPid == unix.Gettid():
				err = nil
			}
		}
		switch {
		case errors.Is(err, unix.ESRCH):
			continue
		case err != nil:
			return added, fmt.Errorf("seize tid %d: %w", tid, err)
		}

		if err := ptraceInterrupt(tid); err != nil && !errors.Is(err, unix.ESRCH) {
			return added, fmt.Errorf("interrupt tid %d: %w", tid, err)
		}
		op.addThread(tid)
		added++
	}
	return added, nil
}

// addThread records a seized thread, keeping the main thread first.
//
// Precondition: called on the op's locked thread.
func (op *Op) addThread(tid int) *thread {
	th := &thread{tid: tid}
	if tid == op.pid {
		op.threads = slices.Insert(op.threads, 0, th)
	} else {
		op.threads = append(op.threads, th)
	}
	return th
}

// checkMainSeized fails with ESRCH when the main thread could not be
// seized, which means the process is gone.
//
// Precondition: called on the op's locked thread.
func (op *Op) checkMainSeized() error {
	if len(op.threads) == 0 || op.threads[0].tid != op.pid {
		return fmt.Errorf("seize main thread of pid %d: %w", op.pid, unix.ESRCH)
	}
	return nil
}

// listTasks returns the thread ids in /proc/PID/task, ascending.
func listTasks(pid int) ([]int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("list threads of pid %d: %w", pid, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}

	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	slices.Sort(tids)
	return tids, nil
}
