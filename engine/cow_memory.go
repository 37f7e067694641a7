package engine

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// COWMemory reads the saved memory of an image from CaptureCOW: from the
// copy-on-write clone of the process through /proc/CLONE/mem, and for the
// regions copied while frozen from Run.Data. It implements
// snapshot.MemorySource and is safe for concurrent use until Close.
//
// /proc/CLONE/mem is read instead of process_vm_readv, which pins the pages
// it reads and so copies them out of the shared state.
type COWMemory struct {
	op       *Op
	img      *snapshot.Image
	clone    *os.File // /proc/CLONE/mem, nil when everything was copied
	clonePID int      // 0 when everything was copied

	closeOp   bool // Close also ends the op (package-level CaptureCOW)
	closeOnce sync.Once
	closeErr  error
}

// Compile-time check that the store can save from a COWMemory.
var _ snapshot.MemorySource = (*COWMemory)(nil)

// openCOWMemory sets the VmFlags of the regions from the clone's smaps,
// decides which regions left to the clone are saved, fills in their runs
// from the clone's pagemap and opens the clone's memory. The clone is
// stopped, so all of these are as they were at the clone. Private pages
// the target never wrote (bit 61, file pages) are left out as Capture
// leaves them out.
func (op *Op) openCOWMemory(img *snapshot.Image, clone cowClone) (*COWMemory, error) {
	m := &COWMemory{op: op, img: img}
	if !clone.valid {
		return m, nil
	}

	cloneRegions, _, err := readMaps(clone.pid)
	if err != nil {
		return nil, fmt.Errorf("clone %d: %w", clone.pid, err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", clone.pid))
	if err != nil {
		return nil, fmt.Errorf("open pagemap of clone %d: %w", clone.pid, err)
	}
	defer pagemap.Close()
	for i := range img.Regions {
		if err := planCloneRegion(&img.Regions[i], cloneRegions, pagemap); err != nil {
			return nil, fmt.Errorf("clone %d: %w", clone.pid, err)
		}
	}

	// The op owns the file from here on and closes it with the clone.
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", clone.pid))
	if err != nil {
		return nil, fmt.Errorf("open memory of clone %d: %w", clone.pid, err)
	}
	if err := op.do(func() error { op.clone.mem = mem; return nil }); err != nil {
		return nil, errors.Join(err, mem.Close())
	}
	m.clone, m.clonePID = mem, clone.pid
	return m, nil
}

// planCloneRegion gives region r the VmFlags of the clone's region that
// holds it and, unless r was copied while frozen or must be skipped, its
// runs from the clone's pagemap.
func planCloneRegion(r *snapshot.Region, cloneRegions []snapshot.Region, pagemap *os.File) error {
	c := containing(cloneRegions, r)
	if c != nil {
		r.VmFlags = c.VmFlags
	}
	if r.Saved || r.SkipReason != "" || c == nil {
		return nil
	}

	switch r.SkipReason = skipReason(r); {
	case r.SkipReason != "":
		return nil
	case slices.Contains(r.VmFlags, "wf"):
		// NOTE: a copy-on-write capture cannot read MADV_WIPEONFORK memory
		// (the clone has it zeroed), so such a region is not saved.
		r.SkipReason = "wipe-on-fork memory (MADV_WIPEONFORK), empty in the copy-on-write clone"
		return nil
	}

	runs, err := regionRuns(pagemap, r)
	if err != nil {
		return err
	}
	r.Runs, r.Saved = runs, true
	return nil
}

// ReadRegion fills p with the saved bytes of region i at offset off of the
// region. p must lie inside one run; a range outside every run gives an
// error wrapping unix.EINVAL. After Close, reads of the clone fail.
func (m *COWMemory) ReadRegion(i int, p []byte, off uint64) error {
	if i < 0 || i >= len(m.img.Regions) {
		return fmt.Errorf("read region %d: only %d regions: %w", i, len(m.img.Regions), unix.EINVAL)
	}
	r := &m.img.Regions[i]
	runs := r.Runs
	k := sort.Search(len(runs), func(k int) bool { return runs[k].Off+runs[k].Len > off })
	if k == len(runs) || off < runs[k].Off || off+uint64(len(p)) > runs[k].Off+runs[k].Len {
		return fmt.Errorf("read of %d bytes at %d of region %#x-%#x: not inside one run: %w", len(p), off, r.Start, r.End, unix.EINVAL)
	}

	if runs[k].Data != nil {
		copy(p, runs[k].Data[off-runs[k].Off:])
		return nil
	}
	if m.clone == nil {
		return fmt.Errorf("read region %#x-%#x: run %d has no data and there is no clone: %w", r.Start, r.End, k, unix.EINVAL)
	}
	return preadFull(m.clone, p, r.Start+off)
}

// preadFull reads len(p) bytes of f at offset addr.
func preadFull(f *os.File, p []byte, addr uint64) error {
	for done := 0; done < len(p); {
		n, err := f.ReadAt(p[done:], int64(addr)+int64(done))
		if n > 0 {
			done += n
			continue
		}
		if err == nil {
			err = unix.EIO
		}
		return fmt.Errorf("read clone memory at %#x: %w", addr+uint64(done), err)
	}
	return nil
}

// Close kills the clone and reaps it inside the process (see CaptureCOW).
// Reads must have returned before Close is called. It is safe to call more
// than once and returns the first result.
func (m *COWMemory) Close() error {
	m.closeOnce.Do(func() {
		// An op closed first has already closed its clone.
		if err := m.op.closeClone(); !errors.Is(err, errOpClosed) {
			m.closeErr = err
		}
		if m.closeOp {
			m.op.Close()
		}
	})
	return m.closeErr
}
