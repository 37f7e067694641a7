package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// restoreParts selects what a restore brings back. A full restore selects
// everything.
type restoreParts struct {
	layout    bool   // mappings, protections and brk, with the contents of re-created mappings
	memory    bool   // contents of private memory except thread stacks
	stacks    bool   // contents of the mappings that hold a thread's stack
	registers bool   // general registers and xstate of every thread
	fds       bool   // descriptor table and offsets
	signals   bool   // signal actions, pending signals and timers, and each thread's mask and alternate stack
	regions   []span // contents of these ranges, named one by one
}

// fullRestore selects every part.
var fullRestore = restoreParts{layout: true, memory: true, stacks: true, registers: true, fds: true, signals: true}

// partUsage lists the part words parseParts accepts.
const partUsage = "memory, layout, threads, fds, signals, START-END or a mapping name"

// parseParts parses the PART words of a restore: nil selects everything.
// A word that names nothing in img is a *RejectError with EINVAL.
func parseParts(words []string, img *snapshot.Image) (restoreParts, error) {
	if words == nil {
		return fullRestore, nil
	}
	var p restoreParts
	for _, w := range words {
		switch w {
		case "memory":
			p.memory = true
		case "layout":
			p.layout = true
		case "threads":
			p.registers, p.stacks = true, true
		case "fds":
			p.fds = true
		case "signals":
			p.signals = true
		default:
			spans, err := regionSpans(w, img)
			if err != nil {
				return p, err
			}
			p.regions = append(p.regions, spans...)
		}
	}
	return p, nil
}

// regionSpans returns the ranges a region word selects: START-END in hex
// as maps prints it, or every saved mapping whose path is the word.
func regionSpans(word string, img *snapshot.Image) ([]span, error) {
	if sp, ok := parseSpan(word); ok {
		for i := range img.Regions {
			r := &img.Regions[i]
			if r.Start < sp.end && sp.start < r.End {
				return []span{sp}, nil
			}
		}
		return nil, reject(unix.EINVAL, fmt.Sprintf("part %s: no mapping of the snapshot lies in that range", word))
	}

	var spans []span
	for _, r := range img.Regions {
		if r.Path == word {
			spans = append(spans, span{r.Start, r.End})
		}
	}
	if len(spans) == 0 {
		return nil, reject(unix.EINVAL, fmt.Sprintf("unknown part %q: want %s", word, partUsage))
	}
	return spans, nil
}

// parseSpan parses START-END in hex, page aligned, START below END.
func parseSpan(word string) (span, bool) {
	lo, hi, ok := strings.Cut(word, "-")
	if !ok {
		return span{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || start >= end || start%pageSize != 0 || end%pageSize != 0 {
		return span{}, false
	}
	return span{start, end}, true
}

// full reports whether every part is selected.
func (p restoreParts) full() bool {
	return p.layout && p.memory && p.stacks && p.registers && p.fds && p.signals
}

// contentSpans returns, sorted and merged, the ranges of img whose
// contents the parts select.
func (p restoreParts) contentSpans(img *snapshot.Image) []span {
	var spans []span
	for i := range img.Regions {
		r := &img.Regions[i]
		if !contentRegion(r) {
			continue
		}
		stack := holdsStack(r, img)
		if (p.memory && !stack) || (p.stacks && stack) {
			spans = append(spans, span{r.Start, r.End})
		}
	}
	return unionSpans(append(spans, p.regions...))
}

// holdsStack reports whether a region is a stack: [stack], or a mapping
// that holds the stack pointer of one of img's threads.
func holdsStack(r *snapshot.Region, img *snapshot.Image) bool {
	if r.Path == "[stack]" {
		return true
	}
	for _, t := range img.Threads {
		if r.Start <= t.Regs.Rsp && t.Regs.Rsp < r.End {
			return true
		}
	}
	return false
}

// unionSpans sorts spans and merges those that overlap or touch.
func unionSpans(spans []span) []span {
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	var out []span
	for _, sp := range spans {
		if n := len(out); n > 0 && sp.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, sp.end)
			continue
		}
		out = append(out, sp)
	}
	return out
}

// intersectSpans returns the ranges covered by both a and b, each sorted
// and without overlaps.
func intersectSpans(a, b []span) []span {
	var out []span
	for i, j := 0, 0; i < len(a) && j < len(b); {
		start, end := max(a[i].start, b[j].start), min(a[i].end, b[j].end)
		if start < end {
			out = append(out, span{start, end})
		}
		if a[i].end < b[j].end {
			i++
		} else {
			j++
		}
	}
	return out
}

// leftOut lists, for the report, the parts a partial restore did not
// select.
func (p restoreParts) leftOut() []string {
	parts := []struct {
		selected bool
		what     string
	}{
		{p.layout, "layout (mappings, protections, brk)"},
		{p.memory, "memory contents"},
		{p.stacks, "thread stacks"},
		{p.registers, "registers and xstate"},
		{p.fds, "descriptors"},
		{p.signals, "signal actions, masks, alternate stacks, pending signals and timers"},
	}
	if len(p.regions) > 0 {
		parts[1].what = "memory contents outside the named regions"
	}
	var out []string
	for _, part := range parts {
		if !part.selected {
			out = append(out, part.what+": not part of this partial restore")
		}
	}
	return out
}

// checkRegionsKept rejects with EOPNOTSUPP a region part whose saved
// mappings are not all still mapped as they were (kept), because without
// the layout part a restore cannot map them again and would skip them.
func checkRegionsKept(regions []span, snap []*layoutEntry, kept []span) error {
	var saved []span
	for _, e := range snap {
		saved = append(saved, span{e.start, e.end})
	}
	saved = unionSpans(saved)

	for _, sp := range regions {
		need := intersectSpans([]span{sp}, saved)
		have := intersectSpans(need, kept)
		if spanBytes(have) != spanBytes(need) {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("part %x-%x: the region is no longer mapped as in the snapshot; add the part layout to map it again",
				sp.start, sp.end))
		}
	}
	return nil
}

// spanBytes returns the number of bytes the spans cover.
func spanBytes(spans []span) uint64 {
	var n uint64
	for _, sp := range spans {
		n += sp.end - sp.start
	}
	return n
}
