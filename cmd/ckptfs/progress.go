package main

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/ckptfs/ckptfs/snapshot"
)

const (
	// progressDelay is how long an operation runs before its bar appears,
	// so that quick operations print nothing extra.
	progressDelay = time.Second

	// progressTick is how often the bar follows the byte counter.
	progressTick = 100 * time.Millisecond
)

// countingReader passes reads on to src and counts the bytes of those that
// succeed. It is safe for concurrent use when src is.
type countingReader struct {
	src  snapshot.MemoryReader
	done atomic.Int64
}

var _ snapshot.MemorySource = (*countingReader)(nil)

// ReadRegion reads from the source and, when that succeeds, adds len(p) to
// the count. Its errors are those of the source, unchanged.
func (c *countingReader) ReadRegion(i int, p []byte, off uint64) error {
	if err := c.src.ReadRegion(i, p, off); err != nil {
		return err
	}
	c.done.Add(int64(len(p)))
	return nil
}

// Done returns the number of bytes read so far.
func (c *countingReader) Done() int64 { return c.done.Load() }

// runBytes returns the number of memory bytes in img, which is the sum of
// the lengths of the runs of all its regions.
func runBytes(img *snapshot.Image) int64 {
	var total uint64
	for i := range img.Regions {
		for _, run := range img.Regions[i].Runs {
			total += run.Len
		}
	}
	return int64(total)
}

// startProgress shows a bar of done() bytes out of total on w, but only when
// w is a terminal and the operation still runs after progressDelay.
// Otherwise it prints nothing. done is called from another goroutine. The
// returned function erases the bar and returns once nothing more is drawn,
// so call it before printing results.
func startProgress(w io.Writer, description string, total int64, done func() int64) (stop func()) {
	if !isTerminal(w) {
		return func() {}
	}

	quit := make(chan struct{})
	finished := make(chan struct{})
	timer := time.AfterFunc(progressDelay, func() {
		defer close(finished)
		select {
		case <-quit:
			return
		default:
		}
		followCounter(newByteBar(w, description, total), done, quit)
	})

	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			if timer.Stop() {
				// The bar never started.
				return
			}
			<-finished
		})
	}
}

// newByteBar returns a bar on w of bytes done out of total, in IEC units.
//
// NOTE: the bar starts after progressDelay with the bytes of that first
// second already done, so its rate and time left read high for a few
// ticks, until the library's rolling average settles.
func newByteBar(w io.Writer, description string, total int64) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetRenderBlankState(true))
}

// followCounter sets bar to done() every progressTick until quit is closed,
// then fills and erases the bar. A restore may read fewer bytes than the
// total; the bar then ends early.
func followCounter(bar *progressbar.ProgressBar, done func() int64, quit <-chan struct{}) {
	ticker := time.NewTicker(progressTick)
	defer ticker.Stop()

	for {
		select {
		case <-ticker.C:
			_ = bar.Set64(done())
		case <-quit:
			_ = bar.Finish()
			return
		}
	}
}
