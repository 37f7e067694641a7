package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// untouchedMappings are the kernel's own mappings: restore never unmaps,
// re-creates, protects, reads or writes them.
var untouchedMappings = map[string]bool{
	"[vdso]":        true,
	"[vvar]":        true,
	"[vvar_vclock]": true,
	"[vsyscall]":    true,
	"[uprobes]":     true,
}

// layoutEntry is a run of adjacent maps lines with the same protection and
// backing, which the kernel may split or merge at will.
type layoutEntry struct {
	start, end uint64
	perms      string
	offset     uint64 // file offset at start; meaningful when inode != 0
	dev        uint64 // unix.Mkdev(major, minor) as maps prints them
	inode      uint64
	path       string
	vmflags    []string // of the first maps line
	skipReason string   // reason the contents were not saved, "" when saved
}

func (e *layoutEntry) String() string {
	if e.path == "" {
		return fmt.Sprintf("%x-%x %s", e.start, e.end, e.perms)
	}
	return fmt.Sprintf("%x-%x %s %s", e.start, e.end, e.perms, e.path)
}

func (e *layoutEntry) untouched() bool { return untouchedMappings[e.path] }
func (e *layoutEntry) heap() bool      { return e.path == "[heap]" }
func (e *layoutEntry) stack() bool     { return e.path == "[stack]" }
func (e *layoutEntry) shared() bool    { return len(e.perms) == 4 && e.perms[3] == 's' }

// fileBacked reports whether the entry maps a file that can be opened by
// its path again: not anonymous, not deleted, not a memfd or SysV segment.
func (e *layoutEntry) fileBacked() bool {
	if e.inode == 0 || !strings.HasPrefix(e.path, "/") {
		return false
	}
	return !strings.HasSuffix(e.path, " (deleted)") && !strings.HasPrefix(e.path, "/memfd:") &&
		!strings.HasPrefix(e.path, "/SYSV")
}

// prot returns the PROT_* bits of the entry's permissions.
func (e *layoutEntry) prot() int {
	prot := unix.PROT_NONE
	if strings.IndexByte(e.perms, 'r') >= 0 {
		prot |= unix.PROT_READ
	}
	if strings.IndexByte(e.perms, 'w') >= 0 {
		prot |= unix.PROT_WRITE
	}
	if strings.IndexByte(e.perms, 'x') >= 0 {
		prot |= unix.PROT_EXEC
	}
	return prot
}

// fileOffset returns the file offset mapped at addr inside the entry.
func (e *layoutEntry) fileOffset(addr uint64) uint64 { return e.offset + (addr - e.start) }

// sameBacking reports whether a and b map the same object, so that where
// they overlap the same bytes show through (file entries must also map the
// same file offset at the same address).
func sameBacking(a, b *layoutEntry) bool {
	if a.dev != b.dev || a.inode != b.inode || a.shared() != b.shared() {
		return false
	}
	if a.inode == 0 {
		return a.path == b.path
	}
	// A mapped file stays the same while its device and inode do, even when
	// its path was renamed or deleted since: maps then shows "(deleted)".
	return a.offset-a.start == b.offset-b.start
}

// mergeLayout turns maps lines into layout entries sorted by address,
// merging neighbours that touch and share protection, backing and the
// reason their contents were skipped.
func mergeLayout(regions []snapshot.Region) []*layoutEntry {
	sorted := slices.SortedFunc(slices.Values(regions), func(a, b snapshot.Region) int {
		return cmp.Compare(a.Start, b.Start)
	})
	var out []*layoutEntry
	for i := range sorted {
		r := &sorted[i]
		e := &layoutEntry{
			start: r.Start, end: r.End, perms: r.Perms, offset: r.Offset,
			dev: unix.Mkdev(r.Major, r.Minor), inode: r.Inode, path: r.Path,
			vmflags: r.VmFlags,
		}
		if !r.Saved {
			e.skipReason = r.SkipReason
			if e.skipReason == "" {
				e.skipReason = "contents not saved"
			}
		}

		if n := len(out); n > 0 {
			last := out[n-1]
			if last.end == e.start && last.perms == e.perms && last.skipReason == e.skipReason && sameBacking(last, e) {
				last.end = e.end
				continue
			}
		}
		out = append(out, e)
	}
	return out
}

// span is a half-open address range [start, end).
type span struct{ start, end uint64 }

// layoutOp is one change of the layout: an munmap of [start, end), or an
// mmap or mprotect of it as entry describes.
type layoutOp struct {
	span
	entry *layoutEntry // the snapshot's entry; nil for an unmap
}

func (o layoutOp) String() string {
	if o.entry == nil {
		return fmt.Sprintf("%x-%x", o.start, o.end)
	}
	return fmt.Sprintf("%x-%x %s %s", o.start, o.end, o.entry.perms, o.entry.path)
}

// layoutPlan lists the changes that turn the current layout into the
// snapshot's, applied in this order: unmaps, the brk, creates, protects.
type layoutPlan struct {
	unmaps   []layoutOp
	creates  []layoutOp
	protects []layoutOp

	// fresh lists the snapshot ranges that are newly mapped after the
	// layout step (created, or heap grown back by brk): their contents
	// start as zeros or as the file's, not as the current process had them.
	fresh []span

	// kept lists the current ranges the layout step leaves mapped with the
	// same backing, whose contents restore compares with the snapshot.
	kept []span

	// removed lists the current ranges of private memory that the layout
	// step unmaps (heap shrunk by brk included): a safety copy keeps their
	// contents.
	removed []span

	leftAlone []string
}

// planLayout diffs the current layout against the snapshot's, both merged
// with mergeLayout. Kernel mappings are never touched and a grown stack is
// not shrunk. The heap is left to brk. Shared mappings created since the
// snapshot are left mapped and listed in leftAlone. A change that cannot
// be made is a *RejectError with EOPNOTSUPP naming the mapping.
func planLayout(cur, snap []*layoutEntry) (*layoutPlan, error) {
	plan := &layoutPlan{}
	for _, piece := range layoutPieces(cur, snap) {
		if err := plan.add(piece); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// layoutPiece is a range over which neither layout changes its entry.
type layoutPiece struct {
	span
	cur, snap *layoutEntry // nil where nothing is mapped
}

// layoutPieces cuts the address space at every boundary of both layouts
// and returns the pieces where at least one of them maps something.
func layoutPieces(cur, snap []*layoutEntry) []layoutPiece {
	var cuts []uint64
	for _, e := range slices.Concat(cur, snap) {
		cuts = append(cuts, e.start, e.end)
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)

	var pieces []layoutPiece
	for i := 0; i+1 < len(cuts); i++ {
		p := layoutPiece{span: span{cuts[i], cuts[i+1]}, cur: entryAt(cur, cuts[i]), snap: entryAt(snap, cuts[i])}
		if p.cur != nil || p.snap != nil {
			pieces = append(pieces, p)
		}
	}
	return pieces
}

// entryAt returns the entry of a sorted layout that contains addr, or nil.
func entryAt(layout []*layoutEntry, addr uint64) *layoutEntry {
	i, _ := slices.BinarySearchFunc(layout, addr, func(e *layoutEntry, a uint64) int {
		switch {
		case e.end <= a:
			return -1
		case e.start > a:
			return 1
		}
		return 0
	})
	if i < len(layout) && layout[i].start <= addr && addr < layout[i].end {
		return layout[i]
	}
	return nil
}

// keptSpans returns the ranges that the current layout and the snapshot's
// map with the same backing, for a restore that leaves the layout alone.
func keptSpans(cur, snap []*layoutEntry) []span {
	var kept []span
	for _, p := range layoutPieces(cur, snap) {
		if p.cur != nil && p.snap != nil && !p.cur.untouched() && sameBacking(p.cur, p.snap) {
			kept = appendSpan(kept, p.span)
		}
	}
	return kept
}

// add plans the change of one piece.
func (plan *layoutPlan) add(p layoutPiece) error {
	c, s := p.cur, p.snap
	switch {
	case (c != nil && c.untouched()) || (s != nil && s.untouched()):
		return nil

	case c != nil && s != nil && sameBacking(c, s):
		if c.perms != s.perms {
			plan.protects = appendOp(plan.protects, layoutOp{p.span, s})
		}
		plan.kept = appendSpan(plan.kept, p.span)
		return nil
	}

	if c != nil {
		if err := plan.remove(p.span, c, s); err != nil {
			return err
		}
	}
	if s != nil {
		return plan.create(p.span, s)
	}
	return nil
}

// remove plans the disappearance of the current entry c over sp, where the
// snapshot maps s (nil or another backing).
func (plan *layoutPlan) remove(sp span, c, s *layoutEntry) error {
	switch {
	case c.heap():
		// brk(saved) shrinks the heap.
		plan.removed = appendSpan(plan.removed, sp)
	case c.stack():
		// NOTE: a stack grown since the snapshot keeps its lower pages;
		// only the snapshot's range is restored.
	case c.shared() && s == nil:
		plan.leftAlone = append(plan.leftAlone, fmt.Sprintf("shared mapping %s created since the snapshot (left mapped)", c))
	case c.shared():
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("shared mapping %s now covers %x-%x where the snapshot has %s", c, sp.start, sp.end, s))
	default:
		plan.unmaps = appendOp(plan.unmaps, layoutOp{sp, nil})
		plan.removed = appendSpan(plan.removed, sp)
	}
	return nil
}

// create plans the return of the snapshot entry s over sp.
func (plan *layoutPlan) create(sp span, s *layoutEntry) error {
	switch {
	case s.heap():
		// brk(saved) grows the heap back.
		plan.fresh = appendSpan(plan.fresh, sp)
		return nil
	case s.stack():
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("stack range %x-%x of the snapshot is no longer mapped", sp.start, sp.end))
	case s.skipReason != "" && s.perms[:3] != "---":
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %s was unmapped since the snapshot and cannot be re-created (%s)", s, s.skipReason))
	case s.inode != 0 && !s.fileBacked():
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %s was unmapped since the snapshot and its object cannot be opened again", s))
	case s.shared() && s.inode == 0:
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("shared anonymous mapping %s was unmapped since the snapshot and cannot be re-created", s))
	}
	plan.creates = appendOp(plan.creates, layoutOp{sp, s})
	plan.fresh = appendSpan(plan.fresh, sp)
	return nil
}

// appendOp appends op, extending the last op instead when op continues it
// with the same entry.
func appendOp(ops []layoutOp, op layoutOp) []layoutOp {
	if n := len(ops); n > 0 && ops[n-1].end == op.start && ops[n-1].entry == op.entry {
		ops[n-1].end = op.end
		return ops
	}
	return append(ops, op)
}

// appendSpan appends sp, extending the last span when sp continues it.
func appendSpan(spans []span, sp span) []span {
	if n := len(spans); n > 0 && spans[n-1].end == sp.start {
		spans[n-1].end = sp.end
		return spans
	}
	return append(spans, sp)
}

// mmapFlags returns the MAP_* flags that re-create the entry at its
// address without replacing anything mapped there meanwhile.
func (e *layoutEntry) mmapFlags() int {
	flags := unix.MAP_FIXED_NOREPLACE
	if e.shared() {
		flags |= unix.MAP_SHARED
	} else {
		flags |= unix.MAP_PRIVATE
	}
	if e.inode == 0 {
		flags |= unix.MAP_ANONYMOUS
	}
	// NOTE: of the smaps flags only "nr" and "gd" are re-applied to a
	// re-created mapping; madvise settings and anon names are not.
	if slices.Contains(e.vmflags, "nr") {
		flags |= unix.MAP_NORESERVE
	}
	if slices.Contains(e.vmflags, "gd") {
		flags |= unix.MAP_GROWSDOWN
	}
	return flags
}

// openFlags returns the open(2) flags for the file of a re-created
// file-backed entry: read-write only for a writable shared mapping, since
// a private mapping never writes the file.
func (e *layoutEntry) openFlags() int {
	if e.shared() && e.prot()&unix.PROT_WRITE != 0 {
		return unix.O_RDWR | unix.O_CLOEXEC
	}
	return unix.O_RDONLY | unix.O_CLOEXEC
}
