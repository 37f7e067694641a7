package worker

import (
	"errors"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// envWorker is set in the environment of a worker process to the kind of
// work it does.
const (
	envWorker     = "CKPTFS_WORKER"
	workerRestore = "restore"
)

// workerArg0 is the whole command line of a worker process, and
// workerComm its command name (at most 15 bytes).
const (
	workerArg0 = "ckptfs-restore-worker"
	workerComm = "ckptfs-restore"
)

// The descriptors a worker gets from its parent, in the order of
// exec.Cmd.ExtraFiles: a stream socket for requests and their events, and
// a pipe for log records.
const (
	fdConn = 3
	fdLog  = 4
)

// request is one restore a worker runs, sent as one JSON line. When it
// lends the tracker, the line's first byte carries the userfaultfd as
// SCM_RIGHTS.
type request struct {
	ID        uint64               `json:"id"`
	HasUffd   bool                 `json:"has_uffd,omitempty"`
	Process   snapshot.ProcessID   `json:"process"`
	Store     string               `json:"store"`
	Snapshot  string               `json:"snapshot"`
	Captured  time.Time            `json:"captured"`
	Parts     []string             `json:"parts"`
	SelfWrite *SelfWrite           `json:"self_write,omitempty"`
	LogLevel  slog.Level           `json:"log_level"`
	Tracking  *engine.TrackerState `json:"tracking,omitempty"`
}

// event is one line the worker sends back about request ID, with one
// other field set. Per request, serve sends Seized at most once, any
// number of Read, and Result last.
type event struct {
	ID     uint64  `json:"id"`
	Seized bool    `json:"seized,omitempty"`
	Read   int64   `json:"read,omitempty"` // bytes of saved memory read so far
	Result *result `json:"result,omitempty"`
}

// result is the outcome of a restore.
type result struct {
	Report   *engine.RestoreReport `json:"report,omitempty"`
	Error    *wireError            `json:"error,omitempty"`
	Tracking *engine.TrackerState  `json:"tracking,omitempty"`
}

// wireError is an error as it crosses the pipe: its text, the errnos it
// wraps, and the two kinds of error callers test for.
type wireError struct {
	Message string       `json:"message"`
	Errnos  []unix.Errno `json:"errnos,omitempty"`
	Reject  bool         `json:"reject,omitempty"` // an *engine.RejectError: Errnos[0] is its errno
	Corrupt bool         `json:"corrupt,omitempty"`
}

// encodeError returns err as it crosses the pipe, with every errno of its
// tree in the order errors.Is would find them.
func encodeError(err error) *wireError {
	w := &wireError{Message: err.Error(), Corrupt: errors.Is(err, snapshot.ErrCorrupt)}
	var reject *engine.RejectError
	if errors.As(err, &reject) {
		w.Reject = true
		w.Errnos = append(w.Errnos, reject.Errno)
	}
	walkErrnos(err, func(errno unix.Errno) { w.Errnos = append(w.Errnos, errno) })
	return w
}

// walkErrnos calls f for each unix.Errno in the tree of err, depth first.
func walkErrnos(err error, f func(unix.Errno)) {
	if errno, ok := err.(unix.Errno); ok {
		f(errno)
		return
	}
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			walkErrnos(inner, f)
		}
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			walkErrnos(inner, f)
		}
	}
}

// decode returns the error a worker reported: an *engine.RejectError for
// a rejection, else an error with the worker's text that errors.Is
// matches against the same errnos and against snapshot.ErrCorrupt.
func (w *wireError) decode() error {
	if w.Reject && len(w.Errnos) > 0 {
		return &engine.RejectError{Errno: w.Errnos[0], Reason: w.Message}
	}
	e := &remoteError{message: w.Message}
	for _, errno := range w.Errnos {
		e.wrapped = append(e.wrapped, errno)
	}
	if w.Corrupt {
		e.wrapped = append(e.wrapped, snapshot.ErrCorrupt)
	}
	return e
}

// remoteError is an error a worker reported.
type remoteError struct {
	message string
	wrapped []error
}

func (e *remoteError) Error() string { return e.message }

// Unwrap returns the errnos of the worker's error, so errors.Is matches
// them.
func (e *remoteError) Unwrap() []error { return e.wrapped }
