package engine

import (
	"golang.org/x/sys/unix"
)

// user64CS is the code segment selector of 64-bit user mode (__USER_CS).
const user64CS = 0x33

// rearmSyscall returns the registers that re-enter the system call a
// thread was stopped in, given raw as the kernel reported them and the two
// bytes before raw.Rip. When the thread was not inside a call the kernel
// would restart (see restartPending) or no `syscall` instruction precedes
// rip, raw comes back unchanged.
//
// For ERESTARTSYS, ERESTARTNOINTR and ERESTARTNOHAND the kernel's own
// signal path would set rax = orig_rax and step rip back over the
// instruction, and so does this. For ERESTART_RESTARTBLOCK the kernel
// would run restart_syscall, which resumes from a per-thread block that
// belongs to whatever the thread is doing at restore time. So the original
// call is issued again instead. Its arguments are still in the registers,
// and a timeout starts again from its full length. When orig_rax already is
// restart_syscall the original call is unknown: raw comes back unchanged
// (rax -516, orig_rax SYS_restart_syscall) for restore to decide on (it resumes it only while the thread is still in that call).
//
// orig_rax is kept as the kernel reported it, so the snapshot's regs file
// shows the interrupted call; restore writes orig_rax = -1 so that the
// kernel does no restart handling of its own.
func rearmSyscall(raw unix.PtraceRegs, before [2]byte) unix.PtraceRegs {
	regs := raw
	if restartPending(&raw) && before == syscallInsn {
		regs.Rax = raw.Orig_rax
		regs.Rip = raw.Rip - 2
	}
	return regs
}

// is64bitMode reports whether the thread runs 64-bit code.
func is64bitMode(regs *unix.PtraceRegs) bool {
	return regs.Cs == user64CS
}

// infiniteWait reports whether regs are stopped at the return of a wait
// that Linux never restarts after a stop and that has no timeout:
// epoll_wait, epoll_pwait or epoll_pwait2 without a timeout, or
// rt_sigtimedwait without one (sigwaitinfo). Entering such a call again
// is the same, for the program, as never having left it.
func infiniteWait(regs *unix.PtraceRegs) bool {
	switch regs.Orig_rax {
	case unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT:
		return int32(regs.R10) < 0
	case unix.SYS_EPOLL_PWAIT2:
		return regs.R10 == 0
	case unix.SYS_RT_SIGTIMEDWAIT:
		return regs.Rdx == 0
	}
	return false
}

// interruptedWait reports whether regs return EINTR from an infiniteWait.
func interruptedWait(regs *unix.PtraceRegs) bool {
	return int64(regs.Rax) == -int64(unix.EINTR) && infiniteWait(regs)
}

// rearmWait returns raw moved back onto its `syscall` instruction, with
// rax its number, when raw returns EINTR from an infiniteWait whose
// `syscall` instruction is before: the freeze interrupted it, and the
// thread then waits on as if never frozen. The caller checks first that
// no signal is pending that the thread would take, since such a signal
// would end the wait with EINTR anyway. Other registers are returned as
// they are.
func rearmWait(raw unix.PtraceRegs, before [2]byte) unix.PtraceRegs {
	regs := raw
	if interruptedWait(&raw) && before == syscallInsn {
		regs.Rax = raw.Orig_rax
		regs.Rip = raw.Rip - 2
	}
	return regs
}
