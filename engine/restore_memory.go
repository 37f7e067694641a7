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

// memSource is the pair of memories restore compares: the target's,
// through its pagemap and memory files, and the snapshot's. Its methods may
// be called from several goroutines at once.
type memSource struct {
	op      *Op
	pagemap *os.File

	// mu serializes reads of mem, which need not be safe for concurrent use.
	mu  sync.Mutex
	mem snapshot.MemoryReader
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

func (s *memSource) readSnapshot(i int, p []byte, off uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem.ReadRegion(i, p, off)
}

// memDiffer compares one chunk at a time, page by page, and adds what it
// finds to its plan. Each goroutine has its own.
type memDiffer struct {
	src  *memSource
	plan memPlan

	cur, saved []byte   // one chunk of current and snapshot bytes
	flagBytes  []byte   // pagemap entries of the chunk as read
	flags      []uint64 // the same, decoded
	inRun      []bool   // whether each page of the chunk is in a saved run
}

func (s *memSource) newDiffer() *memDiffer {
	return &memDiffer{
		src: s, cur: make([]byte, diffChunk), saved: make([]byte, diffChunk),
		flagBytes: make([]byte, diffChunk/pageSize*8),
		flags:     make([]uint64, diffChunk/pageSize), inRun: make([]bool, diffChunk/pageSize),
	}
}

// contentRegion reports whether restore rolls back the contents of a
// snapshot region: private, saved, and not a kernel mapping.
func contentRegion(r *snapshot.Region) bool {
	return r.Saved && !r.Shared() && !untouchedMappings[r.Path]
}

// diffJob is one chunk of snapshot region i (r) to compare.
type diffJob struct {
	i         int
	r         *snapshot.Region
	addr, end uint64
}

// diffRegions compares every restorable snapshot region over the parts
// that spans cover, in chunks spread over one goroutine per CPU, and adds
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
				errs[k] = d.compareChunk(jobs[k], fresh)
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

// diffJobs cuts the restorable regions of img inside spans into chunks.
func diffJobs(img *snapshot.Image, spans []span) []diffJob {
	var jobs []diffJob
	for i := range img.Regions {
		r := &img.Regions[i]
		if !contentRegion(r) {
			continue
		}
		for _, sp := range spans {
			start, end := max(sp.start, r.Start), min(sp.end, r.End)
			for addr := start; addr < end; addr += diffChunk {
				jobs = append(jobs, diffJob{i: i, r: r, addr: addr, end: min(end, addr+diffChunk)})
			}
		}
	}
	return jobs
}

// merge appends the changes of other, which lie above those of p.
func (p *memPlan) merge(other *memPlan) {
	for _, c := range other.writes {
		p.writes = addChunk(p.writes, c.addr, c.data)
	}
	for _, sp := range other.dontneed {
		p.dontneed = appendSpan(p.dontneed, sp)
	}
	for _, c := range other.safety {
		p.safety = addChunk(p.safety, c.addr, c.data)
	}
}

// compareChunk compares one chunk.
func (d *memDiffer) compareChunk(job diffJob, fresh bool) error {
	n := job.end - job.addr
	pages := int(n / pageSize)
	off := job.addr - job.r.Start

	if err := d.src.readSnapshot(job.i, d.saved[:n], off); err != nil {
		return fmt.Errorf("read snapshot memory: %w", err)
	}
	markRuns(d.inRun[:pages], job.r.Runs, off)
	if err := d.readFlags(job.addr, d.flags[:pages]); err != nil {
		return err
	}
	if err := d.readCurrent(job.addr, pages, job.r.Inode != 0); err != nil {
		return err
	}
	d.comparePages(job.addr, pages, job.r.Inode == 0, fresh)
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
	if _, err := d.src.pagemap.ReadAt(buf, int64(addr/pageSize*8)); err != nil {
		return fmt.Errorf("read pagemap of pid %d at %#x: %w", d.src.op.pid, addr, err)
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
		} else if err := d.src.op.readMemFast(addr+uint64(p)*pageSize, buf); err != nil {
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
	plan := &d.plan
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

// saveRemoved adds to plan.safety the private anonymous pages of the
// current layout inside spans, which restore is about to unmap. File
// pages need no copy: mapping the file again brings them back.
//
// Precondition: all threads stopped.
func (s *memSource) saveRemoved(spans []span, plan *memPlan) error {
	d := s.newDiffer()
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
					plan.safety = addChunk(plan.safety, page, d.cur[p*pageSize:(p+1)*pageSize])
				}
			}
		}
	}
	return nil
}

// readMemFast fills p from the target's memory at addr with one
// process_vm_readv, which is faster than /proc/PID/mem, and falls back to
// readMem where that fails (pages without read permission, for example).
// Unlike readMem it may run on any goroutine once /proc/PID/mem is open.
//
// Precondition: all threads stopped; op.openMem succeeded.
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
