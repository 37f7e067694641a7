package engine

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// Layout of the x86-64 signal frame that rt_sigreturn reads: struct
// rt_sigframe (the return address slot pretcode, struct ucontext, struct
// siginfo) with the XSAVE area its sigcontext points to. Offsets are those
// of the kernel's uapi headers asm/sigcontext.h, asm/ucontext.h and
// asm-generic/ucontext.h.
const (
	redZone      = 128 // bytes below rsp that leaf functions use without moving rsp
	sigframeSize = 440 // pretcode (8) + struct ucontext (304) + struct siginfo (128)

	ucFlagsOff   = 8       // uc_flags
	ucStackOff   = 8 + 16  // uc_stack: ss_sp, ss_flags (int), ss_size
	mcontextOff  = 8 + 40  // uc_mcontext, a struct sigcontext
	ucSigmaskOff = 8 + 296 // uc_sigmask, 64 bits

	// ucFrameFlags are UC_FP_XSTATE (the fpstate has an XSAVE header),
	// UC_SIGCONTEXT_SS and UC_STRICT_RESTORE_SS (take ss as saved).
	ucFrameFlags = 0x1 | 0x2 | 0x4

	// ssInvalidFlags makes the sigaltstack that rt_sigreturn sets from
	// uc_stack fail with EINVAL, which it ignores, so the thread keeps
	// its alternate stack: SS_ONSTACK|SS_DISABLE is no valid mode.
	ssInvalidFlags = 1 | 2

	// The XSAVE area's software bytes (struct _fpx_sw_bytes, in the
	// fxsave area's reserved bytes 464-511) tell rt_sigreturn the size
	// and features of the area. The 4-byte magic2 follows the area.
	fpxSwOff      = 464
	fpxSwLen      = 48
	fpMagic1      = 0x46505853
	fpMagic2      = 0x46505845
	fpMagic2Size  = 4
	xsaveAlign    = 64 // XRSTOR needs a 64-byte aligned area
	sigframeAlign = 16
)

// Offsets in struct sigcontext (64-bit) of the fields the frame sets.
const (
	scR8      = 0
	scR9      = 8
	scR10     = 16
	scR11     = 24
	scR12     = 32
	scR13     = 40
	scR14     = 48
	scR15     = 56
	scRdi     = 64
	scRsi     = 72
	scRbp     = 80
	scRbx     = 88
	scRdx     = 96
	scRax     = 104
	scRcx     = 112
	scRsp     = 120
	scRip     = 128
	scEflags  = 136
	scCs      = 144 // u16
	scSs      = 150 // u16
	scFpstate = 184
)

// signalFrame is a signal frame built in the daemon, to be written at Addr
// in the target. A thread whose rsp is Addr when it executes `ret` returns
// to the frame's pretcode, the restorer, and rt_sigreturn there puts back
// the registers, FPU state and mask the frame holds.
type signalFrame struct {
	Addr  uint64
	Bytes []byte
}

// buildSignalFrame returns a frame holding regs, mask and the XSAVE area
// xstate (an NT_X86_XSTATE buffer), placed below the red zone under
// regs.Rsp (or under below, when lower) as the kernel places the frame of
// a signal. The frame's pretcode is restorer. With xstate empty the frame
// has no FPU state and rt_sigreturn resets the FPU registers.
//
// rt_sigreturn sets orig_rax to -1, so regs must already encode any
// system call restart (see rescueRegs).
func buildSignalFrame(regs *unix.PtraceRegs, mask uint64, xstate []byte, restorer, below uint64) signalFrame {
	top := min(regs.Rsp, below) - redZone
	fpAddr := top
	size, features := 0, uint64(0)
	if len(xstate) > 0 {
		size, features = frameXstate(xstate)
		fpAddr = (top - uint64(size) - fpMagic2Size) &^ (xsaveAlign - 1)
	}
	addr := (fpAddr - sigframeSize) &^ (sigframeAlign - 1)

	b := make([]byte, top-addr)
	le := binary.LittleEndian
	le.PutUint64(b[0:], restorer)
	le.PutUint64(b[ucFlagsOff:], ucFrameFlags)
	le.PutUint32(b[ucStackOff+8:], ssInvalidFlags)
	putSigcontext(b[mcontextOff:], regs)
	le.PutUint64(b[ucSigmaskOff:], mask)

	if size > 0 {
		fp := b[fpAddr-addr:]
		copy(fp, xstate[:size])
		putFpxSwBytes(fp, size, features)
		le.PutUint32(fp[size:], fpMagic2)
		le.PutUint64(b[mcontextOff+scFpstate:], fpAddr)
	}
	return signalFrame{Addr: addr, Bytes: b}
}

// putSigcontext writes the general registers into a struct sigcontext.
func putSigcontext(sc []byte, r *unix.PtraceRegs) {
	le := binary.LittleEndian
	for _, f := range []struct {
		off int
		v   uint64
	}{
		{scR8, r.R8}, {scR9, r.R9}, {scR10, r.R10}, {scR11, r.R11},
		{scR12, r.R12}, {scR13, r.R13}, {scR14, r.R14}, {scR15, r.R15},
		{scRdi, r.Rdi}, {scRsi, r.Rsi}, {scRbp, r.Rbp}, {scRbx, r.Rbx},
		{scRdx, r.Rdx}, {scRax, r.Rax}, {scRcx, r.Rcx}, {scRsp, r.Rsp},
		{scRip, r.Rip}, {scEflags, r.Eflags},
	} {
		le.PutUint64(sc[f.off:], f.v)
	}
	le.PutUint16(sc[scCs:], uint16(r.Cs))
	le.PutUint16(sc[scSs:], uint16(r.Ss))
}

// putFpxSwBytes writes the struct _fpx_sw_bytes of a signal frame's XSAVE
// area fp, which holds size bytes of state for features (see
// frameXstate), over the software bytes where ptrace stores XCR0.
func putFpxSwBytes(fp []byte, size int, features uint64) {
	le := binary.LittleEndian
	clear(fp[fpxSwOff : fpxSwOff+fpxSwLen])
	le.PutUint32(fp[fpxSwOff:], fpMagic1)
	le.PutUint32(fp[fpxSwOff+4:], uint32(size+fpMagic2Size)) // extended_size
	le.PutUint64(fp[fpxSwOff+8:], features)                  // xfeatures
	le.PutUint32(fp[fpxSwOff+16:], uint32(size))             // xstate_size
}

// rescueRegs returns the registers a thread stopped with regs must resume
// with after rt_sigreturn, which sets orig_rax to -1 and so skips the
// kernel's restart of an interrupted system call. The restart is encoded
// as rearmSyscall does; before holds the two bytes before regs.Rip. A
// thread inside restart_syscall cannot be re-armed and gets -EINTR, which
// rt_sigreturn would make restart_syscall return anyway.
func rescueRegs(regs unix.PtraceRegs, before [2]byte) unix.PtraceRegs {
	if inRestartSyscall(&regs) {
		eintr := int64(unix.EINTR)
		regs.Rax = uint64(-eintr)
		return regs
	}
	return rearmSyscall(regs, before)
}
