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

// liveStop is the state of a stopped thread at restore time, read before
// any change: its registers and the two bytes before its rip.
type liveStop struct {
	regs   unix.PtraceRegs
	before [2]byte
}

// resumeRegs returns the general registers a thread restored from t
// resumes with, given live, where the thread is stopped now. They are the
// image's Regs, in which capture already moved a thread stopped inside an
// interruptible system call back onto its `syscall` instruction with rax
// its number, and orig_rax = -1 so that the kernel does no restart
// handling of its own on the way back to user space.
//
// A thread captured inside restart_syscall is the exception: the call that
// restart_syscall continued is known only to the kernel's per-thread
// restart block, so it cannot be issued again. When the thread is stopped
// now at the same `syscall` instruction with a restart through that block
// pending (rax -ERESTART_RESTARTBLOCK), it enters restart_syscall again.
// Otherwise the restore is a *RejectError with EOPNOTSUPP naming the
// thread and why.
func resumeRegs(t *snapshot.Thread, live liveStop) (unix.PtraceRegs, error) {
	regs := t.Regs
	regs.Orig_rax = ^uint64(0)
	if !inRestartSyscall(&t.RawRegs) {
		return regs, nil
	}
	if why := restartMismatch(&t.RawRegs, live); why != "" {
		return regs, reject(unix.EOPNOTSUPP, fmt.Sprintf("thread %d was captured inside restart_syscall, "+
			"whose interrupted call cannot be issued again, and %s", t.TID, why))
	}

	// The restart block belongs to the call the thread is blocked in now,
	// not to the call at capture. So restart_syscall continues the current
	// call as the kernel keeps it. A nanosleep or poll sleeps until the
	// current call's deadline, which is the time left now and not the time
	// left at capture. A futex wait uses the current call's address, value
	// and deadline. The same instruction usually means the same call, but
	// a wrapper that many calls share, such as libc's syscall(), may have
	// been in another one.
	regs.Rax = unix.SYS_RESTART_SYSCALL
	regs.Rip = t.RawRegs.Rip - 2
	return regs, nil
}

// restartMismatch returns why a thread captured inside restart_syscall at
// raw cannot enter restart_syscall again from live, or "" when it can.
func restartMismatch(raw *unix.PtraceRegs, live liveStop) string {
	cur := &live.regs
	switch {
	case cur.Rip != raw.Rip || live.before != syscallInsn:
		return fmt.Sprintf("it is stopped at %#x now, not at that call's system call instruction at %#x", cur.Rip, raw.Rip)
	case int64(cur.Orig_rax) < 0 || -int64(cur.Rax) != errRestartRestartBlock:
		return fmt.Sprintf("no restart of its current call is pending (rax %d, orig_rax %d)", int64(cur.Rax), int64(cur.Orig_rax))
	}
	return ""
}

// inRestartSyscall reports whether registers were stopped inside
// restart_syscall with a further restart pending.
func inRestartSyscall(raw *unix.PtraceRegs) bool {
	return raw.Orig_rax == unix.SYS_RESTART_SYSCALL && -int64(raw.Rax) == errRestartRestartBlock
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
