package main

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// failure is an error of an operation that started after its arguments were
// valid. It makes the command exit 1, and hint is the next step for the user.
type failure struct {
	err  error
	hint string
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// target names the process and the snapshot an operation acts on, for error
// messages and hints.
type target struct {
	op       string // "capture", "restore", "rm" or "list"
	pid      int
	snapshot string // empty for a capture with an automatic name
	store    string
}

// String returns the subject of an error message, such as
// `capture of pid 42 as snapshot "before"`.
func (t target) String() string {
	switch {
	case t.pid == 0:
		return t.op
	case t.snapshot == "":
		return fmt.Sprintf("%s of pid %d", t.op, t.pid)
	case t.op == "restore":
		return fmt.Sprintf("restore of pid %d to snapshot %q", t.pid, t.snapshot)
	case t.op == "rm":
		return fmt.Sprintf("removal of snapshot %q of pid %d", t.snapshot, t.pid)
	default:
		return fmt.Sprintf("%s of pid %d as snapshot %q", t.op, t.pid, t.snapshot)
	}
}

// fail wraps err, returned while doing t, into a failure whose message names
// the process and the snapshot and whose hint follows from the errno.
func (t target) fail(err error) *failure {
	return &failure{
		err:  fmt.Errorf("%s failed: %w", t, err),
		hint: t.hint(err),
	}
}

// hint returns the advice printed under the error message of a failed t.
func (t target) hint(err error) string {
	switch {
	case errors.Is(err, unix.ESRCH):
		return fmt.Sprintf("process %d is gone; check the PID with 'ps -p %d'", t.pid, t.pid)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Sprintf("run as root or as the owner of process %d, and detach any debugger "+
			"(such as gdb or strace) from it first", t.pid)
	case errors.Is(err, unix.EEXIST):
		return fmt.Sprintf("choose another name, or remove the old snapshot with 'ckptfs rm %d %s'",
			t.pid, t.snapshot)
	case errors.Is(err, unix.ENOENT):
		return fmt.Sprintf("list the snapshots of process %d with 'ckptfs list %d'", t.pid, t.pid)
	case errors.Is(err, unix.EBUSY):
		return fmt.Sprintf("another capture or restore of process %d is running; retry when it ends", t.pid)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Sprintf("free space on the file system of %s, or remove old snapshots with 'ckptfs rm'", t.store)
	case errors.Is(err, unix.EINVAL):
		return fmt.Sprintf("check the arguments against 'ckptfs %s --help'", t.op)
	case errors.Is(err, unix.EOPNOTSUPP):
		return "this snapshot cannot be fully restored onto the process as it is now; " +
			"capture it again, or restore only some parts (see 'ckptfs restore --help')"
	default:
		return "run it again with --log-level debug to see each step"
	}
}
