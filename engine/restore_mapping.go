package engine

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// applyLayout carries out a layout plan inside the target: unmaps, then
// brk (when want is non-zero and differs from cur), then re-created
// mappings, then protections.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) applyLayout(plan *layoutPlan, want, cur uint64) error {
	th := op.threads[0]
	for _, u := range plan.unmaps {
		if _, err := op.syscall(th, unix.SYS_MUNMAP, uintptr(u.start), uintptr(u.end-u.start)); err != nil {
			return fmt.Errorf("unmap %s: %w", u, err)
		}
	}

	if want != 0 && want != cur {
		got, err := op.syscall(th, unix.SYS_BRK, uintptr(want))
		if err != nil {
			return fmt.Errorf("set program break to %#x: %w", want, err)
		}
		if uint64(got) != want {
			return fmt.Errorf("set program break to %#x: the kernel left it at %#x: %w", want, got, unix.ENOMEM)
		}
	}

	for _, c := range plan.creates {
		if err := op.mapEntry(c); err != nil {
			return fmt.Errorf("re-create mapping %s: %w", c, err)
		}
	}
	for _, p := range plan.protects {
		if _, err := op.syscall(th, unix.SYS_MPROTECT, uintptr(p.start), uintptr(p.end-p.start), uintptr(p.entry.prot())); err != nil {
			return fmt.Errorf("protect %s: %w", p, err)
		}
	}
	return nil
}

// mapEntry maps c.entry over [c.start, c.end) with an injected mmap
// that never replaces a mapping. A file is opened in the target by path,
// checked to be the inode the entry had, mapped at the entry's offset and
// closed again.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) mapEntry(c layoutOp) error {
	e := c.entry
	fd, offset := ^uintptr(0), uint64(0)
	if e.inode != 0 {
		num, err := op.openChecked(e.path, e.openFlags(), e.dev, e.inode)
		if err != nil {
			return err
		}
		defer op.closeInTarget(num)
		fd, offset = uintptr(num), e.fileOffset(c.start)
	}

	th := op.threads[0]
	addr, err := op.syscall(th, unix.SYS_MMAP, uintptr(c.start), uintptr(c.end-c.start),
		uintptr(e.prot()), uintptr(e.mmapFlags()), fd, uintptr(offset))
	if err != nil {
		return err
	}
	if uint64(addr) != c.start {
		// A kernel without MAP_FIXED_NOREPLACE takes the address as a hint.
		if _, err := op.syscall(th, unix.SYS_MUNMAP, addr, uintptr(c.end-c.start)); err != nil {
			op.log.Warn("unmapping misplaced mapping failed", "addr", fmt.Sprintf("%#x", addr), "err", err)
		}
		return fmt.Errorf("mapped at %#x instead: %w", addr, unix.EEXIST)
	}
	return nil
}

// openInTarget opens path inside the target with an injected openat and
// returns the new descriptor.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) openInTarget(path string, flags int) (int, error) {
	addr, err := op.scratch()
	if err != nil {
		return -1, err
	}
	if len(path)+1 > pageSize-scratchPath {
		return -1, fmt.Errorf("open %s in pid %d: %w", path, op.pid, unix.ENAMETOOLONG)
	}
	if err := op.writeMem(addr+scratchPath, append([]byte(path), 0)); err != nil {
		return -1, err
	}

	cwd := unix.AT_FDCWD
	fd, err := op.syscall(op.threads[0], unix.SYS_OPENAT, uintptr(cwd), uintptr(addr+scratchPath), uintptr(flags), 0)
	if err != nil {
		return -1, fmt.Errorf("open %s in pid %d: %w", path, op.pid, err)
	}
	return int(fd), nil
}

// openChecked opens path inside the target with flags and checks that the
// file opened is inode ino of device dev.
//
// The open adds O_NOCTTY, so that a terminal never becomes the
// controlling one, and O_NONBLOCK. Since its check, path may have become
// a FIFO or a device whose open waits (for a writer, or for a modem's
// carrier), and an injected call that waits would leave the thread stuck
// in it. O_NONBLOCK is cleared again when flags lack it.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) openChecked(path string, flags int, dev, ino uint64) (int, error) {
	fd, err := op.openInTarget(path, flags|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return -1, err
	}
	id, err := processProbe(op.pid).statFD(fd)
	if err == nil && (id.dev != dev || id.ino != ino) {
		err = reject(unix.EOPNOTSUPP, fmt.Sprintf("%s is now another file (inode %d, was %d)", path, id.ino, ino))
	}
	if err == nil && flags&unix.O_NONBLOCK == 0 {
		err = op.fcntl(fd, unix.F_SETFL, flags&fdStatusFlags)
	}
	if err != nil {
		op.closeInTarget(fd)
		return -1, fmt.Errorf("check %s opened in pid %d: %w", path, op.pid, err)
	}
	return fd, nil
}

// closeInTarget closes descriptor fd of the target with an injected close,
// logging a failure: close releases the number even when it reports one.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) closeInTarget(fd int) {
	if _, err := op.syscall(op.threads[0], unix.SYS_CLOSE, uintptr(fd)); err != nil {
		op.log.Warn("closing descriptor in target failed", "fd", fd, "err", err)
	}
}

// placeScratch maps the scratch page at an address that neither the
// current layout nor the snapshot's uses, below the lowest mapping of
// both, so that it cannot take the place of a mapping restore re-creates.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) placeScratch(cur, snap []snapshot.Region) error {
	if op.scratchAddr != 0 {
		return nil
	}
	const minAddr = 1 << 20 // well above vm.mmap_min_addr
	lowest := uint64(1) << 47
	for _, r := range append(cur[:len(cur):len(cur)], snap...) {
		lowest = min(lowest, r.Start)
	}
	if lowest < minAddr+pageSize {
		// NOTE: a process mapping memory this low gets the scratch page
		// wherever the kernel puts it, which may be a hole restore fills.
		_, err := op.scratch()
		return err
	}

	addr := lowest - pageSize
	got, err := op.syscall(op.threads[0], unix.SYS_MMAP, uintptr(addr), pageSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uintptr(0), 0)
	if err != nil {
		return fmt.Errorf("map scratch page at %#x in pid %d: %w", addr, op.pid, err)
	}
	op.scratchAddr = uint64(got)
	return nil
}

// withoutScratch returns regions with the scratch page cut out, also
// when the kernel merged it with a neighbour.
func (op *Op) withoutScratch(regions []snapshot.Region) []snapshot.Region {
	lo, hi := op.scratchAddr, op.scratchAddr+pageSize
	out := make([]snapshot.Region, 0, len(regions))
	for _, r := range regions {
		if lo == 0 || r.End <= lo || r.Start >= hi {
			out = append(out, r)
			continue
		}
		if r.Start < lo {
			below := r
			below.End = lo
			out = append(out, below)
		}
		if r.End > hi {
			above := r
			if above.Inode != 0 {
				above.Offset += hi - r.Start
			}
			above.Start = hi
			out = append(out, above)
		}
	}
	return out
}
