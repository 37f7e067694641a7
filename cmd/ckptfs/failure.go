package main

import (
	"errors"
	"fmt"
	"strings"

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
	pid      int    // 0 for a list of every process
	snapshot string // empty for a capture with an automatic name
	store    string
}

// String returns the context of an error that does not name the process
// and the snapshot itself, such as `capture pid 42 as snapshot "before"`.
func (t target) String() string {
	switch {
	case t.op == "list" && t.pid == 0:
		return "list snapshots"
	case t.op == "list":
		return fmt.Sprintf("list snapshots of pid %d", t.pid)
	case t.op == "rm":
		return fmt.Sprintf("remove snapshot %q of pid %d", t.snapshot, t.pid)
	case t.snapshot == "":
		return fmt.Sprintf("%s pid %d", t.op, t.pid)
	case t.op == "restore":
		return fmt.Sprintf("restore pid %d to snapshot %q", t.pid, t.snapshot)
	default:
		return fmt.Sprintf("%s pid %d as snapshot %q", t.op, t.pid, t.snapshot)
	}
}

// fail turns err, returned while doing t by the engine or the store, into a
// failure with a hint that follows from the errno. Those errors name the
// process already, so fail adds no context; see wrap for errors that lack it.
func (t target) fail(err error) *failure {
	return &failure{err: err, hint: t.hint(err)}
}

// wrap is fail for an error that does not name the process: it prefixes
// the error with t.
func (t target) wrap(err error) *failure {
	return t.fail(fmt.Errorf("%s: %w", t, err))
}

// hint returns the advice printed under the error message of a failed t.
func (t target) hint(err error) string {
	switch {
	case t.pid == 0:
		return "run it again with --log-level debug to see each step"
	case errors.Is(err, unix.ESRCH):
		return fmt.Sprintf("process %d is gone; check the PID with 'ps -p %d'", t.pid, t.pid)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Sprintf("run as root or as the owner of process %d, and detach any debugger "+
			"(such as gdb or strace) from it first", t.pid)
	case errors.Is(err, unix.EEXIST):
		return fmt.Sprintf("choose another name, or remove the old snapshot with 'ckptfs rm %d %s'",
			t.pid, t.snapshot)
	case errors.Is(err, unix.ENOENT):
		return fmt.Sprintf("see the names of the snapshots of process %d with 'ckptfs list %d'", t.pid, t.pid)
	case errors.Is(err, unix.EBUSY):
		return fmt.Sprintf("another capture or restore of process %d is running; wait until it ends, "+
			"then run this command again", t.pid)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Sprintf("free space on the file system of %s, or remove old snapshots with 'ckptfs rm'", t.store)
	case errors.Is(err, unix.EINVAL):
		return fmt.Sprintf("check the arguments against 'ckptfs %s --help'", t.op)
	case errors.Is(err, unix.EOPNOTSUPP):
		// The message names the state; restore has its own hint (refusalHint).
		return ""
	default:
		return "run it again with --log-level debug to see each step"
	}
}

// storeHint returns the advice printed under an error of opening the store
// named by --store, for a program running with effective uid euid.
func storeHint(store string, err error, euid int) string {
	remote := strings.HasPrefix(store, "s3://")
	switch {
	case remote && errors.Is(err, unix.ENOENT):
		return "the bucket was not found: create it, or fix the bucket name in --store s3://BUCKET/PREFIX " +
			"or the endpoint in CKPTFS_S3_ENDPOINT or AWS_ENDPOINT_URL"
	case remote && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)):
		return "check the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the bucket's permissions"
	case store == defaultStoreDir && euid != 0 && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)):
		return fmt.Sprintf("the default store %s belongs to root; run as root, or pass --store DIR "+
			"(or set CKPTFS_STORE) with a directory of your own", defaultStoreDir)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "pass --store DIR (or set CKPTFS_STORE) with a directory of your own, which no other user can access"
	case errors.Is(err, unix.ENOTDIR):
		return "pass --store DIR with a directory, or a path where one can be created"
	case errors.Is(err, unix.ENOSPC):
		return fmt.Sprintf("free space on the file system of %s", store)
	default:
		return "check --store, then run it again with --log-level debug to see each step"
	}
}
