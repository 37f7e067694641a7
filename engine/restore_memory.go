package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Restore compares memory in jobs of diffJobSize bytes of a region, spread
// over the CPUs, each compared in pieces of diffPiece bytes. A piece is
// small enough that its current and saved bytes are still in the CPU
// cache when compared. A job spans a few snapshot frames, so that one
// goroutine reads them all from the snapshot reader's cache of
// decompressed frames instead of two goroutines decompressing each.
const (
	diffJobSize = 1 << 20
	diffPiece   = 256 << 10
)

// memChunk is bytes of the target's memory at addr: snapshot bytes to
// write, or current bytes kept to undo a change.
type memChunk struct {
	addr uint64
	data []byte
}

// memPlan lists the memory changes of a restore and what undoes them.
// Each chunk lies inside one piece of a region (see diffPiece), so that
// no chunk grows by copying and each stays at most diffPiece long.
//
// NOTE: the plan keeps the snapshot bytes of every changed page and the
// current bytes as the safety copy, so a restore needs up to twice the
// changed memory in RAM while it runs.
type memPlan struct {
	writes   []memChunk // snapshot bytes that differ from the current ones
	dontneed []span     // private anonymous pages the snapshot did not have
	safety   []memChunk // current bytes of every page restore writes, drops or unmaps
}

// pageCollector gathers pages into chunks of adjacent pages that share
// one buffer. The caller sizes the buffer once for the pages it will add,
// so adding a page never copies the pages added before.
type pageCollector struct {
	buf    []byte
	chunks []memChunk
}

func newPageCollector(pages int) pageCollector {
	return pageCollector{buf: make([]byte, 0, pages*pageSize)}
}

// add appends a copy of one page at addr, extending the last chunk when
// the page continues it.
func (c *pageCollector) add(addr uint64, page []byte) {
	start := len(c.buf)
	c.buf = append(c.buf, page...)
	end := len(c.buf)
	if n := len(c.chunks); n > 0 {
		last := &c.chunks[n-1]
		if last.addr+uint64(len(last.data)) == addr {
			last.data = c.buf[start-len(last.data) : end : end]
			return
		}
	}
	c.chunks = append(c.chunks, memChunk{addr: addr, data: c.buf[start:end:end]})
}

// memSource is the pair of memories restore compares: the target's,
// through its pagemap and memory files, and the snapshot's. Its methods may
// be called from several goroutines at once, and so may mem's.
type memSource struct {
	op      *Op
	pagemap *os.File
	mem     snapshot.MemoryReader
}

// openMemSource opens the target's pagemap and memory for comparing.
//
// Precondition: called on the op's locked thread.
func openMemSource(op *Op, mem snapshot.MemoryReader) (*memSource, error) {
	if _, err := op.openMem(); err != nil {
		return nil, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", op.pid))
	if err != nil {
		return nil, fmt.Errorf("open pagemap of pid %d: %w", op.pid, err)
	}
	return &memSource{op: op, pagemap: f, mem: mem}, nil
}

func (s *memSource) close() { s.pagemap.Close() }

// memDiffer compares one piece at a time, page by page, and adds what it
// finds to its plan. Each goroutine has its own.
type memDiffer struct {
	src  *memSource
	plan memPlan

	cur, saved []byte       // one piece of current and snapshot bytes
	flagBytes  []byte       // pagemap entries of the piece as read
	flags      []uint64     // the same, decoded
	inRun      []bool       // whether each page of the piece is in a saved run
	actions    []pageAction // what restore does to each page of the piece
}

// pageAction is the change restore makes to one page.
type pageAction uint8

const (
	keepPage     pageAction = iota
	writePage               // write the snapshot's bytes, keep the current ones for undo
	dropPage                // drop the page, keep the current bytes for undo
	dropZeroPage            // drop an anonymous page of zeros, which undo need not write
)

func (s *memSource) newDiffer() *memDiffer {
	return &memDiffer{
		src: s, cur: make([]byte, diffPiece), saved: make([]byte, diffPiece),
		flagBytes: make([]byte, diffPiece/pageSize*8),
		flags:     make([]uint64, diffPiece/pageSize), inRun: make([]bool, diffPiece/pageSize),
		actions: make([]pageAction, diffPiece/pageSize),
	}
}

// contentRegion reports whether restore rolls back the contents of a
// snapshot region: private, saved, and not a kernel mapping.
func contentRegion(r *snapshot.Region) bool {
	return r.Saved && !r.Shared() && !untouchedMappings[r.Path]
}

// diffJob is one part of snapshot region i (r) to compare.
type diffJob struct {
	i         int
	r         *snapshot.Region
	addr, end uint64
}

// diffRegions compares every restorable snapshot region over the parts
// that spans cover, in jobs spread over one goroutine per CPU, and adds
// the changes to plan in address order. With fresh set, the spans were
// just mapped by restore, so there is nothing to drop and nothing to keep
// for undo.
//
// Precondition: all threads stopped.
func (s *memSource) diffRegions(img *snapshot.Image, spans []span, fresh bool, plan *memPlan) error {
	jobs := diffJobs(img, spans)
	results := make([]memPlan, len(jobs))
	errs := make([]error, len(jobs))

	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Go(func() {
			d := s.newDiffer()
			for k := int(next.Add(1) - 1); k < len(jobs); k = int(next.Add(1) - 1) {
				d.plan = memPlan{}
				errs[k] = d.compareJob(jobs[k], fresh)
				results[k] = d.plan
			}
		})
	}
	wg.Wait()

	for k, job := range jobs {
		if errs[k] != nil {
			return fmt.Errorf("compare memory at %#x of %s: %w", job.addr, regionName(job.r), errs[k])
		}
		plan.merge(&results[k])
	}
	return nil
}

// regionName names a region as maps shows it: its bounds and its path.
func regionName(r *snapshot.Region) string {
	return strings.TrimSpace(fmt.Sprintf("%x-%x %s", r.Start, r.End, r.Path))
}

// diffJobs cuts the restorable regions of img inside spans into jobs of
// at most diffJobSize bytes.
func diffJobs(img *snapshot.Image, spans []span) []diffJob {
	var jobs []diffJob
	for i := range img.Regions {
		r := &img.Regions[i]
		if !contentRegion(r) {
			continue
		}
		for _, sp := range spans {
			start, end := max(sp.start, r.Start), min(sp.end, r.End)
			for addr := start; addr < end; addr += diffJobSize {
				jobs = append(jobs, diffJob{i: i, r: r, addr: addr, end: min(end, addr+diffJobSize)})
			}
		}
	}
	return jobs
}

// merge appends the changes of other, which lie above those of p. The
// chunks are taken over as they are, without copying their bytes.
func (p *memPlan) merge(other *memPlan) {
	p.writes = append(p.writes, other.writes...)
	for _, sp := range other.dontneed {
		p.dontneed = appendSpan(p.dontneed, sp)
	}
	p.safety = append(p.safety, other.safety...)
}

// compareJob compares one job, piece by piece.
func (d *memDiffer) compareJob(job diffJob, fresh bool) error {
	for addr := job.addr; addr < job.end; addr += diffPiece {
		if err := d.comparePiece(job, addr, min(job.end, addr+diffPiece), fresh); err != nil {
			return err
		}
	}
	return nil
}

// comparePiece compares the piece addr..end of a job.
func (d *memDiffer) comparePiece(job diffJob, addr, end uint64, fresh bool) error {
	pages := int((end - addr) / pageSize)
	off := addr - job.r.Start

	if err := d.src.mem.ReadRegion(job.i, d.saved[:end-addr], off); err != nil {
		return fmt.Errorf("read snapshot memory: %w", err)
	}
	markRuns(d.inRun[:pages], job.r.Runs, off)
	if err := d.readFlags(addr, d.flags[:pages]); err != nil {
		return err
	}
	if err := d.readCurrent(addr, pages, job.r.Inode != 0); err != nil {
		return err
	}
	d.comparePages(addr, pages, job.r.Inode == 0, fresh)
	return nil
}

// markRuns sets inRun[p] for each page p of a piece at offset off of its
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
	if _, err := d.src.pagemap.ReadAt(buf, int64(addr/pageSize*8)); err != nil {
		return fmt.Errorf("read pagemap of pid %d at %#x: %w", d.src.op.pid, addr, err)
	}
	for i := range flags {
		flags[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return nil
}

// readCurrent fills d.cur with the current bytes of the piece's pages that
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
		} else if err := d.src.op.readMemFast(addr+uint64(p)*pageSize, buf); err != nil {
			return err
		}
		p = q
	}
	return nil
}

func (d *memDiffer) holdsData(p int, file bool) bool {
	return holdsData(d.flags[p]) || file && d.inRun[p]
}

// comparePages plans the changes of one piece. A page in a saved run is
// written when its bytes differ. A page outside every run held no data of
// its own at capture: a private anonymous copy present now (pagemap bit 61
// clear) is dropped, so the page reads as zeros again or, in a file
// mapping, as the file.
func (d *memDiffer) comparePages(addr uint64, pages int, anon, fresh bool) {
	var writes, kept int
	for p := range pages {
		d.actions[p] = d.pageAction(p, anon, fresh)
		switch d.actions[p] {
		case writePage:
			writes++
			kept++
		case dropPage:
			kept++
		}
	}
	if fresh {
		kept = 0
	}

	plan := &d.plan
	write, safety := newPageCollector(writes), newPageCollector(kept)
	for p := range pages {
		page := addr + uint64(p)*pageSize
		cur := d.cur[p*pageSize : (p+1)*pageSize]
		switch d.actions[p] {
		case keepPage:
			continue
		case writePage:
			write.add(page, d.saved[p*pageSize:(p+1)*pageSize])
		default:
			plan.dontneed = appendSpan(plan.dontneed, span{page, page + pageSize})
		}
		if kept > 0 && d.actions[p] != dropZeroPage {
			safety.add(page, cur)
		}
	}
	plan.writes = append(plan.writes, write.chunks...)
	plan.safety = append(plan.safety, safety.chunks...)
}

// pageAction decides what restore does to page p of the piece; see
// comparePages.
func (d *memDiffer) pageAction(p int, anon, fresh bool) pageAction {
	cur := d.cur[p*pageSize : (p+1)*pageSize]
	switch {
	case d.inRun[p]:
		if bytes.Equal(cur, d.saved[p*pageSize:(p+1)*pageSize]) {
			return keepPage
		}
		return writePage
	case fresh || !holdsData(d.flags[p]) || d.flags[p]&pmFileShare != 0:
		return keepPage
	case anon && allZero(cur):
		return dropZeroPage
	}
	return dropPage
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// saveRemoved adds to plan.safety the private anonymous pages of the
// current layout inside spans, which restore is about to unmap. File
// pages need no copy: mapping the file again brings them back.
//
// Precondition: all threads stopped.
func (s *memSource) saveRemoved(spans []span, plan *memPlan) error {
	d := s.newDiffer()
	for _, sp := range spans {
		for addr := sp.start; addr < sp.end; addr += diffPiece {
			pages := int(min(sp.end-addr, diffPiece) / pageSize)
			if err := d.readFlags(addr, d.flags[:pages]); err != nil {
				return err
			}
			clear(d.inRun[:pages])
			if err := d.readCurrent(addr, pages, false); err != nil {
				return err
			}
			plan.safety = append(plan.safety, d.anonPages(addr, pages)...)
		}
	}
	return nil
}

// anonPages returns a copy of the private anonymous pages of the piece
// at addr whose current bytes d holds.
func (d *memDiffer) anonPages(addr uint64, pages int) []memChunk {
	var anon []int
	for p := range pages {
		if holdsData(d.flags[p]) && d.flags[p]&pmFileShare == 0 {
			anon = append(anon, p)
		}
	}
	c := newPageCollector(len(anon))
	for _, p := range anon {
		c.add(addr+uint64(p)*pageSize, d.cur[p*pageSize:(p+1)*pageSize])
	}
	return c.chunks
}
