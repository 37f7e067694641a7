package fs

import (
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/snapshot"
)

// readMiB is the size of the bench_mem buffer the read tests capture: 64
// MiB is 128 frames, enough for read-ahead to run many chunks ahead.
const readMiB = 64

// readAheadsKiB are the kernel read-ahead windows the read tests run
// with: the kernel's default, which a mount by an ordinary user keeps and
// under which the daemon prefetches, and the one Mount sets as root.
var readAheadsKiB = []int{128, kernelReadAheadKiB}

// runReadCases captures a bench_mem buffer through a new mount and runs
// check once for each window of readAheadsKiB, with the page cache dropped
// first. want is the buffer's memory at capture.
func runReadCases(t *testing.T, check func(t *testing.T, region *memRegion, want []byte)) {
	mnt, _ := readMount(t)
	region := captureBenchMem(t, mnt, readMiB)
	want := region.liveMemory(t)

	for _, kib := range readAheadsKiB {
		t.Run("readahead="+strconv.Itoa(kib)+"KiB", func(t *testing.T) {
			if err := setKernelReadAhead(mnt, kib); err != nil {
				t.Fatal(err)
			}
			dropCaches(t)
			check(t, region, want)
		})
	}
}

func TestReadMemorySequential(t *testing.T) {
	runReadCases(t, func(t *testing.T, region *memRegion, want []byte) {
		for _, block := range []int{4096, catBlock, 1 << 20, 300_001} {
			dropCaches(t)
			data := readWhole(t, region.file, block)
			got := data[region.offset() : region.offset()+int64(len(want))]
			compareBytes(t, "reads of "+byteCount(block), got, want)
		}
	})
}

func TestReadMemoryJumps(t *testing.T) {
	runReadCases(t, func(t *testing.T, region *memRegion, want []byte) {
		f, err := os.Open(region.file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()

		// Short sequential streams, which start prefetching, then a jump
		// anywhere, backwards as often as forwards.
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 1<<20)
		for stream := range 60 {
			pos := rng.Uint64N(uint64(len(want)))
			for range 1 + rng.IntN(6) {
				n := min(1+rng.Uint64N(uint64(len(buf))), uint64(len(want))-pos)
				if n == 0 {
					break
				}
				got := buf[:n]
				if _, err := f.ReadAt(got, region.offset()+int64(pos)); err != nil {
					t.Fatalf("stream %d: read %d bytes at %d: %v", stream, n, pos, err)
				}
				compareBytes(t, "read at buffer offset "+byteCount(int(pos)), got, want[pos:pos+n])
				pos += n
			}
		}
	})
}

func TestReadMemoryTwoReaders(t *testing.T) {
	runReadCases(t, func(t *testing.T, region *memRegion, want []byte) {
		// The second reader starts in the middle and wraps around, so both
		// reach bytes no one has read yet.
		half := int64(len(want) / 2)
		var wg sync.WaitGroup
		for _, start := range []int64{0, half} {
			wg.Go(func() {
				got := make([]byte, len(want))
				readFrom(t, region.file, region.offset(), got, start)
				compareBytes(t, "reader from buffer offset "+byteCount(int(start)), got, want)
			})
		}
		wg.Wait()
	})
}

// TestReadCloseStopsPrefetch closes files through the mount right after
// sequential reads have started prefetches. It keeps the kernel's default
// read-ahead, under which the daemon prefetches.
func TestReadCloseStopsPrefetch(t *testing.T) {
	mnt, _ := readMount(t)
	if err := setKernelReadAhead(mnt, 128); err != nil {
		t.Fatal(err)
	}
	region := captureBenchMem(t, mnt, readMiB)
	dropCaches(t)

	_, before := countGoroutines()
	buf := make([]byte, catBlock)
	for i := range 20 {
		f, err := os.Open(region.file)
		if err != nil {
			t.Fatal(err)
		}
		off := region.offset() + int64(i)*(3<<20)
		for k := range int64(3) {
			if _, err := f.ReadAt(buf, off+k*catBlock); err != nil {
				t.Fatalf("read at %d: %v", off+k*catBlock, err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// The kernel sends RELEASE after close returns, so the count settles
	// a moment later.
	deadline := time.Now().Add(pollLimit)
	for {
		prefetches, others := countGoroutines()
		if prefetches == 0 && others <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing every file: %d prefetch goroutines, %d goroutines besides go-fuse's server, %d before",
				prefetches, others, before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadHandleClose starts prefetches on a handle over a loaded snapshot
// and closes it while they run.
func TestReadHandleClose(t *testing.T) {
	mnt, store := readMount(t)
	region := captureBenchMem(t, mnt, readMiB)
	snap := loadSnapshot(t, store, region.pid)
	index := regionIndex(t, snap, region.fileStart)
	file := &memFile{snap: snap, index: index, size: snap.Image.Regions[index].Len()}

	h := newMemHandle(file)
	h.observe(0, catBlock)
	h.observe(catBlock, catBlock)
	h.mu.Lock()
	started := len(h.pending)
	h.mu.Unlock()
	if started == 0 {
		t.Fatal("two sequential reads started no prefetch")
	}

	h.close()
	if n, _ := countGoroutines(); n > 0 {
		t.Errorf("%d prefetch goroutines run after close returned", n)
	}
	h.observe(2*catBlock, catBlock)
	if n, _ := countGoroutines(); n > 0 {
		t.Errorf("a read after close started %d prefetch goroutines", n)
	}
}

// countGoroutines returns how many goroutines run memHandle.prefetch, and
// how many run at all, leaving out those of go-fuse's server: it starts
// and stops readers of /dev/fuse as requests come.
func countGoroutines() (prefetches, others int) {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	for n == len(buf) {
		buf = make([]byte, 2*len(buf))
		n = runtime.Stack(buf, true)
	}

	for _, stack := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(stack, "(*memHandle).prefetch(") {
			prefetches++
		}
		if !strings.Contains(stack, "go-fuse/v2/fuse.(*Server).") {
			others++
		}
	}
	return prefetches, others
}

// readWhole reads file to its end with reads of block bytes.
func readWhole(t *testing.T, file string, block int) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var data []byte
	buf := make([]byte, block)
	for {
		n, err := f.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			return data
		}
		if err != nil {
			t.Fatalf("read %s at %d: %v", file, len(data), err)
		}
	}
}

// readFrom fills dest, which holds the len(dest) bytes at base of file,
// with sequential reads of catBlock that start at start and wrap around.
// It runs in any goroutine: it reports failures with Errorf.
func readFrom(t *testing.T, file string, base int64, dest []byte, start int64) {
	f, err := os.Open(file)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()

	size := int64(len(dest))
	for done := int64(0); done < size; {
		pos := (start + done) % size
		n := min(catBlock, size-pos)
		if _, err := f.ReadAt(dest[pos:pos+n], base+pos); err != nil {
			t.Errorf("read %s at %d: %v", file, base+pos, err)
			return
		}
		done += n
	}
}

func loadSnapshot(t *testing.T, store *snapshot.Store, pid int) *snapshot.Snapshot {
	t.Helper()
	snap, err := store.Load(identify(t, pid), "snap-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := snap.Close(); err != nil {
			t.Error(err)
		}
	})
	return snap
}

// regionIndex returns the index of the region that starts at start.
func regionIndex(t *testing.T, snap *snapshot.Snapshot, start uint64) int {
	t.Helper()
	for i, r := range snap.Image.Regions {
		if r.Start == start {
			return i
		}
	}
	t.Fatalf("no region of snapshot %s starts at %#x", snap.Info.Name, start)
	return -1
}

// byteCount formats n for a failure message.
func byteCount(n int) string {
	return strconv.Itoa(n) + " bytes"
}

func TestReadMountSetsReadAhead(t *testing.T) {
	mnt, _ := readMount(t)
	dev, err := mountDevice(mnt)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/sys/class/bdi/" + dev + "/read_ahead_kb")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(data)); got != strconv.Itoa(kernelReadAheadKiB) {
		t.Errorf("read_ahead_kb of the mount's device %s is %s, want %d", dev, got, kernelReadAheadKiB)
	}
}
