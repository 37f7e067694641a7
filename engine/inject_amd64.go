package engine

import (
	"golang.org/x/sys/unix"
)

// eflagsTF is the x86 trap flag, which would single-step the injected call.
const eflagsTF = 1 << 8

// setSyscallRegs prepares regs to run system call nr at ip, with the
// arguments in the x86-64 syscall registers. orig_rax = -1 keeps the
// kernel from treating the stop th resumes from as an interrupted system
// call to restart.
func setSyscallRegs(regs *unix.PtraceRegs, ip uint64, nr uintptr, args []uintptr) {
	var a [6]uint64
	for i, v := range args {
		a[i] = uint64(v)
	}
	regs.Rip = ip
	regs.Rax = uint64(nr)
	regs.Orig_rax = ^uint64(0)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	regs.Eflags &^= eflagsTF
}

// syscallResult turns rax at a syscall exit into a value or an errno.
func syscallResult(regs unix.PtraceRegs) (uintptr, error) {
	ret := int64(regs.Rax)
	if ret < 0 && ret >= -4095 {
		return 0, unix.Errno(-ret)
	}
	return uintptr(ret), nil
}
