package engine

import "golang.org/x/sys/unix"

// RejectError is an operation refused before anything changed, with the
// reason a user needs to see. Errno carries the errno the contract assigns
// to the refusal (EPERM, ESRCH, EOPNOTSUPP, ...), so errors.Is(err,
// unix.EPERM) matches it.
type RejectError struct {
	Errno  unix.Errno
	Reason string
}

func (e *RejectError) Error() string { return e.Reason }

// Unwrap returns the errno, so errors.Is matches it.
func (e *RejectError) Unwrap() error { return e.Errno }

func reject(errno unix.Errno, reason string) *RejectError {
	return &RejectError{Errno: errno, Reason: reason}
}
