package engine

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// changedSince returns the ranges of the current mappings cur whose
// contents may differ from img, when img is the tracker's base: the pages
// written since the base (dropped pages count as written) and every
// mapping that is not tracked. It reports false when the op has no
// tracker with img as its base, and restore then compares everything.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) changedSince(img *snapshot.Image, cur []snapshot.Region) ([]span, bool, error) {
	t := op.tracker
	if t == nil || !t.started() {
		return nil, false, nil
	}
	t.mu.Lock()
	base := t.baseImage
	t.mu.Unlock()
	if base == nil || !base.Captured.Equal(img.Captured) || base.Process != img.Process {
		return nil, false, nil
	}

	vec := make([]pageRegion, scanVecLen)
	var changed []span
	for i := range cur {
		r := &cur[i]
		k, found := slices.BinarySearchFunc(img.Regions, r.Start, func(b snapshot.Region, start uint64) int {
			return cmp.Compare(b.Start, start)
		})
		if !found || !sameMapping(&img.Regions[k], r) || !img.Regions[k].Saved || !t.tracked(r) {
			changed = appendSpan(changed, span{r.Start, r.End})
			continue
		}
		spans, err := t.writtenIn(r, vec)
		if errors.Is(err, unix.EPERM) || err == nil && t.claim(r) != nil {
			// A new mapping, or one another userfaultfd holds.
			changed = appendSpan(changed, span{r.Start, r.End})
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("scan written pages of pid %d: %w", op.pid, err)
		}
		for _, sp := range spans {
			changed = appendSpan(changed, sp)
		}
	}
	if t.pre != nil {
		changed = unionSpans(append(changed, t.pre.written...))
	}
	changed = unionSpans(append(changed, t.carried...))
	return changed, true, nil
}

// runSpans returns the runs of r as address ranges.
func runSpans(r *snapshot.Region) []span {
	spans := make([]span, 0, len(r.Runs))
	for _, run := range r.Runs {
		spans = appendSpan(spans, span{r.Start + run.Off, r.Start + run.Off + run.Len})
	}
	return spans
}

// subtractSpans returns the parts of the sorted ranges a that no range of
// the sorted ranges b covers.
func subtractSpans(a, b []span) []span {
	var out []span
	j := 0
	for _, sp := range a {
		pos := sp.start
		for j < len(b) && b[j].end <= pos {
			j++
		}
		for k := j; k < len(b) && b[k].start < sp.end; k++ {
			if b[k].start > pos {
				out = append(out, span{pos, b[k].start})
			}
			pos = max(pos, b[k].end)
		}
		if pos < sp.end {
			out = append(out, span{pos, sp.end})
		}
	}
	return out
}

// trackRestored write-protects the memory again after a full restore, so
// that the next capture or rollback counts writes from the restored state,
// and records img as pending for Tracker.SetBase. A partial restore
// leaves the tracking as it was: the pages it wrote count as written, so
// the base stays valid.
//
// Precondition: called on the op's locked thread; all threads stopped;
// the restore succeeded.
func (op *Op) trackRestored(img *snapshot.Image, parts restoreParts) {
	t := op.tracker
	if t == nil || !t.started() || !parts.full() {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.base, t.baseImage, t.pending = "", nil, nil

	raw, err := readProcFile(op.pid, "maps")
	var regions []snapshot.Region
	if err == nil {
		regions, err = parseMaps(raw)
	}
	if err == nil {
		err = t.protect(op.log, op.withoutScratch(regions), img, nil)
	}
	if err != nil {
		t.pending = nil
		op.log.Warn("write tracking failed after the restore, the next capture is full", "err", err)
	}
}
