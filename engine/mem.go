package engine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openMem opens /proc/PID/mem for reading and writing on first use.
//
// Precondition: called on the op's locked thread.
func (op *Op) openMem() (*os.File, error) {
	if op.mem != nil {
		return op.mem, nil
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", op.pid), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open memory of pid %d: %w", op.pid, err)
	}
	op.mem = f
	return f, nil
}

// closeMem closes /proc/PID/mem if it is open.
//
// Precondition: called on the op's locked thread.
func (op *Op) closeMem() {
	if op.mem == nil {
		return
	}
	if err := op.mem.Close(); err != nil {
		op.log.Warn("closing process memory failed", "err", err)
	}
	op.mem = nil
}

// readMem fills p from the target's memory at addr through /proc/PID/mem,
// which reads pages whatever their protection (the kernel forces access
// for a tracer).
//
// Precondition: called on the op's locked thread.
func (op *Op) readMem(addr uint64, p []byte) error {
	f, err := op.openMem()
	if err != nil {
		return err
	}
	for done := 0; done < len(p); {
		n, err := unix.Pread(int(f.Fd()), p[done:], int64(addr)+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read memory of pid %d at %#x: %w", op.pid, addr+uint64(done), err)
		}
		if n == 0 {
			return fmt.Errorf("read memory of pid %d at %#x: %w", op.pid, addr+uint64(done), unix.EIO)
		}
		done += n
	}
	return nil
}

// writeMem writes p into the target's memory at addr through
// /proc/PID/mem, which also writes private read-only pages (copy on
// write, as a debugger's breakpoint does).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) writeMem(addr uint64, p []byte) error {
	f, err := op.openMem()
	if err != nil {
		return err
	}
	for done := 0; done < len(p); {
		n, err := unix.Pwrite(int(f.Fd()), p[done:], int64(addr)+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write memory of pid %d at %#x: %w", op.pid, addr+uint64(done), err)
		}
		if n == 0 {
			return fmt.Errorf("write memory of pid %d at %#x: %w", op.pid, addr+uint64(done), unix.EIO)
		}
		done += n
	}
	return nil
}
