package snapshot

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const page = 4096

// testProcess returns the identity of a made-up process.
func testProcess(pid int) ProcessID {
	return ProcessID{PID: pid, StartTime: 777000 + uint64(pid), BootID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"}
}

// fill returns n bytes of the given kind: "random" (incompressible),
// "text" (compressible), or "zero".
func fill(rng *rand.Rand, kind string, n int) []byte {
	b := make([]byte, n)
	switch kind {
	case "random":
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	case "text":
		words := []string{"alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "0x7ffd1234 "}
		var buf bytes.Buffer
		for buf.Len() < n {
			buf.WriteString(words[rng.IntN(len(words))])
		}
		copy(b, buf.Bytes())
	case "zero":
	default:
		panic("unknown fill kind " + kind)
	}
	return b
}

// runOf returns a run at page offset startPage made of the given kinds, one
// page each.
func runOf(rng *rand.Rand, startPage int, kinds ...string) Run {
	var data []byte
	for _, kind := range kinds {
		data = append(data, fill(rng, kind, page)...)
	}
	return Run{Off: uint64(startPage * page), Len: uint64(len(data)), Data: data}
}

// repeat returns kind n times.
func repeat(kind string, n int) []string {
	kinds := make([]string, n)
	for i := range kinds {
		kinds[i] = kind
	}
	return kinds
}

// testImage builds an image whose regions cover the cases of the format:
// holes between runs, zero pages inside runs, runs spanning several frames,
// many small runs sharing a frame, and a region that was not saved.
func testImage(pid int, seed uint64) *Image {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	mixed := append(append(repeat("random", 100), repeat("zero", 30)...), repeat("text", 300)...)
	mixed = append(mixed, "zero", "random", "zero", "text")

	var small []Run
	for i := range 40 {
		kinds := []string{"text", "random", "zero"}
		small = append(small, runOf(rng, 3*i, kinds[i%3], kinds[(i+1)%3]))
	}

	regions := []Region{
		{Start: 0x555500000000, End: 0x555500000000 + 64*page, Perms: "rw-p", Path: "[heap]", Saved: true, Runs: []Run{
			runOf(rng, 0, "random", "zero", "text", "text", "zero"),
			runOf(rng, 20, repeat("text", 20)...),
			runOf(rng, 50, "zero"),
			runOf(rng, 63, "random"),
		}},
		{Start: 0x7f0000000000, End: 0x7f0000000000 + 600*page, Perms: "rw-p", Saved: true, Runs: []Run{
			runOf(rng, 10, mixed...),
		}},
		{Start: 0x7fff00000000, End: 0x7fff00000000 + 2*page, Perms: "r--p", Path: "[vvar]", SkipReason: "vvar"},
		{Start: 0x7f1000000000, End: 0x7f1000000000 + 130*page, Perms: "rw-s", Path: "/dev/shm/x", Saved: true, Runs: small},
	}
	return &Image{
		Process:  testProcess(pid),
		Creds:    Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1000, 1000, 1000}},
		Comm:     "target",
		Exe:      "/usr/bin/target",
		Captured: time.Date(2026, 12, 4, 21, 0, 0, int(seed), time.UTC),
		Frozen:   3200 * time.Microsecond,
		XCR0:     0xe7,
		Threads: []Thread{
			{TID: pid, Xstate: fill(rng, "random", 2432), SigMask: 1 << 9},
			{TID: pid + 1, Xstate: fill(rng, "random", 2432)},
		},
		Maps:    []byte("555500000000-555500040000 rw-p 00000000 00:00 0 [heap]\n"),
		Regions: regions,
		FDs:     []FD{{Num: 0, Kind: KindTTY, Target: "/dev/pts/0"}},
		Brk:     0x555500040000,
		Cwd:     "/tmp",
	}
}

// regionBytes returns the whole contents of region r as a reader must see
// them: run data at its offsets, zeros elsewhere.
func regionBytes(r *Region) []byte {
	b := make([]byte, r.Len())
	for _, run := range r.Runs {
		copy(b[run.Off:], run.Data)
	}
	return b
}

// runBytes returns the sum of the run lengths of img.
func runBytes(img *Image) uint64 {
	var n uint64
	for _, r := range img.Regions {
		for _, run := range r.Runs {
			n += run.Len
		}
	}
	return n
}

// logBuffer collects log output from concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// openTestStore opens a store in a new temporary directory and returns it
// with its log.
func openTestStore(t testing.TB) (*Store, *logBuffer) {
	t.Helper()
	return openStoreAt(t, t.TempDir()+"/store")
}

func openStoreAt(t testing.TB, dir string) (*Store, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Open(dir, log)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s, logs
}

// load loads a snapshot and closes it when the test ends.
func load(t testing.TB, s *Store, p ProcessID, name string) *Snapshot {
	t.Helper()
	snap, err := s.Load(p, name)
	if err != nil {
		t.Fatalf("Load(%d, %s): %v", p.PID, name, err)
	}
	t.Cleanup(func() {
		if err := snap.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return snap
}

// names returns the names of infos in order.
func names(infos []Info) []string {
	out := make([]string, len(infos))
	for i, info := range infos {
		out[i] = info.Name
	}
	return out
}

// firstDiff describes where a and b differ first.
func firstDiff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("byte %d: %#02x != %#02x", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(a), len(b))
}

// dataPath returns the path of the data file of a loaded local snapshot.
func dataPath(snap *Snapshot) string {
	return filepath.Join(filepath.Dir(snap.dir), dataFileName(snap.id))
}

// writeDataSynced writes the data file of img into dir, as a save does
// before its commit, and waits until it is synced.
func writeDataSynced(t *testing.T, dir string, img *Image, src MemorySource, link *baseLink) *dataFile {
	t.Helper()
	data, err := writeData(dir, img, src, link)
	if err != nil {
		t.Fatalf("writeData: %v", err)
	}
	if err := data.synced.wait(); err != nil {
		t.Fatalf("sync data file: %v", err)
	}
	return data
}
