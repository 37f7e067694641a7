package engine

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Values of rax, negated, with which the kernel leaves an interrupted
// system call that it restarts on the way back to user space
// (include/linux/errno.h).
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
)

// xcr0Offset is where the XSAVE header area stores XCR0 (the
// "sw_reserved" bytes 464..471 that the kernel fills for ptrace).
const xcr0Offset = 464

// syscallInsn is the x86-64 `syscall` instruction.
var syscallInsn = [2]byte{0x0f, 0x05}

// resumeRegs returns the general registers a thread restored from t
// resumes with: the image's Regs, in which capture already moved a thread
// stopped inside an interruptible system call back onto its `syscall`
// instruction with rax its number, and orig_rax = -1 so that the kernel
// does no restart handling of its own on the way back to user space.
func resumeRegs(t *snapshot.Thread) unix.PtraceRegs {
	regs := t.Regs
	regs.Orig_rax = ^uint64(0)
	return regs
}

// checkRestartable rejects a thread captured inside restart_syscall. The
// call it continues is known only to the kernel's per-thread restart
// block, which at restore time belongs to whatever the thread does then.
func checkRestartable(img *snapshot.Image) error {
	for _, t := range img.Threads {
		raw := &t.RawRegs
		if raw.Orig_rax == unix.SYS_RESTART_SYSCALL && -int64(raw.Rax) == errRestartRestartBlock {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("thread %d was captured inside restart_syscall, whose interrupted call cannot be re-issued", t.TID))
		}
	}
	return nil
}

// restartPending reports whether the kernel would restart the system call
// the registers were stopped in.
func restartPending(r *unix.PtraceRegs) bool {
	if int64(r.Orig_rax) < 0 || r.Orig_rax == unix.SYS_RESTART_SYSCALL {
		return false
	}
	switch -int64(r.Rax) {
	case errRestartSys, errRestartNoIntr, errRestartNoHand, errRestartRestartBlock:
		return true
	}
	return false
}

// xstateXCR0 returns the feature mask stored in an NT_X86_XSTATE buffer,
// or 0 when the buffer is too short to hold it.
func xstateXCR0(xstate []byte) uint64 {
	if len(xstate) < xcr0Offset+8 {
		return 0
	}
	return binary.LittleEndian.Uint64(xstate[xcr0Offset:])
}
