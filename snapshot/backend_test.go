package snapshot

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// testBackend opens empty stores of one backend and reaches into them the
// way a crash or a damaged disk would.
type testBackend struct {
	name string

	// open returns an empty store, and a function that opens another
	// Store on the same storage.
	open func(t *testing.T) (s *Store, again func() *Store)

	// crash leaves the data of a save of img that died before its commit.
	crash func(t *testing.T, s *Store, img *Image)

	// leftovers returns the work directories or data objects that no
	// committed snapshot uses.
	leftovers func(t *testing.T, s *Store) []string

	// flipMemoryByte inverts byte off of the stored memory of snap.
	flipMemoryByte func(t *testing.T, snap *Snapshot, off int64)
}

var testBackends = []testBackend{
	{
		name: "local",
		open: func(t *testing.T) (*Store, func() *Store) {
			s, _ := openTestStore(t)
			return s, func() *Store {
				again, _ := openStoreAt(t, s.Dir())
				return again
			}
		},
		crash: func(t *testing.T, s *Store, img *Image) {
			tmp, err := s.makeTempDir()
			if err != nil {
				t.Fatalf("makeTempDir: %v", err)
			}
			writeDataSynced(t, tmp.path, img, runData{img}, nil)
			if err := tmp.unlock(); err != nil {
				t.Fatalf("unlock: %v", err)
			}
		},
		leftovers: func(t *testing.T, s *Store) []string {
			found, err := filepath.Glob(filepath.Join(s.Dir(), tmpPrefix+"*"))
			if err != nil {
				t.Fatalf("glob: %v", err)
			}
			return found
		},
		flipMemoryByte: func(t *testing.T, snap *Snapshot, off int64) {
			flipByte(t, dataPath(snap), off)
		},
	},
	{
		name: "s3",
		open: func(t *testing.T) (*Store, func() *Store) {
			srv := startS3(t)
			s, _ := openS3Store(t, srv, "host-a")
			return s, func() *Store {
				again, _ := openS3Store(t, srv, "host-a")
				return again
			}
		},
		crash: func(t *testing.T, s *Store, img *Image) {
			b := s3Of(t, s)
			if _, err := b.upload(b.processPrefix(img.Process), newDataID(), img, runData{img}); err != nil {
				t.Fatalf("upload: %v", err)
			}
		},
		leftovers: dataKeysWithoutManifest,
		flipMemoryByte: func(t *testing.T, snap *Snapshot, off int64) {
			memory := snap.memory.(*s3Object)
			flipObjectByte(t, memory.s, memory.key, off)
		},
	},
}

// dataKeysWithoutManifest returns the data objects that no manifest of a
// committed snapshot names.
func dataKeysWithoutManifest(t *testing.T, s *Store) []string {
	t.Helper()
	used := map[string]bool{}
	list, err := s.List(0)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	b := s3Of(t, s)
	for _, info := range list {
		data, err := b.getAll(manifestKey(b.processPrefix(info.Process), info.Name), maxManifestSize)
		if err != nil {
			t.Fatalf("get manifest of %s: %v", info.Name, err)
		}
		m, err := parseManifest(data)
		if err != nil {
			t.Fatalf("parse manifest of %s: %v", info.Name, err)
		}
		for _, file := range dataFiles {
			used[dataKey(b.processPrefix(info.Process), m.Data, file)] = true
		}
	}

	var unused []string
	for _, key := range dataKeys(t, s) {
		if !used[key] {
			unused = append(unused, key)
		}
	}
	return unused
}

// forEachBackend runs test once for every backend.
func forEachBackend(t *testing.T, test func(t *testing.T, tb testBackend)) {
	for _, tb := range testBackends {
		t.Run(tb.name, func(t *testing.T) { test(t, tb) })
	}
}

func TestBackendRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(4242, 1)

		info, err := s.Save(img, "before-update")
		if err != nil {
			t.Fatalf("Save: %v", err)
		}
		if info.Name != "before-update" || info.Process != img.Process || info.UID != 1000 {
			t.Errorf("Save returned name %q process %+v uid %d", info.Name, info.Process, info.UID)
		}
		if info.Bytes != runBytes(img) {
			t.Errorf("Bytes = %d, want the sum of run lengths %d", info.Bytes, runBytes(img))
		}

		list, err := s.List(0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(list) != 1 || !reflect.DeepEqual(list[0], *info) {
			t.Errorf("List = %+v, want only %+v", list, *info)
		}

		snap := load(t, s, img.Process, "before-update")
		if !reflect.DeepEqual(snap.Info, *info) {
			t.Errorf("Load Info = %+v, Save returned %+v", snap.Info, *info)
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
	})
}

func TestBackendLoadImage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(4243, 1)
		saved, err := s.Save(img, "plan")
		if err != nil {
			t.Fatalf("Save: %v", err)
		}

		info, got, err := s.LoadImage(img.Process, "plan")
		if err != nil {
			t.Fatalf("LoadImage: %v", err)
		}
		if !reflect.DeepEqual(info, *saved) {
			t.Errorf("LoadImage Info = %+v, Save returned %+v", info, *saved)
		}
		checkMetadata(t, img, got)

		if _, _, err := s.LoadImage(img.Process, "missing"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("LoadImage of a missing snapshot: %v, want ENOENT", err)
		}
		if _, _, err := s.LoadImage(img.Process, "../plan"); !errors.Is(err, unix.EINVAL) {
			t.Errorf("LoadImage of an invalid name: %v, want EINVAL", err)
		}
	})
}

func TestBackendRandomAccess(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(4242, 2)
		if _, err := s.Save(img, "x"); err != nil {
			t.Fatalf("Save: %v", err)
		}
		snap := load(t, s, img.Process, "x")

		rng := rand.New(rand.NewPCG(9, 9))
		for range 1000 {
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
	})
}

func TestBackendAutoNames(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, again := tb.open(t)
		img := testImage(500, 4)
		save := func(name string) string {
			t.Helper()
			info, err := s.Save(img, name)
			if err != nil {
				t.Fatalf("Save(%q): %v", name, err)
			}
			return info.Name
		}

		if got := save(""); got != "snap-1" {
			t.Errorf("first auto name = %s, want snap-1", got)
		}
		if got := save(""); got != "snap-2" {
			t.Errorf("second auto name = %s, want snap-2", got)
		}
		if err := s.Remove(img.Process, "snap-2"); err != nil {
			t.Fatalf("Remove snap-2: %v", err)
		}
		if got := save(""); got != "snap-3" {
			t.Errorf("auto name after removing snap-2 = %s, want snap-3", got)
		}
		save("snap-7")
		if got := save(""); got != "snap-8" {
			t.Errorf("auto name after a user took snap-7 = %s, want snap-8", got)
		}

		for _, name := range []string{"snap-1", "snap-3", "snap-7", "snap-8"} {
			if err := s.Remove(img.Process, name); err != nil {
				t.Fatalf("Remove %s: %v", name, err)
			}
		}
		info, err := again().Save(img, "")
		if err != nil {
			t.Fatalf("Save in a second Store: %v", err)
		}
		if info.Name != "snap-9" {
			t.Errorf("auto name after removing every snapshot = %s, want snap-9", info.Name)
		}
	})
}

func TestBackendConcurrentAutoNames(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		first, again := tb.open(t)
		second := again()
		img := testImage(800, 15)

		const perStore = 4
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

		var got, want []string
		for name := range results {
			got = append(got, name)
		}
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
		if left := tb.leftovers(t, first); len(left) != 0 {
			t.Errorf("data left by saves that lost a name: %v", left)
		}
	})
}

func TestBackendNameTaken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
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
		if left := tb.leftovers(t, s); len(left) != 0 {
			t.Errorf("data left by the rejected save: %v", left)
		}
	})
}

func TestBackendRemove(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(503, 7)
		for _, name := range []string{"kept", "gone"} {
			if _, err := s.Save(img, name); err != nil {
				t.Fatalf("Save(%s): %v", name, err)
			}
		}

		if err := s.Remove(img.Process, "gone"); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if _, err := s.Load(img.Process, "gone"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("Load after Remove = %v, want ENOENT", err)
		}
		if err := s.Remove(img.Process, "gone"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("second Remove = %v, want ENOENT", err)
		}
		if _, err := s.Load(testProcess(999), "kept"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("Load for a process without snapshots = %v, want ENOENT", err)
		}
		list, err := s.List(0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if !slices.Equal(names(list), []string{"kept"}) {
			t.Errorf("List after Remove = %v, want [kept]", names(list))
		}
		if left := tb.leftovers(t, s); len(left) != 0 {
			t.Errorf("data left by Remove: %v", left)
		}
		load(t, s, img.Process, "kept")
	})
}

func TestBackendCrashBeforeCommit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(900, 20)
		tb.crash(t, s, img)

		list, err := s.List(0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(list) != 0 {
			t.Errorf("List after a crash = %v, want nothing", names(list))
		}
		if list, _ := s.Snapshots(img.Process); len(list) != 0 {
			t.Errorf("Snapshots after a crash = %v, want nothing", names(list))
		}
		if len(tb.leftovers(t, s)) == 0 {
			t.Fatalf("the crash left no data, so the test proves nothing")
		}

		info, err := s.Save(img, "")
		if err != nil {
			t.Fatalf("Save after the crash: %v", err)
		}
		if info.Name != "snap-1" {
			t.Errorf("first auto name after the crash = %s, want snap-1", info.Name)
		}
		if list, _ := s.List(0); !slices.Equal(names(list), []string{"snap-1"}) {
			t.Errorf("List after a save = %v, want [snap-1]", names(list))
		}
	})
}

func TestBackendCorruptFrame(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(901, 21)
		if _, err := s.Save(img, "x"); err != nil {
			t.Fatalf("Save: %v", err)
		}
		snap := load(t, s, img.Process, "x")

		// The last frame holds data of region 3 only.
		last := snap.index.frames[len(snap.index.frames)-1]
		tb.flipMemoryByte(t, snap, int64(last.FileOff)+int64(last.CLen)/2)

		fresh := load(t, s, img.Process, "x")
		got := make([]byte, img.Regions[3].Len())
		err := fresh.ReadRegion(3, got, 0)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadRegion of a corrupt frame = %v, want ErrCorrupt", err)
		}
		if !errors.Is(err, unix.EIO) {
			t.Errorf("ErrCorrupt does not wrap EIO: %v", err)
		}

		want := regionBytes(&img.Regions[0])
		got = make([]byte, len(want))
		if err := fresh.ReadRegion(0, got, 0); err != nil || !bytes.Equal(got, want) {
			t.Errorf("region 0, stored in intact frames: err %v, equal %v", err, bytes.Equal(got, want))
		}
	})
}
