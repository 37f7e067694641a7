package engine

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// pageSize is the x86-64 base page size.
const pageSize = 4096

// maxInjectStops bounds the unexpected stops tolerated while one injected
// system call runs.
const maxInjectStops = 32

// syscall runs system call nr with args inside the target, executed by
// thread th. It points th's rip at an existing `syscall` instruction and
// blocks every signal in th. Then it resumes th to the syscall entry and
// exit stops, reads the result, and puts th's registers and mask back. No
// memory of the target changes. A result in [-4095, -1] comes back as an
// error wrapping that unix.Errno.
//
// Signals that interrupt the injection (only SIGSTOP can, the rest are
// blocked) are held back and delivered at detach.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) syscall(th *thread, nr uintptr, args ...uintptr) (uintptr, error) {
	if len(args) > 6 {
		panic(fmt.Sprintf("injected syscall %d with %d arguments", nr, len(args)))
	}
	ip, err := op.findSyscallIP()
	if err != nil {
		return 0, err
	}

	saved, err := th.getRegs()
	if err != nil {
		return 0, err
	}
	mask, err := th.getSigmask()
	if err != nil {
		return 0, err
	}
	if err := th.setSigmask(^uint64(0)); err != nil {
		return 0, err
	}

	ret, runErr := op.runSyscall(th, saved, ip, nr, args)
	if err := th.setRegs(&saved); err != nil {
		return 0, errors.Join(runErr, err)
	}
	if err := th.setSigmask(mask); err != nil {
		return 0, errors.Join(runErr, err)
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

// runSyscall sets up the registers and runs the injected call to its exit
// stop, returning the registers there.
//
// Precondition: called on the op's locked thread; th is stopped with all
// signals blocked.
func (op *Op) runSyscall(th *thread, saved unix.PtraceRegs, ip uint64, nr uintptr, args []uintptr) (unix.PtraceRegs, error) {
	regs := saved
	setSyscallRegs(&regs, ip, nr, args)
	if err := th.setRegs(&regs); err != nil {
		return regs, err
	}

	// The first stop is the syscall entry, the second its exit.
	for range 2 {
		if err := op.resumeToSyscallStop(th); err != nil {
			return regs, err
		}
	}
	return th.getRegs()
}

// resumeToSyscallStop resumes th until its next syscall stop, holding back
// any signal that stops it on the way.
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
		case event == 0:
			op.log.Debug("holding back signal that stopped an injected syscall", "tid", th.tid, "signal", sig)
			th.signals = append(th.signals, sig)
		}
	}
	return fmt.Errorf("tid %d: no syscall stop after %d other stops: %w", th.tid, maxInjectStops, unix.EAGAIN)
}

// findSyscallIP returns the address of a `syscall` instruction (0f 05) in
// the target, searched in the vDSO first, then in libc's text, then in
// any executable file mapping. Any two bytes 0f 05 will do, even inside
// another instruction, because execution jumps straight to them.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) findSyscallIP() (uint64, error) {
	if op.syscallIP != 0 {
		return op.syscallIP, nil
	}
	raw, err := readProcFile(op.pid, "maps")
	if err != nil {
		return 0, err
	}
	regions, err := parseMaps(raw)
	if err != nil {
		return 0, fmt.Errorf("parse maps of pid %d: %w", op.pid, err)
	}

	candidates := []func(path, perms string) bool{
		func(path, _ string) bool { return path == "[vdso]" },
		func(path, perms string) bool { return strings.Contains(path, "/libc") && perms[2] == 'x' },
		func(path, perms string) bool { return strings.HasPrefix(path, "/") && perms[2] == 'x' },
	}
	for _, match := range candidates {
		for _, r := range regions {
			if !match(r.Path, r.Perms) {
				continue
			}
			if ip, ok := op.scanSyscall(r.Start, r.End); ok {
				op.syscallIP = ip
				return ip, nil
			}
		}
	}
	return 0, fmt.Errorf("find a syscall instruction in pid %d: %w", op.pid, unix.ENOEXEC)
}

// scanSyscall looks for the bytes 0f 05 in the first MiB of [start, end).
//
// Precondition: called on the op's locked thread.
func (op *Op) scanSyscall(start, end uint64) (uint64, bool) {
	buf := make([]byte, min(end-start, 1<<20))
	if err := op.readMem(start, buf); err != nil {
		return 0, false
	}
	i := bytes.Index(buf, []byte{0x0f, 0x05})
	if i < 0 {
		return 0, false
	}
	return start + uint64(i), true
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
			op.log.Warn("unmapping scratch page failed", "addr", op.scratchAddr, "err", err)
		}
		break
	}
	op.scratchAddr = 0
}
