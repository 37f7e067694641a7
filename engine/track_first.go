package engine

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/ckptfs/ckptfs/snapshot"
)

// pmFrame holds the page frame number of a present pagemap entry, or the
// swap type and offset of a swapped one.
const pmFrame = 1<<55 - 1

// protectAfterThaw write-protects the memory for a first tracked capture,
// after the thaw, so that the freeze does not pay for protecting every
// page (several ms per GiB). Pages the process writes between the freeze
// and this protection do not show as written afterwards. The copy-on-write
// clone, which still holds the memory as it was at the freeze, finds
// them: such a page no longer shares its frame with the clone, because
// the first write after the fork gave the process a copy. Those pages are
// kept in the tracker's carried set, which the next capture reads.
//
// A failure leaves the tracker without a pending image, so the caller's
// SetBase does nothing and the next capture is full.
func (op *Op) protectAfterThaw(img *snapshot.Image, clonePID int) {
	op.protectLate = false
	t := op.tracker
	t.mu.Lock()
	defer t.mu.Unlock()

	err := t.protect(op.log, img.Regions, img, nil)
	var carried []span
	if err == nil {
		carried, err = changedSinceFork(t.pagemap, clonePID, t.ranges)
	}
	if err != nil {
		t.pending = nil
		op.log.Warn("write tracking failed, the next capture is full", "err", err)
		return
	}
	t.carried = carried
}

// changedSinceFork returns the pages of ranges, in the process whose
// pagemap is given, that may differ from the same pages of its clone
// clonePID: those that do not map the same frame (or the same swap slot)
// in both, and those present in one only. A page the process wrote since
// the fork has its own copy, so it is among them.
func changedSinceFork(pagemap *os.File, clonePID int, ranges []trackedRange) ([]span, error) {
	clone, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", clonePID))
	if err != nil {
		return nil, fmt.Errorf("open pagemap of clone %d: %w", clonePID, err)
	}
	defer clone.Close()

	mine := make([]byte, pagemapChunk*8)
	theirs := make([]byte, pagemapChunk*8)
	var changed []span
	for _, rg := range ranges {
		for start := rg.start; start < rg.end; start += pagemapChunk * pageSize {
			n := min((rg.end-start)/pageSize, pagemapChunk)
			a, b := mine[:n*8], theirs[:n*8]
			if _, err := pagemap.ReadAt(a, int64(start/pageSize*8)); err != nil {
				return nil, fmt.Errorf("read pagemap at %#x: %w", start, err)
			}
			if _, err := clone.ReadAt(b, int64(start/pageSize*8)); err != nil {
				return nil, fmt.Errorf("read pagemap of clone %d at %#x: %w", clonePID, start, err)
			}
			for i := uint64(0); i < n; i++ {
				p, c := binary.LittleEndian.Uint64(a[i*8:]), binary.LittleEndian.Uint64(b[i*8:])
				if !sameSinceFork(p, c) {
					addr := start + i*pageSize
					changed = appendSpan(changed, span{addr, addr + pageSize})
				}
			}
		}
	}
	return changed, nil
}

// sameSinceFork reports whether pagemap entries p of a process and c of
// its clone show one page that neither changed since the fork.
func sameSinceFork(p, c uint64) bool {
	switch {
	case !holdsData(p) && !holdsData(c):
		return true
	case p&pmPresent != 0 && c&pmPresent != 0, p&pmSwapped != 0 && c&pmSwapped != 0:
		return p&pmFrame == c&pmFrame
	}
	return false
}

// pfnsVisible reports whether this process can read page frame numbers in
// pagemap files, which takes CAP_SYS_ADMIN. Without them a clone's frames
// cannot be compared, and a first tracked capture write-protects the
// memory while the process is frozen.
var pfnsVisible = sync.OnceValue(func() bool {
	pfnProbe[0] = 1 // makes the page present
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return false
	}
	defer f.Close()

	var entry [8]byte
	addr := uint64(uintptr(unsafe.Pointer(&pfnProbe[0])))
	if _, err := f.ReadAt(entry[:], int64(addr/pageSize*8)); err != nil {
		return false
	}
	e := binary.LittleEndian.Uint64(entry[:])
	return e&pmPresent != 0 && e&pmFrame != 0
})

// pfnProbe is a page of this process that pfnsVisible looks up.
var pfnProbe [pageSize]byte
