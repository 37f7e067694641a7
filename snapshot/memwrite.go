package snapshot

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

const (
	// frameSize is the most uncompressed bytes in one frame. A random read
	// decompresses one whole frame, so a rollback of scattered pages
	// decodes about one frame a page. Against 512 KiB frames, 64 KiB ones
	// cut that work eightfold, cost about 2% more bytes on memory that
	// compresses 3x, and compress as fast.
	frameSize = 64 << 10

	// pageSize is the unit of the all-zero check.
	pageSize = 4096
)

var zeroPage [pageSize]byte

// encoder is shared by every Save; EncodeAll runs up to GOMAXPROCS frames at
// once on it.
var encoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		// Compression runs after the process is thawed but still delays the
		// reply to the capture: the fastest level is about 500 MB/s a core.
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		// One encoder state per worker of encodeMemory.
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		// The index keeps an xxhash64 of every frame, checked on each read.
		zstd.WithEncoderCRC(false),
	)
})

// span is a range of one run of a region that a frame job reads.
type span struct {
	off, len uint64 // from the region's start

	// joined marks a span that continues the span before it in the same
	// run, so that their extents may merge.
	joined bool
}

// frameJob is up to frameSize bytes of the runs of one region on their way
// through a compression worker to the memory file. Its all-zero pages
// become zero extents and the others one frame.
type frameJob struct {
	region int
	spans  []span
	size   uint64

	// Set by the worker before it closes done. Frame is not set in the
	// data extents: the writer numbers frames.
	extents    []extent
	joined     bool   // the first extent may merge with the region's last one
	runStarts  []int  // extents after the first that start a run and must not merge
	stored     int    // bytes of non-zero pages in the frame, 0 for no frame
	compressed []byte // from compressedPool, returned by the writer
	hash       uint64
	err        error
	done       chan struct{}
}

var (
	// framePool holds frameSize buffers for the uncompressed bytes of a job.
	framePool = sync.Pool{New: func() any { b := make([]byte, frameSize); return &b }}
	// compressedPool holds buffers for compressed frames.
	compressedPool = sync.Pool{New: func() any { b := make([]byte, 0, frameSize/2); return &b }}
)

// Page classes inside a frame, kept in extent.Frame until the writer
// numbers the frame.
const (
	classPlain = 0 // compressible pages, first in the frame
	classDense = 1 // pages that look incompressible, after the plain ones
)

// run reads the spans of the job from src and compresses its non-zero
// pages as one frame: the compressible ones first, then those that look
// incompressible. Kept apart, each kind compresses at its own speed, which
// for a mix of random and text pages is several times faster than
// interleaved, and the ratio is the same or better.
func (job *frameJob) run(enc *zstd.Encoder, src MemorySource) {
	defer close(job.done)
	bufp := framePool.Get().(*[]byte)
	defer framePool.Put(bufp)
	densep := framePool.Get().(*[]byte)
	defer framePool.Put(densep)
	buf, dense := *bufp, (*densep)[:0]

	n := 0
	for k, sp := range job.spans {
		piece := buf[n : n+int(sp.len)]
		if err := src.ReadRegion(job.region, piece, sp.off); err != nil {
			job.err = fmt.Errorf("read memory of region %d at %d: %w", job.region, sp.off, err)
			return
		}
		n, dense = job.packPages(buf, n, dense, sp, k == 0)
	}
	for k := range job.extents {
		if e := &job.extents[k]; e.Kind == extentData && e.Frame == classDense {
			e.Frame, e.FrameOff = classPlain, e.FrameOff+uint32(n)
		}
	}
	n += copy(buf[n:], dense)
	if n == 0 {
		return
	}

	job.stored = n
	job.hash = xxhash.Sum64(buf[:n])
	dst := compressedPool.Get().(*[]byte)
	job.compressed = enc.EncodeAll(buf[:n], (*dst)[:0])
}

// packPages records the extents of the pages of sp, just read into buf at
// n. It moves the plain non-zero pages down to n, after those packed so
// far, and appends the dense ones to dense. It returns the new end of the
// plain pages and dense. The FrameOff of a dense extent is its offset in
// dense.
func (job *frameJob) packPages(buf []byte, n int, dense []byte, sp span, first bool) (int, []byte) {
	w := n
	for pos := uint64(0); pos < sp.len; pos += pageSize {
		size := min(pageSize, sp.len-pos)
		page := buf[n+int(pos) : n+int(pos+size)]
		e := extent{Off: sp.off + pos, Len: size, Kind: extentZero}
		switch {
		case bytes.Equal(page, zeroPage[:size]):
		case looksDense(page):
			e.Kind, e.Frame, e.FrameOff = extentData, classDense, uint32(len(dense))
			dense = append(dense, page...)
		default:
			e.Kind, e.FrameOff = extentData, uint32(w)
			copy(buf[w:], page)
			w += int(size)
		}

		mergeable := pos > 0 || sp.joined
		switch {
		case pos == 0 && first:
			job.joined = sp.joined
			mergeable = false
		case !mergeable:
			// Runs may be adjacent (a changed run next to one marked
			// Base), and the extents of a region tile each run apart.
			job.runStarts = append(job.runStarts, len(job.extents))
		}
		job.extents = appendExtent(job.extents, e, mergeable)
	}
	return w, dense
}

// looksDense reports whether a page looks incompressible (random or already
// compressed bytes): 64 bytes sampled across it take at least 48 distinct
// values. Text, code, pointers and sparse records take far fewer.
func looksDense(page []byte) bool {
	if len(page) < 64*64 {
		return false
	}
	var seen [256]bool
	distinct := 0
	for i := 0; i < 64; i++ {
		b := page[i*64+i%61]
		if !seen[b] {
			seen[b] = true
			distinct++
		}
	}
	return distinct >= 48
}

// appendExtent appends e to extents, or lengthens the last extent instead
// when mergeable is set and e continues it with the same source.
func appendExtent(extents []extent, e extent, mergeable bool) []extent {
	if n := len(extents); mergeable && n > 0 {
		last := &extents[n-1]
		continues := last.Kind == e.Kind && last.end() == e.Off
		if continues && (e.Kind != extentData || last.Frame == e.Frame && uint64(last.FrameOff)+last.Len == uint64(e.FrameOff)) {
			last.Len += e.Len
			return extents
		}
	}
	return append(extents, e)
}

// encodeMemory reads every run of img from src and writes it as zstd frames
// to out, reading and compressing on GOMAXPROCS workers while one goroutine
// writes the frames in order. It returns the index of the frames. With
// skipBase set it leaves out the runs marked Base, which then have no
// extents in the index.
func encodeMemory(out io.Writer, img *Image, src MemorySource, skipBase bool) (*index, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd encoder: %w", err)
	}

	// At most 3*workers jobs are in flight, which bounds the memory used
	// to a few frames a worker whatever the size of the image.
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *frameJob, workers)
	queue := make(chan *frameJob, 2*workers)
	stop := make(chan struct{})

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for job := range jobs {
				job.run(enc, src)
			}
		})
	}
	x := &index{regions: make([][]extent, len(img.Regions))}
	written := make(chan error, 1)
	go func() { written <- writeFrames(out, queue, stop, x) }()

	submit := func(job *frameJob) bool {
		select {
		case queue <- job:
		case <-stop:
			return false
		}
		jobs <- job
		return true
	}
	planFrames(img, skipBase, submit)
	close(jobs)
	close(queue)
	err = <-written
	wg.Wait()

	if err != nil {
		return nil, err
	}
	return x, nil
}

// planFrames cuts the runs of every region of img, but those marked Base
// when skipBase is set, into frame jobs of at most frameSize bytes and
// submits them in order. Jobs never span regions. It stops when submit
// returns false, after writing failed.
func planFrames(img *Image, skipBase bool, submit func(*frameJob) bool) {
	for i := range img.Regions {
		var job *frameJob
		for _, run := range img.Regions[i].Runs {
			if skipBase && run.Base {
				continue
			}
			joined := false
			for pos := uint64(0); pos < run.Len; {
				if job == nil {
					job = &frameJob{region: i, done: make(chan struct{})}
				}
				take := min(run.Len-pos, frameSize-job.size)
				job.spans = append(job.spans, span{off: run.Off + pos, len: take, joined: joined})
				job.size += take
				pos += take
				joined = true

				if job.size == frameSize {
					if !submit(job) {
						return
					}
					job = nil
				}
			}
		}
		if job != nil && !submit(job) {
			return
		}
	}
}

// writeFrames appends the frames from queue to out in order and records them
// and their extents in x. After the first error it closes stop and drains
// the queue.
func writeFrames(out io.Writer, queue <-chan *frameJob, stop chan<- struct{}, x *index) error {
	var err error
	var size uint64
	fail := func(e error) {
		if err == nil {
			err = e
			close(stop)
		}
	}
	for job := range queue {
		<-job.done
		compressed := job.compressed
		switch {
		case err != nil:
		case job.err != nil:
			fail(job.err)
		default:
			if job.stored > 0 {
				if _, werr := out.Write(compressed); werr != nil {
					fail(werr)
					break
				}
				x.frames = append(x.frames, frameEntry{FileOff: size, CLen: uint32(len(compressed)), ULen: uint32(job.stored), Hash: job.hash})
				size += uint64(len(compressed))
			}
			x.addJobExtents(job, uint32(len(x.frames)-1))
		}
		if compressed != nil {
			compressedPool.Put(&compressed)
		}
	}
	return err
}

// addJobExtents appends the extents of a written job to its region, its
// data extents pointing into frame.
func (x *index) addJobExtents(job *frameJob, frame uint32) {
	region := x.regions[job.region]
	starts := job.runStarts
	for k, e := range job.extents {
		if e.Kind == extentData {
			e.Frame = frame
		}
		mergeable := k > 0 || job.joined
		if len(starts) > 0 && starts[0] == k {
			mergeable = false
			starts = starts[1:]
		}
		region = appendExtent(region, e, mergeable)
	}
	x.regions[job.region] = region
}
