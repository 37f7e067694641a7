package engine

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/snapshot"
)

// benchMiB is the memory the capture benchmarks' target fills.
const benchMiB = 256

// BenchmarkCaptureCOW256MiB measures a copy-on-write capture and save of a
// process with 256 MiB of touched, semi-compressible memory: wall time per
// op, the time the process stayed frozen as frozen-ms, and the peak
// resident size of the test process during the capture as peak-rss-MiB.
func BenchmarkCaptureCOW256MiB(b *testing.B) {
	benchCapture(b, func(st *snapshot.Store, pid int) (*snapshot.Image, error) {
		img, mem, err := CaptureCOW(pid, nil)
		if err != nil {
			return nil, err
		}
		_, err = st.SaveFrom(img, "", mem)
		if closeErr := mem.Close(); err == nil {
			err = closeErr
		}
		return img, err
	})
}

// BenchmarkCaptureCopy256MiB is BenchmarkCaptureCOW256MiB for Capture,
// which copies memory while the process is frozen.
func BenchmarkCaptureCopy256MiB(b *testing.B) {
	benchCapture(b, func(st *snapshot.Store, pid int) (*snapshot.Image, error) {
		img, err := Capture(pid, nil)
		if err != nil {
			return nil, err
		}
		_, err = st.Save(img, "")
		return img, err
	})
}

func benchCapture(b *testing.B, capture func(*snapshot.Store, int) (*snapshot.Image, error)) {
	p := startPerfTarget(b, "bench_mem", strconv.Itoa(benchMiB))
	p.Expect("ready ")
	st := openPerfStore(b)

	var frozen time.Duration
	var peak uint64
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		debug.FreeOSMemory()
		resetPeakRSS(b)
		b.StartTimer()

		img, err := capture(st, p.PID)
		if err != nil {
			b.Fatalf("capture: %v", err)
		}
		frozen += img.Frozen
		peak = max(peak, peakRSS(b))
	}
	b.StopTimer()

	b.ReportMetric(float64(frozen.Microseconds())/1000/float64(b.N), "frozen-ms/op")
	b.ReportMetric(float64(peak)/(1<<20), "peak-rss-MiB")
}

// resetPeakRSS sets the peak resident size of this process (VmHWM) to its
// current size.
func resetPeakRSS(b *testing.B) {
	b.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset peak RSS: %v", err)
	}
}

// peakRSS returns VmHWM of this process in bytes.
func peakRSS(b *testing.B) uint64 {
	b.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("parse VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	b.Fatal(fmt.Errorf("no VmHWM in /proc/self/status"))
	return 0
}
