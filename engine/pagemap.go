package engine

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent   = 1 << 63
	pmSwapped   = 1 << 62
	pmFileShare = 1 << 61 // file page or shared anonymous page

	// pmSwapType is the swap type field of a non-present entry, which the
	// kernel shows to readers with CAP_SYS_ADMIN. Type 31 is a pte marker
	// (SWP_PTE_MARKER), such as the one write tracking leaves on an empty
	// page: no data, although the entry reads as swapped.
	pmSwapType = 0x1f
	swpMarker  = 0x1f
)

// holdsData reports whether pagemap entry e is a page with data of its
// own: present, or swapped out.
func holdsData(e uint64) bool {
	return e&pmPresent != 0 || e&pmSwapped != 0 && e&pmSwapType != swpMarker
}

// pagemapChunk is how many pagemap entries are read at once, so that a
// huge reserved region costs bounded memory.
const pagemapChunk = 64 << 10

// pageRuns appends to runs the pages of entries (one 8-byte pagemap entry
// per page, the first at page index first) that hold data worth saving,
// coalesced into page-aligned runs. A page is saved when it is present or
// swapped (see holdsData). With anonOnly set, pages that are still file pages (bit 61) are
// skipped, because they equal the file.
func pageRuns(runs []snapshot.Run, entries []byte, first uint64, anonOnly bool) []snapshot.Run {
	for i := 0; i+8 <= len(entries); i += 8 {
		e := binary.LittleEndian.Uint64(entries[i:])
		if !holdsData(e) || anonOnly && e&pmFileShare != 0 {
			continue
		}

		off := (first + uint64(i/8)) * pageSize
		if n := len(runs); n > 0 && runs[n-1].Off+runs[n-1].Len == off {
			runs[n-1].Len += pageSize
			continue
		}
		runs = append(runs, snapshot.Run{Off: off, Len: pageSize})
	}
	return runs
}

// regionRuns reads the pagemap entries of region r and returns the runs of
// pages to save, relative to r.Start.
//
// Precondition: all threads stopped.
func regionRuns(pagemap *os.File, r *snapshot.Region) ([]snapshot.Run, error) {
	anonOnly := r.Inode != 0 && !r.Shared()
	pages := r.Len() / pageSize
	buf := make([]byte, min(pages, pagemapChunk)*8)

	var runs []snapshot.Run
	for first := uint64(0); first < pages; first += pagemapChunk {
		n := min(pages-first, pagemapChunk)
		entries := buf[:n*8]
		if _, err := pagemap.ReadAt(entries, int64((r.Start/pageSize+first)*8)); err != nil {
			return nil, fmt.Errorf("read pagemap of %#x-%#x: %w", r.Start, r.End, err)
		}
		runs = pageRuns(runs, entries, first, anonOnly)
	}
	return slices.Clip(runs), nil
}

// skipReason returns why region r must not be read, or "" when it may be.
// Skipped are kernel mappings that are not ordinary memory, userfaultfd
// ranges in missing or minor mode (a read of an empty page would wait for
// the frozen handler), shadow stacks, device and raw PFN mappings, and
// secret memory, which only its owner can read. Write protection ("uw")
// never makes a read wait, so those ranges are read, the write tracker's
// own among them.
func skipReason(r *snapshot.Region) string {
	switch r.Path {
	case "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]":
		return "kernel mapping " + r.Path
	}
	if len(r.Path) >= 10 && r.Path[:10] == "/secretmem" {
		return "secret memory"
	}
	reasons := map[string]string{
		"um": "userfaultfd range",
		"ui": "userfaultfd range",
		"ss": "shadow stack",
		"io": "device memory (VM_IO)",
		"pf": "raw PFN mapping",
	}
	for _, f := range r.VmFlags {
		if reason, ok := reasons[f]; ok {
			return reason
		}
	}
	return ""
}
