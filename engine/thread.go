package engine

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// thread is one seized thread of the target.
//
// Its fields are read and written only on the op's locked thread.
type thread struct {
	tid int

	// stopped is set once a ptrace stop of the thread has been waited for.
	// Until then the thread may still run towards the stop Begin requested.
	stopped bool

	// exited is set when the thread ended during the operation.
	exited bool

	// jobStop records that the thread was in a job-control (group) stop
	// when it was first seen stopped.
	jobStop bool

	// signals were taken out of signal-delivery stops during an injected
	// system call and are delivered again at detach.
	signals []unix.Signal
}

// xstateBufSize is the first buffer size tried for NT_X86_XSTATE. CPUs
// with AMX need 11008 bytes; getXstate doubles the buffer when the kernel
// fills it completely.
const xstateBufSize = 16 << 10

// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) getRegs() (unix.PtraceRegs, error) {
	var regs unix.PtraceRegs
	if err := ptraceGetRegs(th.tid, &regs); err != nil {
		return regs, fmt.Errorf("read registers of tid %d: %w", th.tid, err)
	}
	return regs, nil
}

// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) setRegs(r *unix.PtraceRegs) error {
	if err := ptraceSetRegs(th.tid, r); err != nil {
		return fmt.Errorf("write registers of tid %d: %w", th.tid, err)
	}
	return nil
}

// getXstate returns the NT_X86_XSTATE register set (XSAVE layout) at
// exactly the length the kernel returned.
//
// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) getXstate() ([]byte, error) {
	for size := xstateBufSize; size <= 1<<20; size *= 2 {
		buf := make([]byte, size)
		n, err := ptraceGetRegset(th.tid, unix.NT_X86_XSTATE, buf)
		if err != nil {
			return nil, fmt.Errorf("read xstate of tid %d: %w", th.tid, err)
		}
		if n < size {
			return buf[:n:n], nil
		}
	}
	return nil, fmt.Errorf("read xstate of tid %d: larger than 1 MiB: %w", th.tid, unix.EOVERFLOW)
}

// setXstate writes an NT_X86_XSTATE register set as getXstate returned it.
//
// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) setXstate(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("write xstate of tid %d: empty buffer: %w", th.tid, unix.EINVAL)
	}
	if err := ptraceSetRegset(th.tid, unix.NT_X86_XSTATE, b); err != nil {
		return fmt.Errorf("write xstate of tid %d: %w", th.tid, err)
	}
	return nil
}

// getSigmask returns the thread's real blocked mask: while ppoll, pselect
// or sigsuspend run with a temporary mask, the kernel returns the mask
// saved for their return.
//
// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) getSigmask() (uint64, error) {
	mask, err := ptraceGetSigmask(th.tid)
	if err != nil {
		return 0, fmt.Errorf("read signal mask of tid %d: %w", th.tid, err)
	}
	return mask, nil
}

// setSigmask sets the blocked mask. The kernel ignores SIGKILL and SIGSTOP
// in it and drops a temporary mask that ppoll and friends would restore.
//
// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) setSigmask(m uint64) error {
	if err := ptraceSetSigmask(th.tid, m); err != nil {
		return fmt.Errorf("write signal mask of tid %d: %w", th.tid, err)
	}
	return nil
}

// getRseq returns the thread's rseq registration; a zero Addr means none.
//
// Precondition: called on the op's locked thread; th is stopped.
func (th *thread) getRseq() (snapshot.Rseq, error) {
	raw, err := ptraceGetRseq(th.tid)
	if err != nil {
		return snapshot.Rseq{}, fmt.Errorf("read rseq configuration of tid %d: %w", th.tid, err)
	}
	return snapshot.Rseq{
		Addr:      binary.LittleEndian.Uint64(raw[0:8]),
		Size:      binary.LittleEndian.Uint32(raw[8:12]),
		Signature: binary.LittleEndian.Uint32(raw[12:16]),
	}, nil
}
