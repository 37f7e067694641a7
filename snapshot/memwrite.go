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
	// decompresses one whole frame, and larger frames compress only a few
	// percent better.
	frameSize = 512 << 10

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
		// One encoder state per worker of writeMemory.
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		// The index keeps an xxhash64 of every frame, checked on each read.
		zstd.WithEncoderCRC(false),
	)
})

// frameJob is one frame on its way through the compression workers to the
// memory file.
type frameJob struct {
	pieces [][]byte // uncompressed bytes, in order; they alias the image's Run.Data
	size   int

	compressed []byte
	hash       uint64
	done       chan struct{} // closed when compressed and hash are set
}

// compress fills in the compressed bytes and the hash of the job.
func (job *frameJob) compress(enc *zstd.Encoder) {
	src := job.pieces[0]
	if len(job.pieces) > 1 {
		src = make([]byte, 0, job.size)
		for _, piece := range job.pieces {
			src = append(src, piece...)
		}
	}

	job.hash = xxhash.Sum64(src)
	job.compressed = enc.EncodeAll(src, make([]byte, 0, job.size/2))
	close(job.done)
}

// writeMemory writes the saved bytes of every run of img as zstd frames into
// dir/memory and returns the file's manifest entry and the index.
func writeMemory(dir string, img *Image) (fileEntry, *index, error) {
	out, err := createHashed(dir, memoryFile)
	if err != nil {
		return fileEntry{}, nil, err
	}

	x, err := encodeMemory(&out.hashWriter, img)
	if err != nil {
		out.abort()
		return fileEntry{}, nil, err
	}
	entry, err := out.finish()
	return entry, x, err
}

// encodeMemory writes the saved bytes of every run of img as zstd frames to
// out, compressing on GOMAXPROCS workers while one goroutine writes the
// frames in order. It returns the index of the frames.
func encodeMemory(out io.Writer, img *Image) (*index, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd encoder: %w", err)
	}

	// At most 3*workers frames are in flight, which bounds the memory used.
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *frameJob, workers)
	queue := make(chan *frameJob, 2*workers)
	stop := make(chan struct{})

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for job := range jobs {
				job.compress(enc)
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
	p := &planner{x: x, submit: submit}
	for i := range img.Regions {
		if !p.plan(i, &img.Regions[i]) {
			break
		}
	}
	close(jobs)
	close(queue)
	err = <-written
	wg.Wait()

	if err != nil {
		return nil, err
	}
	return x, nil
}

// writeFrames appends the frames from queue to out in order and records them
// in x. After the first error it closes stop and drains the queue.
func writeFrames(out io.Writer, queue <-chan *frameJob, stop chan<- struct{}, x *index) error {
	var err error
	var size uint64
	for job := range queue {
		<-job.done
		if err != nil {
			continue
		}

		frame := frameEntry{
			FileOff: size,
			CLen:    uint32(len(job.compressed)),
			ULen:    uint32(job.size),
			Hash:    job.hash,
		}
		if _, err = out.Write(job.compressed); err != nil {
			close(stop)
			continue
		}
		size += uint64(len(job.compressed))
		x.frames = append(x.frames, frame)
	}
	return err
}

// planner cuts the runs of an image into extents and frames. Frames never
// span regions, extents never span runs or frames, and all-zero pages become
// zero extents with no frame.
type planner struct {
	x      *index
	submit func(*frameJob) bool // false once writing failed

	frame   *frameJob // being filled, or nil
	nframes uint32
	open    extent // being extended; Len 0 when none
}

// plan adds region i to the index and submits its frames. It returns false
// when writing failed.
func (p *planner) plan(i int, r *Region) bool {
	for _, run := range r.Runs {
		for pos := uint64(0); pos < run.Len; pos += pageSize {
			end := min(pos+pageSize, run.Len)
			page := run.Data[pos:end]
			if bytes.Equal(page, zeroPage[:len(page)]) {
				p.addZero(i, run.Off+pos, end-pos)
			} else if !p.addData(i, run.Off+pos, page) {
				return false
			}
		}
		p.closeExtent(i)
	}
	return p.flushFrame(i)
}

func (p *planner) addZero(i int, off, n uint64) {
	if p.open.Kind == extentZero && p.open.end() == off {
		p.open.Len += n
		return
	}
	p.closeExtent(i)
	p.open = extent{Off: off, Len: n, Kind: extentZero}
}

func (p *planner) addData(i int, off uint64, page []byte) bool {
	if p.frame != nil && p.frame.size+len(page) > frameSize {
		if !p.flushFrame(i) {
			return false
		}
	}
	if p.frame == nil {
		p.frame = &frameJob{done: make(chan struct{})}
		p.nframes++
	}
	frame := p.nframes - 1

	if p.open.Kind == extentData && p.open.Frame == frame && p.open.end() == off {
		p.open.Len += uint64(len(page))
	} else {
		p.closeExtent(i)
		p.open = extent{Off: off, Len: uint64(len(page)), Kind: extentData, Frame: frame, FrameOff: uint32(p.frame.size)}
	}
	p.frame.pieces = appendPiece(p.frame.pieces, page)
	p.frame.size += len(page)
	return true
}

// appendPiece appends page to pieces, growing the last piece instead when
// page directly follows it in the same array, so a frame cut from one run
// is compressed without a copy.
func appendPiece(pieces [][]byte, page []byte) [][]byte {
	if n := len(pieces); n > 0 {
		last := pieces[n-1]
		if cap(last)-len(last) >= len(page) && &last[:len(last)+1][len(last)] == &page[0] {
			pieces[n-1] = last[:len(last)+len(page)]
			return pieces
		}
	}
	return append(pieces, page)
}

func (p *planner) closeExtent(i int) {
	if p.open.Len > 0 {
		p.x.regions[i] = append(p.x.regions[i], p.open)
	}
	p.open = extent{}
}

// flushFrame submits the frame being filled, closing the extent that points
// into it.
func (p *planner) flushFrame(i int) bool {
	if p.frame == nil {
		return true
	}
	if p.open.Kind == extentData {
		p.closeExtent(i)
	}
	job := p.frame
	p.frame = nil
	return p.submit(job)
}
