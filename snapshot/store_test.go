package snapshot

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(4242, 1)

	info, err := s.Save(img, "before-update")
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	if info.Name != "before-update" || info.Process != img.Process || info.UID != 1000 {
		t.Errorf("Save returned name %q process %+v uid %d", info.Name, info.Process, info.UID)
	}
	if info.Threads != 2 || info.Regions != 4 || info.Comm != "target" || info.Exe != "/usr/bin/target" {
		t.Errorf("Save returned threads %d regions %d comm %q exe %q", info.Threads, info.Regions, info.Comm, info.Exe)
	}
	if info.Bytes != runBytes(img) {
		t.Errorf("Bytes = %d, want the sum of run lengths %d", info.Bytes, runBytes(img))
	}
	if !info.Captured.Equal(img.Captured) || info.Frozen != img.Frozen {
		t.Errorf("Captured %v frozen %v, want %v and %v", info.Captured, info.Frozen, img.Captured, img.Frozen)
	}

	snap := load(t, s, img.Process, "before-update")
	if !reflect.DeepEqual(snap.Info, *info) {
		t.Errorf("Load Info = %+v, Save returned %+v", snap.Info, *info)
	}
	if info.Stored != storedSize(t, snap) {
		t.Errorf("Stored = %d, manifest and data file total %d", info.Stored, storedSize(t, snap))
	}
	checkMetadata(t, img, snap.Image)
	for i := range img.Regions {
		want := regionBytes(&img.Regions[i])
		got := make([]byte, len(want))
		if err := snap.ReadRegion(i, got, 0); err != nil {
			t.Fatalf("ReadRegion(%d) whole: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("region %d differs at %s", i, firstDiff(got, want))
		}
	}
}

// checkMetadata compares everything but memory bytes of a saved and a loaded
// image.
func checkMetadata(t *testing.T, saved, loaded *Image) {
	t.Helper()
	if !bytes.Equal(loaded.Maps, saved.Maps) {
		t.Errorf("Maps = %q, want %q", loaded.Maps, saved.Maps)
	}
	if !reflect.DeepEqual(loaded.Threads, saved.Threads) {
		t.Errorf("Threads differ after load")
	}
	if !reflect.DeepEqual(loaded.FDs, saved.FDs) || loaded.Brk != saved.Brk || loaded.Cwd != saved.Cwd || loaded.XCR0 != saved.XCR0 {
		t.Errorf("FDs, brk, cwd or xcr0 differ after load")
	}
	for i := range saved.Regions {
		want := saved.Regions[i]
		got := loaded.Regions[i]
		if got.Start != want.Start || got.End != want.End || got.Perms != want.Perms || got.Path != want.Path || got.Saved != want.Saved {
			t.Errorf("region %d = %+v, want %+v", i, got, want)
		}
		if len(got.Runs) != len(want.Runs) {
			t.Fatalf("region %d has %d runs, want %d", i, len(got.Runs), len(want.Runs))
		}
		for j, run := range got.Runs {
			if run.Off != want.Runs[j].Off || run.Len != want.Runs[j].Len || run.Data != nil {
				t.Errorf("region %d run %d = %d+%d (data %v), want %d+%d without data",
					i, j, run.Off, run.Len, run.Data != nil, want.Runs[j].Off, want.Runs[j].Len)
			}
		}
	}
}

// storedSize returns the size of the manifest and the data file of a
// loaded local snapshot.
func storedSize(t *testing.T, snap *Snapshot) uint64 {
	t.Helper()
	var n uint64
	for _, path := range []string{snap.dir, dataPath(snap)} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatalf("stat %s: %v", path, err)
		}
		n += uint64(info.Size())
	}
	return n
}

func TestReadRegionRandomAccess(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(4242, 2)
	if _, err := s.Save(img, "x"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	snap := load(t, s, img.Process, "x")

	rng := rand.New(rand.NewPCG(9, 9))
	for range 2000 {
		i := rng.IntN(len(img.Regions))
		want := regionBytes(&img.Regions[i])
		off := rng.Uint64N(uint64(len(want)) + 1)
		n := rng.Uint64N(min(uint64(len(want))-off, 3*frameSize) + 1)

		got := bytes.Repeat([]byte{0xa5}, int(n))
		if err := snap.ReadRegion(i, got, off); err != nil {
			t.Fatalf("ReadRegion(%d, %d bytes, %d): %v", i, n, off, err)
		}
		if !bytes.Equal(got, want[off:off+n]) {
			t.Fatalf("ReadRegion(%d, %d bytes, %d) differs at %s", i, n, off, firstDiff(got, want[off:off+n]))
		}
	}
}

func TestReadRegionOutOfRange(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(4242, 3)
	if _, err := s.Save(img, "x"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	snap := load(t, s, img.Process, "x")
	size := img.Regions[0].Len()

	tests := []struct {
		name   string
		region int
		off    uint64
		n      int
	}{
		{"region below zero", -1, 0, 1},
		{"region past the last", len(img.Regions), 0, 1},
		{"offset past the end", 0, size + 1, 0},
		{"read over the end", 0, size - 10, 11},
		{"huge offset", 0, ^uint64(0), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := snap.ReadRegion(tt.region, make([]byte, tt.n), tt.off)
			if !errors.Is(err, unix.EINVAL) {
				t.Errorf("ReadRegion = %v, want EINVAL", err)
			}
		})
	}
	if err := snap.ReadRegion(0, make([]byte, 10), size-10); err != nil {
		t.Errorf("read of the last 10 bytes: %v", err)
	}
}

func TestZeroPagesNotStored(t *testing.T) {
	s, _ := openTestStore(t)
	const size = 8 << 20
	img := &Image{
		Process: testProcess(77),
		Regions: []Region{{Start: 0x10000, End: 0x10000 + size, Perms: "rw-p", Saved: true,
			Runs: []Run{{Off: 0, Len: size, Data: make([]byte, size)}}}},
	}

	info, err := s.Save(img, "zeros")
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	if info.Bytes != size {
		t.Errorf("Bytes = %d, want %d", info.Bytes, size)
	}
	snap := load(t, s, img.Process, "zeros")
	if snap.index.dataSize() != 0 {
		t.Errorf("memory of all-zero pages is %d bytes, want none", snap.index.dataSize())
	}
	if info.Stored != storedSize(t, snap) || info.Stored > 8192 {
		t.Errorf("Stored = %d for all-zero memory, want only metadata", info.Stored)
	}
	if len(snap.index.frames) != 0 || len(snap.index.regions[0]) != 1 || snap.index.regions[0][0].Kind != extentZero {
		t.Errorf("index has %d frames and extents %+v, want no frame and one zero extent",
			len(snap.index.frames), snap.index.regions[0])
	}
	got := bytes.Repeat([]byte{1}, 1<<20)
	if err := snap.ReadRegion(0, got, 3<<20); err != nil {
		t.Fatalf("ReadRegion: %v", err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Errorf("zero pages read back as nonzero")
	}
}

func TestSaveNameTaken(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(501, 5)
	if _, err := s.Save(img, "base"); err != nil {
		t.Fatalf("Save: %v", err)
	}

	_, err := s.Save(img, "base")
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second Save(base) = %v, want EEXIST", err)
	}
	list, err := s.Snapshots(img.Process)
	if err != nil {
		t.Fatalf("Snapshots: %v", err)
	}
	if !slices.Equal(names(list), []string{"base"}) {
		t.Errorf("Snapshots = %v, want [base]", names(list))
	}
	checkNoTemp(t, s)
}

func TestSaveInvalid(t *testing.T) {
	s, _ := openTestStore(t)
	for _, name := range []string{"-x", ".hidden", "a/b", "latest", "capture", strings.Repeat("a", 65)} {
		if _, err := s.Save(testImage(502, 6), name); !errors.Is(err, unix.EINVAL) {
			t.Errorf("Save(%q) = %v, want EINVAL", name, err)
		}
	}

	bad := testImage(502, 6)
	bad.Regions[0].Runs[1].Data = bad.Regions[0].Runs[1].Data[:100]
	if _, err := s.Save(bad, ""); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Save of a run with short data = %v, want EINVAL", err)
	}
	bad = testImage(502, 6)
	bad.Regions[0].Runs[0], bad.Regions[0].Runs[1] = bad.Regions[0].Runs[1], bad.Regions[0].Runs[0]
	if _, err := s.Save(bad, ""); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Save of unsorted runs = %v, want EINVAL", err)
	}
	if _, err := s.Save(nil, ""); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Save(nil) = %v, want EINVAL", err)
	}
	if list, _ := s.List(0); len(list) != 0 {
		t.Errorf("List after failed saves = %v, want nothing", names(list))
	}
}

func TestLoadRemoveMissing(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(503, 7)
	if _, err := s.Save(img, "kept"); err != nil {
		t.Fatalf("Save: %v", err)
	}

	if _, err := s.Load(img.Process, "gone"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load of a missing name = %v, want ENOENT", err)
	}
	if _, err := s.Load(testProcess(999), "kept"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load for a process without snapshots = %v, want ENOENT", err)
	}
	if err := s.Remove(img.Process, "gone"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Remove of a missing name = %v, want ENOENT", err)
	}
	if err := s.Remove(img.Process, "kept"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := s.Load(img.Process, "kept"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load after Remove = %v, want ENOENT", err)
	}
	checkNoTemp(t, s)
}

func TestListAndSnapshots(t *testing.T) {
	s, _ := openTestStore(t)
	a, b := testImage(600, 10), testImage(601, 11)
	later := testImage(600, 12)
	for _, save := range []struct {
		img  *Image
		name string
	}{{later, "second"}, {a, "first"}, {b, "other"}} {
		if _, err := s.Save(save.img, save.name); err != nil {
			t.Fatalf("Save %s: %v", save.name, err)
		}
	}

	all, err := s.List(0)
	if err != nil {
		t.Fatalf("List(0): %v", err)
	}
	if !slices.Equal(names(all), []string{"first", "second", "other"}) {
		t.Errorf("List(0) = %v, want [first second other]", names(all))
	}
	one, err := s.List(601)
	if err != nil {
		t.Fatalf("List(601): %v", err)
	}
	if !slices.Equal(names(one), []string{"other"}) {
		t.Errorf("List(601) = %v, want [other]", names(one))
	}
	mine, err := s.Snapshots(a.Process)
	if err != nil {
		t.Fatalf("Snapshots: %v", err)
	}
	if !slices.Equal(names(mine), []string{"first", "second"}) {
		t.Errorf("Snapshots = %v, want oldest capture first [first second]", names(mine))
	}
	none, err := s.Snapshots(testProcess(4))
	if err != nil || none == nil || len(none) != 0 {
		t.Errorf("Snapshots of an unknown process = %v, %v, want an empty list", none, err)
	}
}

func TestBootIDSeparatesProcesses(t *testing.T) {
	s, _ := openTestStore(t)
	old := testImage(700, 13)
	now := testImage(700, 14)
	now.Process.BootID = "11111111-2222-3333-4444-555555555555"

	if _, err := s.Save(old, ""); err != nil {
		t.Fatalf("Save old boot: %v", err)
	}
	info, err := s.Save(now, "")
	if err != nil {
		t.Fatalf("Save new boot: %v", err)
	}
	if info.Name != "snap-1" {
		t.Errorf("first auto name of the new boot's process = %s, want snap-1", info.Name)
	}

	for _, img := range []*Image{old, now} {
		list, err := s.Snapshots(img.Process)
		if err != nil {
			t.Fatalf("Snapshots: %v", err)
		}
		if len(list) != 1 || list[0].Process != img.Process {
			t.Errorf("Snapshots(boot %s) = %+v, want only its own snap-1", img.Process.BootID, list)
		}
		snap := load(t, s, img.Process, "snap-1")
		if !snap.Info.Captured.Equal(img.Captured) {
			t.Errorf("Load(boot %s) returned the snapshot captured %v", img.Process.BootID, snap.Info.Captured)
		}
	}
	if all, _ := s.List(700); len(all) != 2 {
		t.Errorf("List(700) = %v, want both boots' snapshots", names(all))
	}
}

func TestConcurrentSaves(t *testing.T) {
	first, _ := openTestStore(t)
	second, _ := openStoreAt(t, first.Dir())
	img := testImage(800, 15)

	const perStore = 6
	var wg sync.WaitGroup
	results := make(chan string, 2*perStore)
	for _, s := range []*Store{first, second} {
		for range perStore {
			wg.Go(func() {
				info, err := s.Save(img, "")
				if err != nil {
					t.Errorf("concurrent Save: %v", err)
					return
				}
				results <- info.Name
			})
		}
	}
	wg.Wait()
	close(results)

	var got []string
	for name := range results {
		got = append(got, name)
	}
	var want []string
	for n := range 2 * perStore {
		want = append(want, autoName(uint64(n+1)))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("concurrent auto names = %v, want each of %v once", got, want)
	}
	list, err := first.Snapshots(img.Process)
	if err != nil {
		t.Fatalf("Snapshots: %v", err)
	}
	if len(list) != 2*perStore {
		t.Errorf("Snapshots lists %d, want %d", len(list), 2*perStore)
	}
}

func TestOpenCreatesPrivateStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "store")
	s, _ := openStoreAt(t, dir)
	info, err := os.Stat(s.Dir())
	if err != nil {
		t.Fatalf("stat store: %v", err)
	}
	if info.Mode().Perm() != 0o700 {
		t.Errorf("store mode = %v, want 0700", info.Mode().Perm())
	}

	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	openStoreAt(t, empty)
	if info, _ := os.Stat(empty); info.Mode().Perm() != 0o700 {
		t.Errorf("mode of an empty directory opened as a store = %v, want 0700", info.Mode().Perm())
	}

	if err := os.WriteFile(filepath.Join(dir, "kept"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, unix.EPERM) {
		t.Errorf("Open of a store other users can read = %v, want EPERM", err)
	}
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o755 {
		t.Errorf("store mode after the rejected Open = %v, want 0755 left as it was", info.Mode().Perm())
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	if _, err := Open("", nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Open of an empty path = %v, want EINVAL", err)
	}

	if err := os.Chown(dir, os.Geteuid()+1000, -1); err != nil {
		t.Fatalf("chown: %v", err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, unix.EPERM) {
		t.Errorf("Open of a store owned by another user = %v, want EPERM", err)
	}
}

// checkNoTemp fails when the store has work directories left.
func checkNoTemp(t *testing.T, s *Store) {
	t.Helper()
	leftovers, err := filepath.Glob(filepath.Join(s.Dir(), tmpPrefix+"*"))
	if err != nil {
		t.Fatalf("glob: %v", err)
	}
	if len(leftovers) != 0 {
		t.Errorf("work directories left in the store: %v", leftovers)
	}
}

func TestReadRegionConcurrent(t *testing.T) {
	s, _ := openTestStore(t)
	img := testImage(4243, 40)
	if _, err := s.Save(img, "x"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	snap := load(t, s, img.Process, "x")

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				i := rng.IntN(len(img.Regions))
				want := regionBytes(&img.Regions[i])
				off := rng.Uint64N(uint64(len(want)))
				n := rng.Uint64N(min(uint64(len(want))-off, 256<<10) + 1)
				got := make([]byte, n)
				if err := snap.ReadRegion(i, got, off); err != nil {
					t.Errorf("ReadRegion(%d, %d bytes, %d): %v", i, n, off, err)
					return
				}
				if !bytes.Equal(got, want[off:off+n]) {
					t.Errorf("ReadRegion(%d, %d bytes, %d) differs at %s", i, n, off, firstDiff(got, want[off:off+n]))
					return
				}
			}
		})
	}
	wg.Wait()
}
