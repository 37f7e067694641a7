package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// diffChunk is how much of a region restore compares at once.
const diffChunk = 1 << 20

// memChunk is bytes of the target's memory at addr: snapshot bytes to
// write, or current bytes kept to undo a change.
type memChunk struct {
	addr uint64
	data []byte
}

// memPlan lists the memory changes of a restore and what undoes them.
type memPlan struct {
	writes   []memChunk // snapshot bytes that differ from the current ones
	dontneed []span     // private anonymous pages the snapshot did not have
	safety   []memChunk // current bytes of every page restore writes, drops or unmaps
}

// addChunk appends a copy of data at addr, extending the last chunk when
// data continues it.
func addChunk(chunks []memChunk, addr uint64, data []byte) []memChunk {
	if n := len(chunks); n > 0 {
		last := &chunks[n-1]
		if last.addr+uint64(len(last.data)) == addr {
			last.data = append(last.data, data...)
			return chunks
		}
	}
	return append(chunks, memChunk{addr: addr, data: slices.Clone(data)})
}

// memDiffer compares the target's memory with a snapshot's, page by page.
type memDiffer struct {
	op      *Op
	mem     snapshot.MemoryReader
	pagemap *os.File
	plan    *memPlan

	cur, saved []byte   // one chunk of current and snapshot bytes
	flagBytes  []byte   // pagemap entries of the chunk as read
	flags      []uint64 // the same, decoded
	inRun      []bool   // whether each page of the chunk is in a saved run
}

func newMemDiffer(op *Op, mem snapshot.MemoryReader, plan *memPlan) (*memDiffer, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", op.pid))
	if err != nil {
		return nil, fmt.Errorf("open pagemap of pid %d: %w", op.pid, err)
	}
	return &memDiffer{
		op: op, mem: mem, pagemap: f, plan: plan,
		cur: make([]byte, diffChunk), saved: make([]byte, diffChunk),
		flagBytes: make([]byte, diffChunk/pageSize*8),
		flags:     make([]uint64, diffChunk/pageSize), inRun: make([]bool, diffChunk/pageSize),
	}, nil
}

func (d *memDiffer) close() { d.pagemap.Close() }

// contentRegion reports whether restore rolls back the contents of a
// snapshot region: private, saved, and not a kernel mapping.
func contentRegion(r *snapshot.Region) bool {
	return r.Saved && !r.Shared() && !untouchedMappings[r.Path]
}

// diffRegions compares every restorable snapshot region over the parts
// that spans cover. fresh says the spans were just mapped by restore, so
// there is nothing to drop and nothing to keep for undo.
func (d *memDiffer) diffRegions(img *snapshot.Image, spans []span, fresh bool) error {
	for i := range img.Regions {
		r := &img.Regions[i]
		if !contentRegion(r) {
			continue
		}
		for _, sp := range spans {
			start, end := max(sp.start, r.Start), min(sp.end, r.End)
			if start >= end {
				continue
			}
			if err := d.diffRange(i, r, start, end, fresh); err != nil {
				return fmt.Errorf("compare memory %x-%x %s: %w", start, end, r.Path, err)
			}
		}
	}
	return nil
}

// diffRange compares [start, end) of region r (index i of the image) in
// chunks.
func (d *memDiffer) diffRange(i int, r *snapshot.Region, start, end uint64, fresh bool) error {
	for addr := start; addr < end; addr += diffChunk {
		n := min(end-addr, diffChunk)
		pages := int(n / pageSize)

		if err := d.mem.ReadRegion(i, d.saved[:n], addr-r.Start); err != nil {
			return fmt.Errorf("read snapshot memory at %#x: %w", addr, err)
		}
		markRuns(d.inRun[:pages], r.Runs, addr-r.Start)
		if err := d.readFlags(addr, d.flags[:pages]); err != nil {
			return err
		}
		if err := d.readCurrent(addr, pages, r.Inode != 0); err != nil {
			return err
		}
		d.comparePages(addr, pages, r.Inode == 0, fresh)
	}
	return nil
}

// markRuns sets inRun[p] for each page p of a chunk at offset off of its
// region that lies in one of runs.
func markRuns(inRun []bool, runs []snapshot.Run, off uint64) {
	clear(inRun)
	end := off + uint64(len(inRun))*pageSize
	i, _ := slices.BinarySearchFunc(runs, off, func(run snapshot.Run, o uint64) int {
		if run.Off+run.Len <= o {
			return -1
		}
		return 1
	})
	for ; i < len(runs) && runs[i].Off < end; i++ {
		from := max(runs[i].Off, off)
		to := min(runs[i].Off+runs[i].Len, end)
		for a := from; a < to; a += pageSize {
			inRun[(a-off)/pageSize] = true
		}
	}
}

// readFlags reads the pagemap entries of the pages at addr.
func (d *memDiffer) readFlags(addr uint64, flags []uint64) error {
	buf := d.flagBytes[:len(flags)*8]
	if _, err := d.pagemap.ReadAt(buf, int64(addr/pageSize*8)); err != nil {
		return fmt.Errorf("read pagemap of pid %d at %#x: %w", d.op.pid, addr, err)
	}
	for i := range flags {
		flags[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return nil
}

// readCurrent fills d.cur with the current bytes of the chunk's pages that
// hold data: present or swapped pages, and for a file mapping also pages
// in a saved run, whose current bytes come from the file. Other pages are
// zeros.
func (d *memDiffer) readCurrent(addr uint64, pages int, file bool) error {
	for p := 0; p < pages; {
		q := p + 1
		holds := d.holdsData(p, file)
		for q < pages && d.holdsData(q, file) == holds {
			q++
		}
		buf := d.cur[p*pageSize : q*pageSize]
		if !holds {
			clear(buf)
		} else if err := d.op.readMemFast(addr+uint64(p)*pageSize, buf); err != nil {
			return err
		}
		p = q
	}
	return nil
}

func (d *memDiffer) holdsData(p int, file bool) bool {
	return d.flags[p]&(pmPresent|pmSwapped) != 0 || file && d.inRun[p]
}

// comparePages plans the changes of one chunk. A page in a saved run is
// written when its bytes differ. A page outside every run held no data of
// its own at capture: a private anonymous copy present now (pagemap bit 61
// clear) is dropped, so the page reads as zeros again or, in a file
// mapping, as the file.
func (d *memDiffer) comparePages(addr uint64, pages int, anon, fresh bool) {
	plan := d.plan
	for p := range pages {
		page := addr + uint64(p)*pageSize
		cur := d.cur[p*pageSize : (p+1)*pageSize]
		saved := d.saved[p*pageSize : (p+1)*pageSize]

		switch {
		case d.inRun[p]:
			if bytes.Equal(cur, saved) {
				continue
			}
			plan.writes = addChunk(plan.writes, page, saved)
		case !fresh && d.flags[p]&(pmPresent|pmSwapped) != 0 && d.flags[p]&pmFileShare == 0:
			plan.dontneed = appendSpan(plan.dontneed, span{page, page + pageSize})
			if anon && allZero(cur) {
				continue
			}
		default:
			continue
		}
		if !fresh {
			plan.safety = addChunk(plan.safety, page, cur)
		}
	}
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// saveRemoved keeps, for undo, the private anonymous pages of the current
// layout inside spans, which restore is about to unmap. File pages need no
// copy: mapping the file again brings them back.
func (d *memDiffer) saveRemoved(spans []span) error {
	for _, sp := range spans {
		for addr := sp.start; addr < sp.end; addr += diffChunk {
			pages := int(min(sp.end-addr, diffChunk) / pageSize)
			if err := d.readFlags(addr, d.flags[:pages]); err != nil {
				return err
			}
			clear(d.inRun[:pages])
			if err := d.readCurrent(addr, pages, false); err != nil {
				return err
			}
			for p := range pages {
				if d.flags[p]&(pmPresent|pmSwapped) != 0 && d.flags[p]&pmFileShare == 0 {
					page := addr + uint64(p)*pageSize
					d.plan.safety = addChunk(d.plan.safety, page, d.cur[p*pageSize:(p+1)*pageSize])
				}
			}
		}
	}
	return nil
}

// readMemFast fills p from the target's memory at addr with one
// process_vm_readv, which is faster than /proc/PID/mem, and falls back to
// readMem where that fails (pages without read permission, for example).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readMemFast(addr uint64, p []byte) error {
	local := []unix.Iovec{{Base: &p[0]}}
	local[0].SetLen(len(p))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	if n, err := unix.ProcessVMReadv(op.pid, local, remote, 0); err == nil && n == len(p) {
		return nil
	}
	return op.readMem(addr, p)
}

// writeChunks writes chunks into the target's memory.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) writeChunks(chunks []memChunk) error {
	for _, c := range chunks {
		if err := op.writeMem(c.addr, c.data); err != nil {
			return err
		}
	}
	return nil
}

// dropPages discards the pages of spans with injected
// madvise(MADV_DONTNEED), so that anonymous pages read as zeros and
// private copies of file pages as the file again.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) dropPages(spans []span) error {
	for _, sp := range spans {
		if _, err := op.syscall(op.threads[0], unix.SYS_MADVISE, uintptr(sp.start), uintptr(sp.end-sp.start), unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("drop pages %x-%x: %w", sp.start, sp.end, err)
		}
	}
	return nil
}
