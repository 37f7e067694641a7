package engine

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The request numbers below exist in x/sys/unix v0.50.0; the size of the
// rseq configuration is the kernel's struct ptrace_rseq_configuration.
const rseqConfigSize = 24

// ptracePtr issues a ptrace request whose data argument points into Go
// memory, retrying EINTR.
//
// Precondition: called on the op's locked thread.
func ptracePtr(req int, tid int, addr uintptr, data unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, uintptr(data), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return r, nil
	}
}

// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceGetRegs(tid int, regs *unix.PtraceRegs) error {
	_, err := ptracePtr(unix.PTRACE_GETREGS, tid, 0, unsafe.Pointer(regs))
	return err
}

// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceSetRegs(tid int, regs *unix.PtraceRegs) error {
	_, err := ptracePtr(unix.PTRACE_SETREGS, tid, 0, unsafe.Pointer(regs))
	return err
}

// ptraceGetRegset reads register set note into buf and returns the length
// the kernel filled in.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceGetRegset(tid int, note uintptr, buf []byte) (int, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if _, err := ptracePtr(unix.PTRACE_GETREGSET, tid, note, unsafe.Pointer(&iov)); err != nil {
		return 0, err
	}
	return int(iov.Len), nil
}

// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceSetRegset(tid int, note uintptr, buf []byte) error {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	_, err := ptracePtr(unix.PTRACE_SETREGSET, tid, note, unsafe.Pointer(&iov))
	return err
}

// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceGetSigmask(tid int) (uint64, error) {
	var mask uint64
	_, err := ptracePtr(unix.PTRACE_GETSIGMASK, tid, unsafe.Sizeof(mask), unsafe.Pointer(&mask))
	return mask, err
}

// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceSetSigmask(tid int, mask uint64) error {
	_, err := ptracePtr(unix.PTRACE_SETSIGMASK, tid, unsafe.Sizeof(mask), unsafe.Pointer(&mask))
	return err
}

// ptraceGetRseq returns the raw struct ptrace_rseq_configuration: the rseq
// area address (u64), its size (u32), the signature (u32) and flags.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptraceGetRseq(tid int) ([rseqConfigSize]byte, error) {
	var buf [rseqConfigSize]byte
	_, err := ptracePtr(unix.PTRACE_GET_RSEQ_CONFIGURATION, tid, rseqConfigSize, unsafe.Pointer(&buf[0]))
	return buf, err
}

// ptraceGetEventMsg returns the message of the last ptrace event, such as
// the new thread's tid of PTRACE_EVENT_CLONE.
//
// Precondition: called on the op's locked thread; tid is in an event stop.
func ptraceGetEventMsg(tid int) (uint64, error) {
	var msg uint64
	_, err := ptracePtr(unix.PTRACE_GETEVENTMSG, tid, 0, unsafe.Pointer(&msg))
	return msg, err
}

// ptracePeekSiginfo copies up to len(buf)/siginfoSize queued siginfo
// structures of tid, starting at entry off of its private queue, or of the
// queue of its process with PTRACE_PEEKSIGINFO_SHARED in flags, and returns
// how many it copied.
//
// Precondition: called on the op's locked thread; tid is in a ptrace stop.
func ptracePeekSiginfo(tid int, off uint64, flags uint32, buf []byte) (int, error) {
	args := struct {
		off   uint64
		flags uint32
		nr    int32
	}{off, flags, int32(len(buf) / siginfoSize)}
	for {
		// Both pointers are converted in the call itself, so that they
		// stay valid for the system call.
		n, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(tid),
			uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}
