package snapshot

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCrashBeforeCommitListsNothing(t *testing.T) {
	s, logs := openTestStore(t)
	img := testImage(900, 20)

	// A save that wrote every data file and the manifest but crashed before
	// its rename: the work directory stays in the store's top directory.
	tmp, err := s.makeTempDir()
	if err != nil {
		t.Fatalf("makeTempDir: %v", err)
	}
	writeDataSynced(t, tmp.path, img, runData{img}, nil)
	if err := tmp.unlock(); err != nil {
		t.Fatalf("unlock: %v", err)
	}

	// A directory with a snapshot's name but no manifest file, as a copy
	// by hand could leave.
	proc, created, err := s.ensureProcessDir(img.Process, 1000)
	if err == nil {
		err = created.wait()
	}
	if err != nil {
		t.Fatalf("ensureProcessDir: %v", err)
	}
	half := filepath.Join(proc, "half")
	if err := os.Mkdir(half, 0o700); err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	writeDataSynced(t, half, img, runData{img}, nil)

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
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "half") {
		t.Errorf("skipping the directory without manifest logged no warning: %s", logs.String())
	}
	if _, err := s.Load(img.Process, "half"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load of a directory without manifest = %v, want ENOENT", err)
	}

	_, reopenLogs := openStoreAt(t, s.Dir())
	if _, err := os.Stat(tmp.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open left the work directory %s: %v", tmp.path, err)
	}
	if !strings.Contains(reopenLogs.String(), "removing unfinished snapshot data") {
		t.Errorf("sweep logged no warning: %s", reopenLogs.String())
	}
	if _, err := s.Save(img, ""); err != nil {
		t.Errorf("Save after the crash: %v", err)
	}
}

func TestSweepKeepsLockedWork(t *testing.T) {
	s, _ := openTestStore(t)
	tmp, err := s.makeTempDir()
	if err != nil {
		t.Fatalf("makeTempDir: %v", err)
	}
	t.Cleanup(func() { s.discard(tmp) })

	openStoreAt(t, s.Dir())
	if _, err := os.Stat(tmp.path); err != nil {
		t.Errorf("Open of a second Store deleted a save in progress: %v", err)
	}
}

func TestCorruptFrameEveryByte(t *testing.T) {
	s, _ := openTestStore(t)
	rng := rand.New(rand.NewPCG(3, 4))
	data := fill(rng, "text", 16*page)
	img := &Image{Process: testProcess(902), Regions: []Region{{Start: 0, End: 16 * page, Saved: true,
		Runs: []Run{{Off: 0, Len: 16 * page, Data: data}}}}}
	if _, err := s.Save(img, "x"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	snap := load(t, s, img.Process, "x")
	path := dataPath(snap)
	size := int64(snap.index.dataSize())

	// A damaged byte the decoder never uses may still give the right
	// bytes, which the hash proves; any other must give ErrCorrupt.
	detected := int64(0)
	for off := range size {
		flipByte(t, path, off)
		fresh := load(t, s, img.Process, "x")
		got := make([]byte, len(data))
		err := fresh.ReadRegion(0, got, 0)
		switch {
		case errors.Is(err, ErrCorrupt):
			detected++
		case err != nil:
			t.Fatalf("flipped byte %d of %d: ReadRegion = %v, want ErrCorrupt", off, size, err)
		case !bytes.Equal(got, data):
			t.Fatalf("flipped byte %d of %d: ReadRegion returned wrong bytes at %s", off, size, firstDiff(got, data))
		}
		flipByte(t, path, off)
	}
	if detected < size*9/10 {
		t.Errorf("only %d of %d flipped bytes gave ErrCorrupt", detected, size)
	}
}

func TestCorruptMetadata(t *testing.T) {
	for _, file := range []string{indexFile, imageFile, mapsFile} {
		t.Run(file, func(t *testing.T) {
			s, _ := openTestStore(t)
			img := testImage(903, 22)
			if _, err := s.Save(img, "x"); err != nil {
				t.Fatalf("Save: %v", err)
			}
			snap := load(t, s, img.Process, "x")
			m, err := readManifestFile(snap.dir)
			if err != nil {
				t.Fatalf("read manifest: %v", err)
			}
			flipByte(t, dataPath(snap), int64(sectionOffset(m, file))+20)

			if _, err := s.Load(img.Process, "x"); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Load with a damaged %s = %v, want ErrCorrupt", file, err)
			}
		})
	}

	t.Run(manifestFile, func(t *testing.T) {
		s, logs := openTestStore(t)
		img := testImage(903, 22)
		if _, err := s.Save(img, "x"); err != nil {
			t.Fatalf("Save: %v", err)
		}
		flipByte(t, load(t, s, img.Process, "x").dir, 60)

		if list, _ := s.List(0); len(list) != 0 {
			t.Errorf("List with a damaged manifest = %v, want nothing", names(list))
		}
		if !strings.Contains(logs.String(), "level=WARN") {
			t.Errorf("skipping a damaged manifest logged no warning")
		}
		if _, err := s.Load(img.Process, "x"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Load with a damaged manifest = %v, want ErrCorrupt", err)
		}
	})

	t.Run("truncated memory", func(t *testing.T) {
		s, _ := openTestStore(t)
		img := testImage(903, 22)
		if _, err := s.Save(img, "x"); err != nil {
			t.Fatalf("Save: %v", err)
		}
		if err := os.Truncate(dataPath(load(t, s, img.Process, "x")), 100); err != nil {
			t.Fatalf("truncate: %v", err)
		}
		if list, _ := s.List(0); len(list) != 0 {
			t.Errorf("List with a truncated memory file = %v, want nothing", names(list))
		}
	})
}

// flipByte inverts the byte at off of a read-only store file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer file.Close()

	b := make([]byte, 1)
	if _, err := file.ReadAt(b, off); err != nil {
		t.Fatalf("read byte %d of %s: %v", off, path, err)
	}
	b[0] ^= 0xff
	if _, err := file.WriteAt(b, off); err != nil {
		t.Fatalf("write byte %d of %s: %v", off, path, err)
	}
}

func TestSaveNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	s, _ := openStoreAt(t, filepath.Join(mnt, "store"))

	rng := rand.New(rand.NewPCG(5, 6))
	const size = 4 << 20
	big := &Image{Process: testProcess(904), Regions: []Region{{Start: 0, End: size, Saved: true,
		Runs: []Run{{Off: 0, Len: size, Data: fill(rng, "random", size)}}}}}
	_, err := s.Save(big, "")
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Save of 4 MiB of random bytes into 2 MiB = %v, want ENOSPC", err)
	}
	checkNoTemp(t, s)
	if list, _ := s.List(0); len(list) != 0 {
		t.Errorf("List after ENOSPC = %v, want nothing", names(list))
	}

	small := testImage(904, 23)
	info, err := s.Save(small, "")
	if err != nil {
		t.Fatalf("Save after ENOSPC: %v", err)
	}
	if info.Name != "snap-1" {
		t.Errorf("first committed auto name = %s, want snap-1", info.Name)
	}
	snap := load(t, s, small.Process, info.Name)
	want := regionBytes(&small.Regions[1])
	got := make([]byte, len(want))
	if err := snap.ReadRegion(1, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read back after ENOSPC: err %v, equal %v", err, bytes.Equal(got, want))
	}
}
