package engine

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// precopied holds the pages Tracker.Precopy read while the process ran:
// the ranges written since the base up to its write protection, and the
// bytes of the pages present then.
type precopied struct {
	written []span  // sorted, dropped pages included
	pages   []chunk // sorted; nil when too much was written to copy
}

// chunk is bytes of the process's memory at addr.
type chunk struct {
	addr uint64
	data []byte
}

// Precopy copies, while the process runs, the pages written since the
// tracker's base, and write-protects them again, so that the next
// capture, frozen, copies only the pages written after Precopy. That
// keeps the freeze short however much was written before. Call it between
// ops, before Begin of a capture; it does nothing when the tracker has no
// base. The pages stay counted as written since the base until the next
// capture or full restore sets a new one.
func (t *Tracker) Precopy() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started() || t.baseImage == nil || t.pre != nil {
		return nil
	}

	pre := &precopied{}
	var pieces []precopyPiece
	vec := make([]pageRegion, scanVecLen)
	for _, rg := range t.ranges {
		r := &snapshot.Region{Start: rg.start, End: rg.end}
		written, err := t.writtenIn(r, vec)
		if err != nil || t.claim(r) != nil {
			// The mapping changed; the next capture finds it untracked.
			continue
		}
		for _, sp := range written {
			pre.written = appendSpan(pre.written, sp)
			pieces = append(pieces, precopyPiece{sp, rg.anonOnly})
		}
	}
	// Once protected, these pages no longer show as written, so pre is kept
	// even when a step below fails. A page the running process writes after
	// the scan is either in a span protected here, and then copied after
	// its protection, or outside them and still shows as written.
	t.pre = pre
	for _, sp := range pre.written {
		if err := t.protectRange(sp); err != nil {
			return fmt.Errorf("write-protect pages of pid %d: %w", t.id.PID, err)
		}
	}

	var total uint64
	for _, sp := range pre.written {
		total += sp.end - sp.start
	}
	if total > deltaLimit {
		return nil
	}
	pages, err := t.copyPieces(pieces)
	if err != nil {
		return fmt.Errorf("copy pages written by pid %d: %w", t.id.PID, err)
	}
	pre.pages = pages
	return nil
}

// precopyPiece is a range of written pages and whether only its anonymous
// pages are saved.
type precopyPiece struct {
	sp       span
	anonOnly bool
}

// copyPieces copies the saved pages of pieces with process_vm_readv,
// spread over the CPUs. A page that cannot be read (dropped or unmapped
// meanwhile) is left out.
func (t *Tracker) copyPieces(pieces []precopyPiece) ([]chunk, error) {
	var runs []snapshot.Run
	for _, p := range pieces {
		var err error
		if runs, err = selectedRuns(runs, t.pagemap, 0, p.sp, p.anonOnly); err != nil {
			return nil, err
		}
	}

	var total uint64
	for _, run := range runs {
		total += run.Len
	}
	buf := make([]byte, total)
	chunks := make([]chunk, len(runs))
	for i, run := range runs {
		chunks[i] = chunk{addr: run.Off, data: buf[:run.Len:run.Len]}
		buf = buf[run.Len:]
	}

	out := chunks[:0]
	failed := readvParallel(t.id.PID, chunks)
	for _, c := range chunks {
		if len(failed) > 0 && failed[0].addr == c.addr {
			failed = failed[1:]
			if !readvChunks(t.id.PID, []chunk{c}) {
				continue
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// readvParallel fills chunks from process pid with process_vm_readv
// batches of up to iovBatch ranges, spread over the CPUs, and returns the
// chunks of the batches it could not read whole, in order.
func readvParallel(pid int, chunks []chunk) []chunk {
	workers := runtime.GOMAXPROCS(0)
	failed := make([]bool, len(chunks))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for first := w * iovBatch; first < len(chunks); first += workers * iovBatch {
				batch := chunks[first:min(first+iovBatch, len(chunks))]
				if !readvChunks(pid, batch) {
					for k := range batch {
						failed[first+k] = true
					}
				}
			}
		})
	}
	wg.Wait()

	var out []chunk
	for i, c := range chunks {
		if failed[i] {
			out = append(out, c)
		}
	}
	return out
}

// readvChunks fills chunks from process pid with one process_vm_readv and
// reports whether it read every byte.
func readvChunks(pid int, chunks []chunk) bool {
	local := make([]unix.Iovec, len(chunks))
	remote := make([]unix.RemoteIovec, len(chunks))
	want := 0
	for i, c := range chunks {
		local[i].Base = &c.data[0]
		local[i].SetLen(len(c.data))
		remote[i] = unix.RemoteIovec{Base: uintptr(c.addr), Len: len(c.data)}
		want += len(c.data)
	}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	return err == nil && n == want
}
