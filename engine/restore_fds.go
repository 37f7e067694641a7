package engine

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// applyFDs carries out the descriptor steps of the plan. Closing the
// descriptors opened since the snapshot waits for the commit, because a
// closed pipe or socket cannot be opened again if a later step fails.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyFDs() error {
	spareMin := 0
	for _, st := range r.fds {
		spareMin = max(spareMin, st.num+1)
	}

	for _, st := range r.fds {
		if st.close {
			num := st.num
			r.commits = append(r.commits, func() { r.op.closeInTarget(num) })
			continue
		}
		if err := r.applyFD(st, spareMin); err != nil {
			return fmt.Errorf("restore fd %d: %w", st.num, err)
		}
	}
	return nil
}

// applyFD carries out one descriptor step and records how to undo it.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyFD(st fdStep, spareMin int) error {
	op, num := r.op, st.num
	if st.reopen {
		if err := r.reopenFD(st, spareMin); err != nil {
			return err
		}
	}

	if st.setFlags {
		if err := op.fcntl(num, unix.F_SETFL, int(st.saved.Flags)&fdStatusFlags); err != nil {
			return err
		}
		old := int(st.cur.Flags) & fdStatusFlags
		r.undo(func() error { return op.fcntl(num, unix.F_SETFL, old) })
	}
	if st.setFD {
		if err := op.fcntl(num, unix.F_SETFD, fdCloexec(st.saved.Flags)); err != nil {
			return err
		}
		old := fdCloexec(st.cur.Flags)
		r.undo(func() error { return op.fcntl(num, unix.F_SETFD, old) })
	}

	if st.seek {
		err := op.lseek(num, st.saved.Pos)
		switch {
		case errors.Is(err, unix.ESPIPE):
			// The description was opened non-seekable (a FUSE file
			// opened with FOPEN_NONSEEKABLE, for example): it has no
			// offset that lseek can set, so there is nothing to restore.
		case err != nil:
			return err
		default:
			r.addWarning(st.warning)
			if !st.reopen {
				old := st.cur.Pos
				r.undo(func() error { return op.lseek(num, old) })
			}
		}
	}
	return nil
}

// addWarning adds w, unless empty, to the report's warnings.
func (r *restorer) addWarning(w string) {
	if w != "" {
		r.report.Warnings = append(r.report.Warnings, w)
	}
}

// reopenFD opens the saved target again and puts it at the saved number.
// A descriptor that holds the number now is first duplicated to a spare
// number at or above spareMin, so that undo can put it back. The commit
// closes the spare.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) reopenFD(st fdStep, spareMin int) error {
	op, num := r.op, st.num
	if st.cur != nil {
		spare, err := op.syscall(op.threads[0], unix.SYS_FCNTL, uintptr(num), unix.F_DUPFD_CLOEXEC, uintptr(spareMin))
		if err != nil {
			return fmt.Errorf("keep fd %d for undo: %w", num, err)
		}
		cloexec := st.cur.Flags & unix.O_CLOEXEC
		r.undo(func() error {
			err := op.dup3(int(spare), num, cloexec)
			op.closeInTarget(int(spare))
			return err
		})
		r.commits = append(r.commits, func() { op.closeInTarget(int(spare)) })
	} else {
		r.undo(func() error { op.closeInTarget(num); return nil })
	}

	saved := st.saved
	tmp, err := op.openChecked(saved.Target, reopenFlags(saved), saved.Dev, saved.Ino)
	if err != nil {
		return err
	}
	if tmp == num {
		return op.fcntl(num, unix.F_SETFD, fdCloexec(saved.Flags))
	}
	err = op.dup3(tmp, num, saved.Flags&unix.O_CLOEXEC)
	op.closeInTarget(tmp)
	return err
}

// fdCloexec returns the F_SETFD argument for open flags.
func fdCloexec(flags uint32) int {
	if flags&unix.O_CLOEXEC != 0 {
		return unix.FD_CLOEXEC
	}
	return 0
}

// fcntl runs fcntl(fd, cmd, arg) inside the target.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) fcntl(fd, cmd, arg int) error {
	if _, err := op.syscall(op.threads[0], unix.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg)); err != nil {
		return fmt.Errorf("fcntl(%d, %d, %#x) in pid %d: %w", fd, cmd, arg, op.pid, err)
	}
	return nil
}

// lseek sets the offset of fd inside the target.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) lseek(fd int, pos int64) error {
	if _, err := op.syscall(op.threads[0], unix.SYS_LSEEK, uintptr(fd), uintptr(pos), unix.SEEK_SET); err != nil {
		return fmt.Errorf("seek fd %d of pid %d to %d: %w", fd, op.pid, pos, err)
	}
	return nil
}

// dup3 duplicates oldfd onto newfd inside the target; flags is 0 or
// O_CLOEXEC.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) dup3(oldfd, newfd int, flags uint32) error {
	if _, err := op.syscall(op.threads[0], unix.SYS_DUP3, uintptr(oldfd), uintptr(newfd), uintptr(flags)); err != nil {
		return fmt.Errorf("dup3(%d, %d) in pid %d: %w", oldfd, newfd, op.pid, err)
	}
	return nil
}
