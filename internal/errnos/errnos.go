// Package errnos maps the errors of ckptfs operations to the errnos that
// the interface contract assigns to them: the errno a write to a control
// file returns, and the one a self-restore that failed makes the writer's
// write return.
package errnos

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// contractErrnos are the errnos a control-file write may return, in the
// order Of looks for them. ESRCH comes first because an operation on a
// process that exited often fails on a missing /proc file (ENOENT) too.
var contractErrnos = []syscall.Errno{
	unix.ESRCH,
	unix.EBUSY,
	unix.EPERM,
	unix.EACCES,
	unix.EEXIST,
	unix.ENOENT,
	unix.EINVAL,
	unix.ENOSPC,
	unix.EOPNOTSUPP,
}

// Of returns the errno that a request failing with err returns to the
// caller. This is the one place where errors become errnos:
//   - a *engine.RejectError returns its own Errno;
//   - an error wrapping one of the errnos of the contract returns it;
//   - a full quota counts as a full store (ENOSPC);
//   - a corrupt snapshot, and anything else, returns EIO.
func Of(err error) syscall.Errno {
	if err == nil {
		return 0
	}

	var reject *engine.RejectError
	if errors.As(err, &reject) {
		return reject.Errno
	}
	if errors.Is(err, snapshot.ErrCorrupt) {
		return unix.EIO
	}
	for _, errno := range contractErrnos {
		if errors.Is(err, errno) {
			return errno
		}
	}
	if errors.Is(err, unix.EDQUOT) {
		return unix.ENOSPC
	}
	return unix.EIO
}

// Name returns the symbolic name of errno as the contract spells it.
// unix.ErrnoName returns ENOTSUP for EOPNOTSUPP, which has the same value
// on Linux.
func Name(errno syscall.Errno) string {
	if errno == unix.EOPNOTSUPP {
		return "EOPNOTSUPP"
	}
	return unix.ErrnoName(errno)
}
