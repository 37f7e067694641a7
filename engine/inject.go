package engine

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// pageSize is the x86-64 base page size.
const pageSize = 4096

// maxInjectStops bounds the stops other than syscall stops tolerated while
// one injected system call runs: held-back SIGSTOPs and ptrace events.
const maxInjectStops = 32

// errInjectedFault reports a signal the kernel forced on a thread while it
// ran an injected system call, such as SIGSEGV when its rseq area is gone
// or SIGSYS from a seccomp filter.
var errInjectedFault = fmt.Errorf("forced signal during an injected system call: %w", unix.EFAULT)

// injection is one injected system call in thread th.
type injection struct {
	th    *thread
	saved unix.PtraceRegs // th's registers before the call, put back after it
	mask  uint64          // th's signal mask before the call
	regs  unix.PtraceRegs // the registers that run the call
}

// syscall runs system call nr with args inside the target, executed by
// thread th, and puts th's registers and signal mask back. A result in
// [-4095, -1] comes back as an error wrapping that unix.Errno.
//
// The call runs at a `syscall; ret` instruction pair of the target with
// every signal blocked, from the syscall entry stop to the exit stop.
// Below th's stack red zone it leaves a signal frame holding th's
// registers, FPU state and mask, and rsp points at its return address,
// the target's rt_sigreturn code. If the daemon dies at any point of the
// injection, the kernel detaches th, which then finishes the call, returns
// into the frame and rt_sigreturn restores its state (see rescueRegs for
// interrupted system calls). The stack below the red zone is what a
// signal handler would overwrite, so no live data changes.
//
// NOTE: with a user shadow stack (CET) enabled, the `ret` into the frame
// faults; restore rejects such processes, capture does not check.
//
// A SIGSTOP that arrives meanwhile is held back and delivered at detach.
// A signal the kernel forces on th fails the call with errInjectedFault
// and is discarded.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) syscall(th *thread, nr uintptr, args ...uintptr) (uintptr, error) {
	if len(args) > 6 {
		panic(fmt.Sprintf("injected syscall %d with %d arguments", nr, len(args)))
	}
	inj, err := op.prepareInjection(th, nr, args)
	if err != nil {
		return 0, fmt.Errorf("injected syscall %d in tid %d: %w", nr, th.tid, err)
	}

	ret, runErr := op.runInjection(inj)
	if err := inj.finish(); err != nil {
		return 0, fmt.Errorf("injected syscall %d in tid %d: %w", nr, th.tid, errors.Join(runErr, err))
	}
	if runErr != nil {
		return 0, fmt.Errorf("injected syscall %d in tid %d: %w", nr, th.tid, runErr)
	}
	result, err := syscallResult(ret)
	if err != nil {
		return 0, fmt.Errorf("injected syscall %d in tid %d: %w", nr, th.tid, err)
	}
	return result, nil
}

// prepareInjection reads th's state, writes the signal frame and returns
// the registers that run the call.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) prepareInjection(th *thread, nr uintptr, args []uintptr) (*injection, error) {
	g, err := op.findGadgets(changedRange(nr, args))
	if err != nil {
		return nil, err
	}
	inj := &injection{th: th}
	if inj.saved, err = th.getRegs(); err != nil {
		return nil, err
	}
	if inj.mask, err = th.getSigmask(); err != nil {
		return nil, err
	}
	op.abortRseq(th, &inj.saved)

	inj.regs = inj.saved
	setSyscallRegs(&inj.regs, g.syscallRet, nr, args)
	if !g.safe {
		return inj, nil
	}
	frame, err := op.writeRescueFrame(inj, g.restorer)
	if err != nil {
		op.log.Warn("injecting without a signal frame: the thread would crash if the daemon died during the call", "tid", th.tid, "err", err)
		return inj, nil
	}
	inj.regs.Rsp = frame.Addr
	if nr == unix.SYS_CLONE && len(args) > 1 && args[1] == 0 {
		return inj, op.writeCloneExitFrame(inj, g, frame.Addr)
	}
	return inj, nil
}

// writeRescueFrame writes the signal frame that restores th's state when
// it returns from the injected call untraced.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) writeRescueFrame(inj *injection, restorer uint64) (signalFrame, error) {
	xstate, err := inj.th.getXstate()
	if err != nil {
		return signalFrame{}, err
	}
	// Bytes that cannot be read (rip in a mapping a restore removed, for
	// example) stay zero, which no `syscall` instruction is.
	var before [2]byte
	if restartPending(&inj.saved) {
		if err := op.readMem(inj.saved.Rip-2, before[:]); err != nil {
			before = [2]byte{}
		}
	}
	regs := rescueRegs(inj.saved, before)
	frame := buildSignalFrame(&regs, inj.mask, xstate, restorer, regs.Rsp)
	if err := op.writeMem(frame.Addr, frame.Bytes); err != nil {
		return signalFrame{}, fmt.Errorf("write signal frame on the stack of tid %d: %w", inj.th.tid, err)
	}
	return frame, nil
}

// writeCloneExitFrame gives the child of an injected clone that shares
// th's stack pointer its own stack: a frame below the parent's whose
// rt_sigreturn runs exit_group(0). A child that runs untraced after the
// daemon's death so exits at once instead of returning into the parent's
// state as a second copy of the program.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) writeCloneExitFrame(inj *injection, g gadgets, parentFrame uint64) error {
	exit := unix.PtraceRegs{
		Rip:    g.syscallRet,
		Rax:    unix.SYS_EXIT_GROUP,
		Rsp:    parentFrame,
		Cs:     inj.saved.Cs,
		Ss:     inj.saved.Ss,
		Eflags: inj.saved.Eflags &^ eflagsTF,
	}
	frame := buildSignalFrame(&exit, ^uint64(0), nil, g.restorer, parentFrame+redZone)
	if err := op.writeMem(frame.Addr, frame.Bytes); err != nil {
		return fmt.Errorf("write exit frame for the clone of tid %d: %w", inj.th.tid, err)
	}
	inj.regs.Rsi = frame.Addr
	return nil
}

// runInjection runs the prepared call to its exit stop and returns the
// registers there. It sets the registers before blocking signals, so that
// a death of the daemon in between leaves neither the call's registers
// without the frame's path back nor a mask that blocks everything.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) runInjection(inj *injection) (unix.PtraceRegs, error) {
	th := inj.th
	if err := th.setRegs(&inj.regs); err != nil {
		return unix.PtraceRegs{}, err
	}
	if err := th.setSigmask(^uint64(0)); err != nil {
		return unix.PtraceRegs{}, err
	}

	// The first stop is the syscall entry, the second its exit.
	for range 2 {
		if err := op.resumeToSyscallStop(th); err != nil {
			return unix.PtraceRegs{}, err
		}
	}
	return th.getRegs()
}

// finish puts back th's mask, then its registers: until the registers
// change, a thread that runs on untraced returns through the frame, which
// holds the same mask.
//
// Precondition: called on the op's locked thread; th is stopped.
func (inj *injection) finish() error {
	if err := inj.th.setSigmask(inj.mask); err != nil {
		return err
	}
	return inj.th.setRegs(&inj.saved)
}

// resumeToSyscallStop resumes th until its next syscall stop. It holds
// back a SIGSTOP, passes ptrace event stops, and fails on any other
// signal: with every signal blocked only the kernel can force one, and
// delivering it later would kill the process for a fault of the
// injection.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) resumeToSyscallStop(th *thread) error {
	for range maxInjectStops {
		if err := ptraceSyscall(th.tid); err != nil {
			return fmt.Errorf("resume tid %d: %w", th.tid, err)
		}
		ws, err := waitTid(th.tid)
		if err != nil {
			return err
		}
		if ws.Exited() || ws.Signaled() {
			th.exited = true
			return fmt.Errorf("tid %d exited during an injected syscall: %w", th.tid, unix.ESRCH)
		}
		if !ws.Stopped() {
			continue
		}

		sig := ws.StopSignal()
		switch event := stopEvent(ws); {
		case event == 0 && sig == unix.SIGTRAP|0x80:
			return nil
		case event == unix.PTRACE_EVENT_EXEC:
			return fmt.Errorf("tid %d: %w", th.tid, errExec)
		case event != 0:
			op.log.Debug("passing a ptrace event stop during an injected syscall", "tid", th.tid, "event", event, "signal", sig)
		case sig == unix.SIGSTOP:
			op.log.Debug("holding back SIGSTOP that stopped an injected syscall", "tid", th.tid)
			th.signals = append(th.signals, sig)
		default:
			return fmt.Errorf("tid %d stopped by %v (%s): %w", th.tid, sig, describeSiginfo(th.tid), errInjectedFault)
		}
	}
	return fmt.Errorf("tid %d: no syscall stop after %d other stops: %w", th.tid, maxInjectStops, unix.EAGAIN)
}

// scratch returns the address of a private read-write page mapped in the
// target by an injected mmap on first use, for arguments the kernel reads
// or writes through a pointer. thaw unmaps it.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) scratch() (uint64, error) {
	if op.scratchAddr != 0 {
		return op.scratchAddr, nil
	}
	addr, err := op.syscall(op.threads[0], unix.SYS_MMAP, 0, pageSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uintptr(0), 0)
	if err != nil {
		return 0, fmt.Errorf("map scratch page in pid %d: %w", op.pid, err)
	}
	op.scratchAddr = uint64(addr)
	return op.scratchAddr, nil
}

// unmapScratch removes the scratch page, if one was mapped.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) unmapScratch() {
	if op.scratchAddr == 0 {
		return
	}
	for _, th := range op.threads {
		if th.exited || !th.stopped {
			continue
		}
		if _, err := op.syscall(th, unix.SYS_MUNMAP, uintptr(op.scratchAddr), pageSize); err != nil {
			op.log.Warn("unmapping scratch page failed", "addr", fmt.Sprintf("%#x", op.scratchAddr), "err", err)
		}
		break
	}
	op.scratchAddr = 0
}
