package fs

import (
	"io"
	"os"
	"syscall"
	"testing"
	"time"
)

// catBlock is the read size of cat (GNU coreutils 9.1) on a file whose
// st_blksize is smaller, such as a memory file.
const catBlock = 128 << 10

// BenchmarkReadMemoryCold reads the 256 MiB memory file of a bench_mem
// snapshot with 128 KiB reads, as cat does, after dropping the page cache,
// so every byte comes from the store through the daemon.
func BenchmarkReadMemoryCold(b *testing.B) {
	mnt, _ := readMount(b)
	region := captureBenchMem(b, mnt, 256)
	info, err := os.Stat(region.file)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(info.Size())
	buf := make([]byte, catBlock)

	// The CPU time of this process covers the daemon and the reader, and
	// varies less than the wall time when other work shares the machine.
	var cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		syscall.Sync()
		dropCaches(b)
		start := processCPU(b)
		b.StartTimer()

		n := catFile(b, region.file, buf)
		if n != info.Size() {
			b.Fatalf("read %d bytes of %s, want %d", n, region.file, info.Size())
		}
		cpu += processCPU(b) - start
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
}

// processCPU returns the user and system time used by this process.
func processCPU(tb testing.TB) time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// catFile reads file to its end with reads of len(buf) and returns the
// number of bytes read.
func catFile(tb testing.TB, file string, buf []byte) int64 {
	f, err := os.Open(file)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()

	var total int64
	for {
		n, err := f.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total
		}
		if err != nil {
			tb.Fatalf("read %s at %d: %v", file, total, err)
		}
	}
}
