package engine

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// checkTarget rejects a process that no operation may act on, before
// anything touches it.
func checkTarget(pid int) error {
	self := os.Getpid()
	if pid == self {
		return reject(unix.EPERM, fmt.Sprintf("pid %d is the ckptfs daemon itself", pid))
	}

	st, err := ReadStatus(pid)
	if err != nil {
		return err
	}
	switch {
	case st.Tgid == self:
		return reject(unix.EPERM, fmt.Sprintf("pid %d is a thread of the ckptfs daemon", pid))
	case st.Tgid != pid:
		return reject(unix.EINVAL, fmt.Sprintf("pid %d is a thread of process %d, not a process", pid, st.Tgid))
	case st.State == 'Z' || st.State == 'X':
		return reject(unix.ESRCH, fmt.Sprintf("pid %d (%s) is a zombie", pid, st.Name))
	}

	if kernelThread(pid, st) {
		return reject(unix.EPERM, fmt.Sprintf("pid %d (%s) is a kernel thread", pid, st.Name))
	}
	// TracerPid is the thread that traces; name its process.
	tracer := processOf(st.TracerPid)
	if st.TracerPid != 0 && !threadOf(st.TracerPid, self) && sameExecutable(st.TracerPid, self) {
		return reject(unix.EBUSY, fmt.Sprintf("pid %d (%s) is being captured or restored by another ckptfs (pid %d); retry when it finishes",
			pid, st.Name, tracer))
	}
	if st.TracerPid != 0 {
		return reject(unix.EPERM, fmt.Sprintf("pid %d (%s) is already traced by pid %d (%s)",
			pid, st.Name, tracer, commOf(tracer)))
	}
	return check64bit(pid, st.Name)
}

// kernelThread reports whether pid is a kernel thread: the Kthread line of
// status (Linux 6.x), PF_KTHREAD in the stat flags, or a child of kthreadd
// (pid 2).
func kernelThread(pid int, st *Status) bool {
	if st.Kthread || st.PPid == 2 {
		return true
	}
	ps, err := readProcStat(pid)
	return err == nil && ps.Flags&pfKthread != 0
}

// sameExecutable reports whether processes a and b run the same executable
// file. It distinguishes another ckptfs (the mount and the command line
// share a store) from a debugger.
func sameExecutable(a, b int) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/exe", a), &sa) != nil || unix.Stat(fmt.Sprintf("/proc/%d/exe", b), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// threadOf reports whether tid is a thread of process pid.
func threadOf(tid, pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid))
	return err == nil
}

// commOf returns the command name of pid, or "?" when it cannot be read.
func commOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}

// check64bit rejects a process whose executable is not a 64-bit ELF file:
// the engine reads and writes only the x86-64 register layout.
func check64bit(pid int, name string) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("open executable of pid %d: %w", pid, err)
	}
	defer f.Close()

	var ident [elf.EI_NIDENT]byte
	if _, err := io.ReadFull(f, ident[:]); err != nil {
		return fmt.Errorf("read ELF header of pid %d: %w", pid, err)
	}
	if elf.Class(ident[elf.EI_CLASS]) != elf.ELFCLASS64 {
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d (%s) is a 32-bit process, which is not supported", pid, name))
	}
	return nil
}

// processOf returns the process (thread group) that thread tid belongs
// to, or tid itself when that cannot be read.
func processOf(tid int) int {
	if tid == 0 {
		return 0
	}
	st, err := ReadStatus(tid)
	if err != nil || st.Tgid == 0 {
		return tid
	}
	return st.Tgid
}
