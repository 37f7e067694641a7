package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Regions of the incremental tests. A has two regions of 1024 pages. In
// later captures a new region comes first and A's first region is split in
// two, so a region of a later snapshot has another index than in its base.
var (
	regionsA = []modelRegion{
		{0x10000000, 0x10000000 + 1024*page},
		{0x20000000, 0x20000000 + 1024*page},
	}
	regionsLater = []modelRegion{
		{0x08000000, 0x08000000 + 4*page},
		{0x10000000, 0x10000000 + 512*page},
		{0x10000000 + 512*page, 0x10000000 + 1024*page},
		{0x20000000, 0x20000000 + 1024*page},
	}
	modelKinds = []string{"random", "random", "text", "zero", "hole"}
)

// chain is what saveChain saved: the models, images and Infos of A, B
// and C.
type chain struct {
	models [3]*memoryModel
	images [3]*Image
	infos  [3]*Info
}

// saveChain saves A (full), B relative to A and C relative to B, each
// after 1% of the pages changed; B and C also have a new region.
func saveChain(t *testing.T, s *Store, pid int) chain {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(pid), 7))
	var ch chain
	a := newModel(rng, regionsA, modelKinds)
	ch.models[0], ch.images[0] = a, a.image(pid, "", nil)

	b := a.clone(regionsLater)
	for addr := regionsLater[0].start; addr < regionsLater[0].end; addr += page {
		b.pages[addr] = fill(rng, "text", page)
	}
	changed := b.change(rng, len(a.pages)/100)
	for addr := regionsLater[0].start; addr < regionsLater[0].end; addr += page {
		changed[addr] = true
	}
	ch.models[1], ch.images[1] = b, b.image(pid, "A", changed)

	c := b.clone(regionsLater)
	ch.models[2], ch.images[2] = c, c.image(pid, "B", c.change(rng, len(b.pages)/100))

	for k, name := range []string{"A", "B", "C"} {
		ch.images[k].Captured = ch.images[k].Captured.Add(time.Duration(k) * time.Second)
		ch.infos[k] = saveModel(t, s, ch.images[k], name)
	}
	return ch
}

func TestIncrementalSaveAndRead(t *testing.T) {
	s, _ := openTestStore(t)
	ch := saveChain(t, s, 3100)
	a, b, c, infos := ch.models[0], ch.models[1], ch.models[2], ch.infos
	p := testProcess(3100)

	checkModel(t, s, p, "A", a)
	checkModel(t, s, p, "B", b)
	checkModel(t, s, p, "C", c)

	if infos[1].Stored*20 > infos[0].Stored {
		t.Errorf("B stored %d bytes, A %d: want under 5%%", infos[1].Stored, infos[0].Stored)
	}
	if infos[2].Stored*20 > infos[0].Stored {
		t.Errorf("C stored %d bytes, A %d: want under 5%%", infos[2].Stored, infos[0].Stored)
	}
	if infos[1].Bytes != uint64(len(b.pages))*page {
		t.Errorf("B Bytes = %d, want all %d saved pages", infos[1].Bytes, uint64(len(b.pages))*page)
	}
	if infos[1].Base != "A" || infos[2].Base != "B" || infos[0].Base != "" {
		t.Errorf("Info.Base = %q, %q, %q, want \"\", A, B", infos[0].Base, infos[1].Base, infos[2].Base)
	}
	if list, _ := s.Snapshots(p); len(list) != 3 || list[1].Base != "A" {
		t.Errorf("Snapshots = %+v, want A, B and C with B's base A", list)
	}
}

func TestIncrementalKeepsBaseFlags(t *testing.T) {
	s, _ := openTestStore(t)
	ch := saveChain(t, s, 3101)
	checkBaseFlags(t, s, ch)
}

// checkBaseFlags checks that the loaded images of B and C keep Base and the
// runs, with their flags, exactly as saved.
func checkBaseFlags(t *testing.T, s *Store, ch chain) {
	t.Helper()
	for k, name := range []string{"B", "C"} {
		saved := ch.images[k+1]
		loaded := load(t, s, saved.Process, name).Image
		if loaded.Base != saved.Base {
			t.Errorf("loaded Image.Base of %s = %q, want %q", name, loaded.Base, saved.Base)
		}
		checkMetadata(t, saved, loaded)
		if got, want := runFlags(loaded), runFlags(saved); !reflect.DeepEqual(got, want) {
			t.Errorf("loaded Run.Base flags of %s = %v, want %v", name, got, want)
		}
	}
}

func TestIncrementalPointsPastChains(t *testing.T) {
	s, _ := openTestStore(t)
	saveChain(t, s, 3102)
	p := testProcess(3102)

	c := load(t, s, p, "C")
	want := []string{idOf(t, s, p, "A"), idOf(t, s, p, "B")}
	got := slices.Clone(c.index.sources)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("C points into data %v, want A's and B's %v", got, want)
	}
}

func TestIncrementalRemove(t *testing.T) {
	s, _ := openTestStore(t)
	ch := saveChain(t, s, 3103)
	b, c := ch.models[1], ch.models[2]
	p := testProcess(3103)
	idA := idOf(t, s, p, "A")

	if err := s.Remove(p, "A"); err != nil {
		t.Fatalf("Remove A: %v", err)
	}
	if _, err := s.Load(p, "A"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load of removed A = %v, want ENOENT", err)
	}
	if list, _ := s.Snapshots(p); !slices.Equal(names(list), []string{"B", "C"}) {
		t.Errorf("Snapshots after removing A = %v, want [B C]", names(list))
	}
	if !slices.Contains(dataFilesOf(t, s, p), dataFileName(idA)) {
		t.Errorf("A's data file was deleted while B and C use it")
	}
	checkModel(t, s, p, "B", b)
	checkModel(t, s, p, "C", c)

	if err := s.Remove(p, "B"); err != nil {
		t.Fatalf("Remove B: %v", err)
	}
	rng := rand.New(rand.NewPCG(3103, 1))
	fresh := newModel(rng, regionsA[:1], modelKinds)
	saveModel(t, s, fresh.image(p.PID, "", nil), "B")
	checkModel(t, s, p, "B", fresh)
	checkModel(t, s, p, "C", c)

	for _, name := range []string{"C", "B"} {
		if err := s.Remove(p, name); err != nil {
			t.Fatalf("Remove %s: %v", name, err)
		}
	}
	if left := dataFilesOf(t, s, p); len(left) != 0 {
		t.Errorf("data files left after removing every snapshot: %v", left)
	}
	if left := tempEntries(t, s); len(left) != 0 {
		t.Errorf("work entries left after removals: %v", left)
	}
}

func TestIncrementalBaseErrors(t *testing.T) {
	s, _ := openTestStore(t)
	p := testProcess(3104)
	rng := rand.New(rand.NewPCG(3104, 1))
	a := newModel(rng, regionsA, modelKinds)
	saveModel(t, s, a.image(p.PID, "", nil), "A")
	saveModel(t, s, a.image(3105, "", nil), "other")
	before := dataFilesOf(t, s, p)

	// A page A never saved, marked Base in B.
	uncovered := a.clone(regionsA)
	var hole uint64
	for addr := regionsA[1].start; ; addr += page {
		if _, present := a.pages[addr]; !present {
			hole = addr
			break
		}
	}
	uncovered.pages[hole] = fill(rng, "text", page)

	tests := []struct {
		name, base string
		img        *Image
		wantInMsg  []string
	}{
		{"uncovered page", "A", uncovered.image(p.PID, "A", nil), []string{"A", fmt.Sprintf("%#x", hole)}},
		{"missing base", "none", a.image(p.PID, "none", nil), []string{"none"}},
		{"base of another process", "other", a.image(p.PID, "other", nil), []string{"other"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.SaveFrom(tt.img, "B", strictSource{t, tt.img})
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("SaveFrom = %v, want EINVAL", err)
			}
			for _, word := range tt.wantInMsg {
				if !strings.Contains(err.Error(), word) {
					t.Errorf("error %q does not name %s", err, word)
				}
			}
			if list, _ := s.Snapshots(p); !slices.Equal(names(list), []string{"A"}) {
				t.Errorf("Snapshots after the failed save = %v, want [A]", names(list))
			}
			if got := dataFilesOf(t, s, p); !slices.Equal(got, before) {
				t.Errorf("data files after the failed save = %v, want %v", got, before)
			}
			if left := tempEntries(t, s); len(left) != 0 {
				t.Errorf("work entries left by the failed save: %v", left)
			}
		})
	}
}

func TestIncrementalCorruptBaseFrame(t *testing.T) {
	s, _ := openTestStore(t)
	b := saveChain(t, s, 3106).models[1]
	p := testProcess(3106)
	snapA := load(t, s, p, "A")

	// Damage the first frame of A, which holds the first saved bytes of
	// its region 0, and read B there: B's region 1 starts at that address.
	first := snapA.index.frames[0]
	flipByte(t, dataPath(snapA), int64(first.FileOff+uint64(first.CLen)/2))

	fresh := load(t, s, p, "B")
	got := make([]byte, regionsLater[1].end-regionsLater[1].start)
	err := fresh.ReadRegion(1, got, 0)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadRegion of B over a damaged frame of A = %v, want ErrCorrupt", err)
	}

	want := b.bytesAt(regionsLater[3])
	got = make([]byte, len(want))
	if err := fresh.ReadRegion(3, got, 0); err != nil {
		t.Errorf("ReadRegion of B where A's frames are intact: %v", err)
	}
}

func TestIncrementalSaveCrashSwept(t *testing.T) {
	s, _ := openTestStore(t)
	ch := saveChain(t, s, 3107)
	a, b, c := ch.models[0], ch.models[1], ch.models[2]
	p := testProcess(3107)
	proc, err := s.findProcessDir(p)
	if err != nil {
		t.Fatalf("findProcessDir: %v", err)
	}
	before := dataFilesOf(t, s, p)

	// A save of D relative to C that died between moving its data file
	// into the process directory and moving its manifest there.
	d := c.clone(regionsLater)
	img := d.image(p.PID, "C", d.change(rand.New(rand.NewPCG(1, 2)), 10))
	link, err := s.linkToBase(img)
	if err != nil {
		t.Fatalf("linkToBase: %v", err)
	}
	tmp, err := s.makeTempDir()
	if err != nil {
		t.Fatalf("makeTempDir: %v", err)
	}
	written := writeDataSynced(t, tmp.path, img, strictSource{t, img}, link)
	m := &manifest{Version: manifestVersion, Info: newInfo(img, "D"), Files: written.files, Data: newDataID(), Sources: written.index.sources}
	data, err := encodeManifest(m)
	if err != nil {
		t.Fatalf("encodeManifest: %v", err)
	}
	if _, err := writeFile(tmp.path, manifestFile, data); err != nil {
		t.Fatalf("write manifest: %v", err)
	}
	if err := os.Rename(filepath.Join(tmp.path, workDataFile), filepath.Join(proc, dataFileName(m.Data))); err != nil {
		t.Fatalf("move data file: %v", err)
	}
	if err := tmp.unlock(); err != nil {
		t.Fatalf("unlock: %v", err)
	}

	again, _ := openStoreAt(t, s.Dir())
	if got := dataFilesOf(t, again, p); !slices.Equal(got, before) {
		t.Errorf("data files after the sweep = %v, want those before the save %v", got, before)
	}
	if left := tempEntries(t, again); len(left) != 0 {
		t.Errorf("work entries left after the sweep: %v", left)
	}
	checkModel(t, again, p, "A", a)
	checkModel(t, again, p, "B", b)
	checkModel(t, again, p, "C", c)
}

func TestIncrementalRemoveCrashSwept(t *testing.T) {
	s, _ := openTestStore(t)
	ch := saveChain(t, s, 3108)
	a, b := ch.models[0], ch.models[1]
	p := testProcess(3108)
	idC := idOf(t, s, p, "C")
	proc, err := s.findProcessDir(p)
	if err != nil {
		t.Fatalf("findProcessDir: %v", err)
	}

	// A removal of C that died after moving its manifest out and before
	// deleting the data only C used.
	lock, err := lockDir(proc)
	if err != nil {
		t.Fatalf("lockDir: %v", err)
	}
	if _, err := s.detach(proc, "C"); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if err := lock.unlock(); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if !slices.Contains(dataFilesOf(t, s, p), dataFileName(idC)) {
		t.Fatalf("the simulated crash left no data of C, so the test proves nothing")
	}

	again, _ := openStoreAt(t, s.Dir())
	if slices.Contains(dataFilesOf(t, again, p), dataFileName(idC)) {
		t.Errorf("Open kept the data file of removed C, which no snapshot uses")
	}
	if left := tempEntries(t, again); len(left) != 0 {
		t.Errorf("work entries left after the sweep: %v", left)
	}
	if list, _ := again.Snapshots(p); !slices.Equal(names(list), []string{"A", "B"}) {
		t.Errorf("Snapshots after the sweep = %v, want [A B]", names(list))
	}
	checkModel(t, again, p, "A", a)
	checkModel(t, again, p, "B", b)
}

func TestIncrementalBaseRemovedDuringSave(t *testing.T) {
	s, _ := openTestStore(t)
	b := saveChain(t, s, 3109).models[1]
	p := testProcess(3109)

	// The base's data disappears between planning and commit: the commit
	// rejects the save and commits nothing.
	img := b.clone(regionsLater).image(p.PID, "B", map[uint64]bool{})
	link, err := s.linkToBase(img)
	if err != nil {
		t.Fatalf("linkToBase: %v", err)
	}
	for _, name := range []string{"A", "B", "C"} {
		if err := s.Remove(p, name); err != nil {
			t.Fatalf("Remove %s: %v", name, err)
		}
	}
	tmp, err := s.makeTempDir()
	if err != nil {
		t.Fatalf("makeTempDir: %v", err)
	}
	_, err = s.saveIn(tmp, img, "D", strictSource{t, img}, link)
	s.discard(tmp)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("commit after the base's data was deleted = %v, want EINVAL", err)
	}
	if list, _ := s.Snapshots(p); len(list) != 0 {
		t.Errorf("Snapshots = %v, want none", names(list))
	}
	if left := dataFilesOf(t, s, p); len(left) != 0 {
		t.Errorf("data files left: %v", left)
	}
}

func TestIncrementalS3Fallback(t *testing.T) {
	srv := startS3(t)
	s, _ := openS3Store(t, srv, "host-a")
	ch := saveChain(t, s, 3110)
	a, b, c, infos := ch.models[0], ch.models[1], ch.models[2], ch.infos
	p := testProcess(3110)

	checkModel(t, s, p, "A", a)
	checkModel(t, s, p, "B", b)
	checkModel(t, s, p, "C", c)
	if infos[1].Base != "A" || infos[2].Base != "B" {
		t.Errorf("Info.Base = %q, %q, want A, B", infos[1].Base, infos[2].Base)
	}
	checkBaseFlags(t, s, ch)

	if err := s.Remove(p, "A"); err != nil {
		t.Fatalf("Remove A: %v", err)
	}
	checkModel(t, s, p, "B", b)

	_, err := s.SaveFrom(b.image(p.PID, "A", nil), "D", strictSource{t, b.image(p.PID, "A", nil)})
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("SaveFrom with a removed base = %v, want EINVAL", err)
	}
}

// runFlags returns the Base flags of every run of img.
func runFlags(img *Image) [][]bool {
	flags := make([][]bool, len(img.Regions))
	for i, r := range img.Regions {
		for _, run := range r.Runs {
			flags[i] = append(flags[i], run.Base)
		}
	}
	return flags
}

func TestBackendAdjacentRuns(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		rng := rand.New(rand.NewPCG(3111, 1))
		// Runs that touch, each starting with a page of the kind the one
		// before ends with, so that their extents could merge.
		runs := []Run{runOf(rng, 0, "text", "text"), runOf(rng, 2, "text", "zero"), runOf(rng, 4, "zero", "random")}
		img := &Image{Process: testProcess(3111), Regions: []Region{{Start: 0x10000, End: 0x10000 + 8*page, Saved: true, Runs: runs}}}
		if _, err := s.Save(img, "adjacent"); err != nil {
			t.Fatalf("Save: %v", err)
		}

		snap := load(t, s, img.Process, "adjacent")
		want := regionBytes(&img.Regions[0])
		got := make([]byte, len(want))
		if err := snap.ReadRegion(0, got, 0); err != nil {
			t.Fatalf("ReadRegion: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("region differs at %s", firstDiff(got, want))
		}
	})
}
