package fs

import (
	"context"
	"runtime"
	"sync"
)

const (
	// prefetchChunk is the span of a memory file that one prefetch covers:
	// four of the snapshot writer's frames, which hold up to 64 KiB of the
	// saved pages of one region each. One goroutine decodes them in turn.
	prefetchChunk = 256 << 10

	// prefetchWindow is how many chunks past the furthest read a handle
	// keeps decoded or decoding: 1 MiB. It and GOMAXPROCS cap the
	// prefetches in flight per handle. A Snapshot caches 64 decoded frames
	// (4 MiB), room for a few readers each 1 MiB ahead.
	prefetchWindow = 4

	// seqSlack is how far before or after the end of the furthest read a
	// read may start and still continue a sequential stream. The kernel's
	// read-ahead sends several requests at once, and they reach the daemon
	// in any order.
	seqSlack = 4 << 20

	// probeStep is the distance between the bytes a prefetch reads. Every
	// frame but the last of a region spans at least 64 KiB of the region,
	// so this step reaches each of them.
	probeStep = 64 << 10
)

// memHandle is one open of a memory file. When its reads come in sequence
// it decodes the chunks ahead of them in background goroutines, so the
// frames are in the Snapshot's cache when the kernel requests them, and the
// decoding runs on several cores. Prefetching costs no memory beyond that
// cache. A prefetch never reports an error: the read of the same bytes
// fails with it instead.
type memHandle struct {
	file  *memFile
	limit int // maximum number of prefetches in flight

	// wg counts the prefetch goroutines; Release waits for them.
	wg sync.WaitGroup

	// mu protects the fields below.
	mu     sync.Mutex
	closed bool
	// next is the end of the furthest read of the current stream, and
	// streak the number of reads in it.
	next   uint64
	streak int
	// ahead is the start of the stream's next prefetch. Every chunk below
	// it, from the start of the stream, is decoded or being decoded.
	ahead uint64
	// pending maps the start of each chunk being prefetched to a channel
	// closed when that prefetch ends.
	pending map[uint64]chan struct{}
}

func newMemHandle(file *memFile) *memHandle {
	return &memHandle{
		file:    file,
		limit:   min(runtime.GOMAXPROCS(0), prefetchWindow),
		pending: map[uint64]chan struct{}{},
	}
}

// observe records a read of n bytes at off and, from the second read of a
// sequential stream on, starts prefetching the chunks up to prefetchWindow
// past the stream's furthest read.
//
// Reads of a whole chunk or more start no prefetch. They come from a
// kernel read-ahead window of several requests, which the kernel sends at
// once, so their frames already decode in parallel, and prefetched frames
// would only push theirs out of the Snapshot's cache. With
// BenchmarkReadMemoryCold on a 2-core VM, prefetching beside 1 MiB
// requests cost 7% more CPU time and gave no more throughput.
func (h *memHandle) observe(off, n uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()

	end := off + n
	if h.streak == 0 || off+seqSlack < h.next || off > h.next+seqSlack {
		h.streak, h.next, h.ahead = 0, end, 0
	}
	h.streak++
	h.next = max(h.next, end)
	if h.streak < 2 || h.closed || n >= prefetchChunk {
		return
	}

	first := alignUp(h.next)
	last := min(first+prefetchWindow*prefetchChunk, h.file.size)
	for start := max(h.ahead, first); start < last && len(h.pending) < h.limit; start += prefetchChunk {
		done := make(chan struct{})
		h.pending[start] = done
		h.wg.Add(1)
		go h.prefetch(start, done)
		h.ahead = start + prefetchChunk
	}
}

// prefetch decodes the frames of the chunk at start into the Snapshot's
// cache, then closes done.
func (h *memHandle) prefetch(start uint64, done chan struct{}) {
	defer h.wg.Done()

	// One byte in every probeStep decodes every frame the chunk overlaps,
	// unless all the probed bytes of a frame lie in pages saved as zeros.
	// An error is dropped here: the read of these bytes decodes the frame
	// again and reports it.
	var probe [1]byte
	end := min(start+prefetchChunk, h.file.size)
	for off := start; off < end; off += probeStep {
		_ = h.file.snap.ReadRegion(h.file.index, probe[:], off)
	}

	h.mu.Lock()
	delete(h.pending, start)
	h.mu.Unlock()
	close(done)
}

// await waits until no prefetch overlapping the n bytes at off is running,
// so that a read does not decode a frame a prefetch is decoding. It
// returns early when ctx is done.
func (h *memHandle) await(ctx context.Context, off, n uint64) {
	h.mu.Lock()
	var waits []chan struct{}
	for start := alignDown(off); start < off+n; start += prefetchChunk {
		if done, ok := h.pending[start]; ok {
			waits = append(waits, done)
		}
	}
	h.mu.Unlock()

	for _, done := range waits {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

// close stops new prefetches and waits for those running.
func (h *memHandle) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()

	h.wg.Wait()
}

func alignDown(off uint64) uint64 {
	return off - off%prefetchChunk
}

func alignUp(off uint64) uint64 {
	return alignDown(off + prefetchChunk - 1)
}
