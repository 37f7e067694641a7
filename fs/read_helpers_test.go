package fs

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// readMount mounts a tree serving a fresh store, both in temporary
// directories, for tests and benchmarks alike, and returns the mountpoint
// and the store. It unmounts when tb ends.
func readMount(tb testing.TB) (string, *snapshot.Store) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("the read tests need root: they ptrace processes and mount FUSE")
	}

	log := slog.New(slog.DiscardHandler)
	store, err := snapshot.Open(tb.TempDir(), log)
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	dir := tb.TempDir()
	srv, err := Mount(dir, Config{Store: store, Logger: log})
	if err != nil {
		tb.Fatalf("mount: %v", err)
	}
	tb.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir, store
}

// memRegion is the buffer of a running bench_mem, captured through a mount.
type memRegion struct {
	pid  int
	addr uint64 // start of the buffer in the process
	len  uint64

	// file is the buffer's memory file in the snapshot, and fileStart the
	// start of its mapping, which may have merged with a neighbour.
	file      string
	fileStart uint64
}

// captureBenchMem starts bench_mem with mib MiB of filled memory, captures
// it as snap-1 through the mount at mnt, and returns where its buffer lies.
// The process stays idle, so its memory keeps the captured bytes.
func captureBenchMem(tb testing.TB, mnt string, mib int) *memRegion {
	tb.Helper()
	p := testproc.Start(tb, testproc.Build(tb, "bench_mem"), strconv.Itoa(mib))
	fields := strings.Fields(p.Expect("ready "))
	if len(fields) != 2 {
		tb.Fatalf("bench_mem printed %q after ready, want ADDR LEN", fields)
	}
	addr, err := strconv.ParseUint(fields[0], 16, 64)
	if err != nil {
		tb.Fatalf("parse buffer address %q: %v", fields[0], err)
	}
	size, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil {
		tb.Fatalf("parse buffer length %q: %v", fields[1], err)
	}

	snap := filepath.Join(mnt, strconv.Itoa(p.PID), "snap-1")
	if err := os.WriteFile(filepath.Join(mnt, strconv.Itoa(p.PID), "capture"), []byte("1\n"), 0o600); err != nil {
		tb.Fatalf("capture pid %d: %v", p.PID, err)
	}
	maps, err := os.ReadFile(filepath.Join(snap, "maps"))
	if err != nil {
		tb.Fatalf("read maps of the snapshot: %v", err)
	}
	bounds, start := mappingOf(tb, string(maps), addr, size)
	return &memRegion{pid: p.PID, addr: addr, len: size, file: filepath.Join(snap, "memory", bounds), fileStart: start}
}

// mappingOf returns the bounds, as printed in maps, and the start of the
// mapping that holds the whole range [addr, addr+size).
func mappingOf(tb testing.TB, maps string, addr, size uint64) (string, uint64) {
	tb.Helper()
	for _, line := range strings.Split(strings.TrimSpace(maps), "\n") {
		bounds, _, _ := strings.Cut(line, " ")
		lo, hi, _ := strings.Cut(bounds, "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			tb.Fatalf("bad maps line %q", line)
		}
		if addr >= start && addr+size <= end {
			return bounds, start
		}
	}
	tb.Fatalf("no mapping holds %#x+%d in maps:\n%s", addr, size, maps)
	return "", 0
}

// liveMemory reads the buffer from /proc/PID/mem.
func (r *memRegion) liveMemory(tb testing.TB) []byte {
	tb.Helper()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", r.pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer mem.Close()

	buf := make([]byte, r.len)
	if _, err := mem.ReadAt(buf, int64(r.addr)); err != nil {
		tb.Fatalf("read memory of pid %d at %#x: %v", r.pid, r.addr, err)
	}
	return buf
}

// offset returns the buffer's offset in its memory file.
func (r *memRegion) offset() int64 {
	return int64(r.addr - r.fileStart)
}

// compareBytes fails tb at the first byte where got differs from want,
// naming the comparison by label.
func compareBytes(tb testing.TB, label string, got, want []byte) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Errorf("%s: %d bytes, want %d", label, len(got), len(want))
		return
	}
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			tb.Errorf("%s: first difference at byte %d (page %d): %#02x, want %#02x", label, i, i/4096, got[i], want[i])
			return
		}
	}
}

// dropCaches drops the clean pages of the kernel's page cache, so that the
// next read of a memory file reaches the daemon and the store's disk.
func dropCaches(tb testing.TB) {
	tb.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		tb.Fatalf("drop page cache: %v", err)
	}
}
