package engine

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// deltaLimit is the most bytes of written pages a capture copies while the
// process is frozen. With more written since the base, the capture is a
// full copy-on-write one, whose freeze does not grow with the writes.
const deltaLimit = 64 << 20

// scanVecLen is the number of ranges one PAGEMAP_SCAN call returns at most.
const scanVecLen = 4096

// captureMemoryTracked is the memory step of CaptureCOW for an op with a
// tracker. It starts the tracking on the first capture. When the tracker
// has a base, it reads only the pages written since, and marks the other
// runs Base. Without a base, or when too much was written, it makes the
// copy-on-write clone as an untracked capture does. Either way it then
// write-protects the memory again, so the next capture finds the writes
// since this one. A failure of the tracking itself never fails
// the capture: the tracker forgets its base and the next capture is full.
//
// Precondition: called on the op's locked thread; all threads stopped;
// img.Regions read by captureMapsOnly.
func (op *Op) captureMemoryTracked(img *snapshot.Image) (cowClone, error) {
	t := op.tracker
	t.mu.Lock()
	defer t.mu.Unlock()

	if !t.started() && !t.failed {
		if err := op.startTracking(t); err != nil {
			t.failed = true
			op.log.Debug("write tracking unavailable, every capture is full", "err", err)
		} else {
			op.protectLate = pfnsVisible()
		}
	}

	delta := false
	var protected map[uint64][]span
	if t.started() && t.baseImage != nil {
		var err error
		if protected, delta, err = op.captureDelta(img, t); err != nil {
			return cowClone{}, err
		}
	}
	var clone cowClone
	if !delta {
		var err error
		if clone, err = op.captureMemoryCOW(img); err != nil {
			return cowClone{}, err
		}
	}

	op.protectLate = op.protectLate && clone.valid
	t.base, t.baseImage, t.pending = "", nil, nil
	if t.started() && !op.protectLate {
		if err := t.protect(op.log, img.Regions, img, protected); err != nil {
			t.pending = nil
			op.log.Warn("write tracking failed, the next capture is full", "err", err)
		}
	}
	return clone, nil
}

// captureDelta fills the regions of img relative to the tracker's base.
// Pages written since, and pages of mappings not tracked, are copied into
// Run.Data, and the other saved pages become runs marked Base. It reports
// false, leaving img as it was, when more than deltaLimit bytes would be
// copied. It returns, by start, the tracked regions and the pages in each
// that the scan found written, the only ones protect must protect again.
//
// Precondition: called on the op's locked thread; all threads stopped;
// t.mu held; t started with a base.
func (op *Op) captureDelta(img *snapshot.Image, t *Tracker) (map[uint64][]span, bool, error) {
	regions := slices.Clone(img.Regions)
	bases, unmatched := matchBase(regions, t.baseImage.Regions)
	if unmatched {
		if err := op.addVmFlagsWhere(regions, bases); err != nil {
			return nil, false, err
		}
	}

	vec := make([]pageRegion, scanVecLen)
	protected := map[uint64][]span{}
	var copied uint64
	for i := range regions {
		r := &regions[i]
		if bases[i] == nil {
			r.SkipReason = skipReason(r)
			r.Saved = r.SkipReason == ""
		}
		if !r.Saved {
			continue
		}
		n, fresh, tracked, err := t.scanRegion(r, bases[i], vec)
		if err != nil {
			return nil, false, fmt.Errorf("scan written pages of pid %d: %w", op.pid, err)
		}
		if copied += n; copied > deltaLimit {
			op.log.Debug("too many pages written for a delta capture", "limit", deltaLimit)
			return nil, false, nil
		}
		if tracked {
			protected[r.Start] = fresh
		}
	}

	if err := op.copyWritten(regions); err != nil {
		return nil, false, err
	}
	img.Regions, img.Base, img.BaseCaptured = regions, t.base, t.baseImage.Captured
	return protected, true, nil
}

// matchBase finds for each region the base region with the same bounds,
// protection and backing, whose VmFlags, Saved and SkipReason it takes
// over. It reports whether some region has no match.
func matchBase(regions, base []snapshot.Region) ([]*snapshot.Region, bool) {
	bases := make([]*snapshot.Region, len(regions))
	unmatched := false
	for i := range regions {
		r := &regions[i]
		k, found := slices.BinarySearchFunc(base, r.Start, func(b snapshot.Region, start uint64) int {
			return cmp.Compare(b.Start, start)
		})
		if found && sameMapping(&base[k], r) {
			bases[i] = &base[k]
			r.VmFlags, r.Saved, r.SkipReason = base[k].VmFlags, base[k].Saved, base[k].SkipReason
			continue
		}
		unmatched = true
	}
	return bases, unmatched
}

// sameMapping reports whether a and b are the same mapping as maps shows
// it.
func sameMapping(a, b *snapshot.Region) bool {
	return a.Start == b.Start && a.End == b.End && a.Perms == b.Perms && a.Offset == b.Offset &&
		a.Major == b.Major && a.Minor == b.Minor && a.Inode == b.Inode && a.Path == b.Path
}

// addVmFlagsWhere reads smaps and sets the VmFlags of the regions that
// have no base. Reading smaps walks every page table, so a delta capture
// pays for it only when the layout changed since the base.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) addVmFlagsWhere(regions []snapshot.Region, bases []*snapshot.Region) error {
	now, _, err := readMaps(op.pid)
	if err != nil {
		return err
	}
	for i := range regions {
		if bases[i] != nil {
			continue
		}
		if c := containing(now, &regions[i]); c != nil {
			regions[i].VmFlags = c.VmFlags
		}
	}
	return nil
}

// scanRegion sets the runs of r to the pages Capture saves: present or
// swapped, without the file pages of a private file mapping. It returns
// the bytes of the runs to copy now.
//
// When r is tracked and base (its region in the base image) was saved,
// three kinds of runs result. Pages the base saved and not written since
// become runs marked Base. Pages Precopy copied and not written since
// carry its bytes. Only the other written pages are looked up in the
// pagemap, to be copied now. It also returns whether r is tracked and the
// pages of r the kernel reported written, which need protecting again.
//
// Precondition: t started; the process frozen.
func (t *Tracker) scanRegion(r *snapshot.Region, base *snapshot.Region, vec []pageRegion) (uint64, []span, bool, error) {
	var written, fresh, precopiedSpans []span
	var precopied []snapshot.Run
	tracked := base != nil && base.Saved && t.tracked(r)
	if tracked {
		var err error
		written, err = t.writtenIn(r, vec)
		switch {
		case errors.Is(err, unix.EPERM):
			tracked = false // a new mapping where a tracked one was
		case err != nil:
			return 0, nil, false, err
		case t.claim(r) != nil:
			tracked = false // registered by another userfaultfd
		}
		fresh = written
	}
	if !tracked {
		written = []span{{r.Start, r.End}}
	} else if t.carried != nil {
		carried := intersectSpans(t.carried, []span{{r.Start, r.End}})
		written = unionSpans(append(written, carried...))
	}
	if tracked && t.pre != nil {
		earlier := intersectSpans(t.pre.written, []span{{r.Start, r.End}})
		if t.pre.pages == nil {
			written = unionSpans(append(written, earlier...))
		} else {
			precopiedSpans = subtractSpans(earlier, written)
			precopied = chunkRuns(t.pre.pages, precopiedSpans, r.Start)
		}
	}

	var runs []snapshot.Run
	for _, sp := range written {
		var err error
		if runs, err = selectedRuns(runs, t.pagemap, r.Start, sp, anonOnly(r)); err != nil {
			return 0, nil, false, err
		}
	}
	var total uint64
	for _, run := range runs {
		total += run.Len
	}
	if tracked {
		changed := unionSpans(append(slices.Clone(written), precopiedSpans...))
		runs = mergeRuns(mergeRuns(runs, precopied), cleanRuns(base, changed))
	}
	r.Runs = slices.Clip(runs)
	return total, fresh, tracked, nil
}

// chunkRuns returns the parts of chunks inside spans (both sorted) as runs
// relative to base that carry their bytes.
func chunkRuns(chunks []chunk, spans []span, base uint64) []snapshot.Run {
	var runs []snapshot.Run
	j := 0
	for _, c := range chunks {
		end := c.addr + uint64(len(c.data))
		for j < len(spans) && spans[j].end <= c.addr {
			j++
		}
		for k := j; k < len(spans) && spans[k].start < end; k++ {
			from, to := max(c.addr, spans[k].start), min(end, spans[k].end)
			if from < to {
				runs = append(runs, snapshot.Run{Off: from - base, Len: to - from, Data: c.data[from-c.addr : to-c.addr : to-c.addr]})
			}
		}
	}
	return runs
}

// writtenIn returns the pages of r written since the last write
// protection, with the kernel's fast path for that one category. Pages
// dropped since count as written. The error wraps EPERM when r is not
// registered for asynchronous write protection. Otherwise the caller
// checks with claim that the tracker's own userfaultfd is the one
// registered.
//
// Precondition: t started; the process frozen.
func (t *Tracker) writtenIn(r *snapshot.Region, vec []pageRegion) ([]span, error) {
	var written []span
	req := scanRequest{start: r.Start, end: r.End, flags: pmScanCheckWPAsync, mask: pageIsWritten, ret: pageIsWritten}
	err := pagemapScan(int(t.pagemap.Fd()), req, vec, func(pr pageRegion) {
		written = appendSpan(written, span{pr.Start, pr.End})
	})
	return written, err
}

// selectedRuns appends to runs, relative to base, the pages of sp that
// Capture saves, read from the pagemap: present or swapped pages, without
// file pages when anonOnly is set.
func selectedRuns(runs []snapshot.Run, pagemap *os.File, base uint64, sp span, anonOnly bool) ([]snapshot.Run, error) {
	first, pages := (sp.start-base)/pageSize, (sp.end-sp.start)/pageSize
	buf := make([]byte, min(pages, pagemapChunk)*8)
	for done := uint64(0); done < pages; done += pagemapChunk {
		n := min(pages-done, pagemapChunk)
		entries := buf[:n*8]
		if _, err := pagemap.ReadAt(entries, int64((sp.start/pageSize+done)*8)); err != nil {
			return nil, fmt.Errorf("read pagemap of %#x-%#x: %w", sp.start, sp.end, err)
		}
		runs = pageRuns(runs, entries, first+done, anonOnly)
	}
	return runs, nil
}

// anonOnly reports whether Capture saves only the anonymous pages of r:
// in a private file mapping, pages never written equal the file.
func anonOnly(r *snapshot.Region) bool { return r.Inode != 0 && !r.Shared() }

// cleanRuns returns the runs of base without the written ranges, marked
// Base: the pages the base saved that hold the same bytes now.
func cleanRuns(base *snapshot.Region, written []span) []snapshot.Run {
	saved := runSpans(base)
	var runs []snapshot.Run
	for _, sp := range subtractSpans(saved, written) {
		runs = append(runs, snapshot.Run{Off: sp.start - base.Start, Len: sp.end - sp.start, Base: true})
	}
	return runs
}

// mergeRuns merges two sorted lists of disjoint runs into one.
func mergeRuns(a, b []snapshot.Run) []snapshot.Run {
	out := make([]snapshot.Run, 0, len(a)+len(b))
	for i, j := 0, 0; i < len(a) || j < len(b); {
		if j == len(b) || i < len(a) && a[i].Off < b[j].Off {
			out = appendRun(out, a[i])
			i++
		} else {
			out = appendRun(out, b[j])
			j++
		}
	}
	return out
}

// appendRun appends run, or lengthens the last run when run continues it
// with the same mark and neither carries bytes.
func appendRun(runs []snapshot.Run, run snapshot.Run) []snapshot.Run {
	if n := len(runs); n > 0 && runs[n-1].Base == run.Base && runs[n-1].Off+runs[n-1].Len == run.Off &&
		runs[n-1].Data == nil && run.Data == nil {
		runs[n-1].Len += run.Len
		return runs
	}
	return append(runs, run)
}

// copyWritten copies every run not marked Base and without bytes yet into
// Run.Data, with process_vm_readv batches spread over the CPUs. A batch that
// cannot be read whole (a page without read permission) is read again
// through /proc/PID/mem.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) copyWritten(regions []snapshot.Region) error {
	var chunks []chunk
	for i := range regions {
		r := &regions[i]
		var total uint64
		for _, run := range r.Runs {
			if !run.Base && run.Data == nil {
				total += run.Len
			}
		}
		buf := make([]byte, total)
		for k := range r.Runs {
			run := &r.Runs[k]
			if run.Base || run.Data != nil {
				continue
			}
			run.Data, buf = buf[:run.Len:run.Len], buf[run.Len:]
			chunks = append(chunks, chunk{addr: r.Start + run.Off, data: run.Data})
		}
	}

	for _, c := range readvParallel(op.pid, chunks) {
		if err := op.readMem(c.addr, c.data); err != nil {
			return fmt.Errorf("copy written memory of pid %d: %w", op.pid, err)
		}
	}
	return nil
}
