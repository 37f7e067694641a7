package main

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// span is a range of another process's address space.
type span struct {
	addr, len uint64
}

// iovMax is the kernel's limit on iovecs per process_vm_readv call.
const iovMax = 1024

func spansBytes(spans []span) uint64 {
	var n uint64
	for _, s := range spans {
		n += s.len
	}
	return n
}

// imageSpans returns the saved runs of img: the pages a capture copied.
func imageSpans(img *snapshot.Image) []span {
	var spans []span
	for _, r := range img.Regions {
		if !r.Saved {
			continue
		}
		for _, run := range r.Runs {
			spans = append(spans, span{addr: r.Start + run.Off, len: run.Len})
		}
	}
	return spans
}

// copyReference times process_vm_readv of spans from pid into a buffer that
// is mapped and faulted in beforehand, which is the cost of copying those
// pages and nothing else. When use is not nil it is called with the copied
// bytes after the timing. The buffer is unmapped before returning, so it
// does not count in the bench's resident memory later.
func copyReference(pid int, spans []span, use func([]byte)) (time.Duration, error) {
	total := spansBytes(spans)
	if total == 0 {
		return 0, nil
	}
	buf, err := unix.Mmap(-1, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("map %d bytes for the copy reference: %w", total, err)
	}
	defer unix.Munmap(buf)
	for i := 0; i < len(buf); i += pageSize {
		buf[i] = 1
	}

	start := time.Now()
	if err := readSpans(pid, spans, buf); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)

	if use != nil {
		use(buf)
	}
	return elapsed, nil
}

// readSpans copies spans of pid into buf, back to back.
func readSpans(pid int, spans []span, buf []byte) error {
	var off uint64
	for len(spans) > 0 {
		batch := spans[:min(len(spans), iovMax)]
		spans = spans[len(batch):]

		remote := make([]unix.RemoteIovec, len(batch))
		for i, s := range batch {
			remote[i] = unix.RemoteIovec{Base: uintptr(s.addr), Len: int(s.len)}
		}
		want := spansBytes(batch)
		local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&buf[off]))}}
		local[0].SetLen(int(want))

		n, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return fmt.Errorf("process_vm_readv of pid %d: %w", pid, err)
		}
		if uint64(n) != want {
			return fmt.Errorf("process_vm_readv of pid %d: read %d of %d bytes", pid, n, want)
		}
		off += want
	}
	return nil
}

// zstdReferenceSize returns the size of data compressed as independent
// 1 MiB zstd frames at SpeedFastest: what a store with no dedup and no
// incremental snapshots could reach with that encoder.
func zstdReferenceSize(data []byte) (uint64, error) {
	const frame = 1 << 20
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, fmt.Errorf("create zstd encoder: %w", err)
	}
	defer enc.Close()

	workers := runtime.NumCPU()
	sizes := make([]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var dst []byte
			for off := w * frame; off < len(data); off += workers * frame {
				dst = enc.EncodeAll(data[off:min(off+frame, len(data))], dst[:0])
				sizes[w] += uint64(len(dst))
			}
		}()
	}
	wg.Wait()

	var total uint64
	for _, s := range sizes {
		total += s
	}
	return total, nil
}

// dropCaches writes dirty pages back and empties the page cache, so the
// next read of a file comes from the disk.
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	return nil
}

// catRate drops the page cache, runs `cat path > /dev/null` and returns the
// read rate in bytes per second.
func catRate(path string) (float64, error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := dropCaches(); err != nil {
		return 0, err
	}

	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devNull.Close()
	cmd := exec.Command("cat", path)
	cmd.Stdout = devNull
	cmd.Stderr = os.Stderr

	start := time.Now()
	err = cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("cat %s: %w", path, err)
	}
	return float64(info.Size()) / elapsed.Seconds(), nil
}

// createReadReference writes a file of size random bytes into dir, on the
// same disk as the store, for the plain-read reference.
func createReadReference(dir string, size uint64) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("read-reference-%d", size))
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("create read reference: %w", err)
	}
	defer f.Close()

	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		return "", fmt.Errorf("fill read reference: %w", err)
	}
	w := bufio.NewWriterSize(f, len(chunk))
	for left := size; left > 0; left -= min(left, uint64(len(chunk))) {
		if _, err := w.Write(chunk[:min(left, uint64(len(chunk)))]); err != nil {
			return "", fmt.Errorf("write read reference %s: %w", path, err)
		}
	}
	if err := w.Flush(); err != nil {
		return "", fmt.Errorf("write read reference %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("sync read reference %s: %w", path, err)
	}
	return path, nil
}

// resetPeakRSS returns the bench's free heap to the kernel, as an idle
// daemon's runtime does over time, and resets VmHWM to the current resident
// size.
func resetPeakRSS() error {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5\n"), 0); err != nil {
		return fmt.Errorf("reset peak resident size: %w", err)
	}
	return nil
}

// peakRSS returns VmHWM of the bench process in bytes.
func peakRSS() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read own status: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmHWM line %q: %w", line, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmHWM line in /proc/self/status")
}
