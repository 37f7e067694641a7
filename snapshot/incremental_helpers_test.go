package snapshot

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// memoryModel is the memory of a made-up process, page by page: the
// contents of every present page by address. Regions list the mappings.
type memoryModel struct {
	regions []modelRegion
	pages   map[uint64][]byte
}

type modelRegion struct{ start, end uint64 }

// newModel returns a model with the given regions, filled in blocks of 8
// pages of one kind drawn at random from kinds. The kind "hole" leaves the
// pages absent.
func newModel(rng *rand.Rand, regions []modelRegion, kinds []string) *memoryModel {
	m := &memoryModel{regions: regions, pages: map[uint64][]byte{}}
	for _, r := range regions {
		kind := ""
		for addr := r.start; addr < r.end; addr += page {
			if (addr-r.start)%(8*page) == 0 {
				kind = kinds[rng.IntN(len(kinds))]
			}
			if kind != "hole" {
				m.pages[addr] = fill(rng, kind, page)
			}
		}
	}
	return m
}

// clone returns a copy of m with regions replaced by regions, which must
// cover the same present pages.
func (m *memoryModel) clone(regions []modelRegion) *memoryModel {
	c := &memoryModel{regions: regions, pages: map[uint64][]byte{}}
	for addr, data := range m.pages {
		c.pages[addr] = data
	}
	return c
}

// change gives n present pages, picked at random, new random contents and
// returns their addresses.
func (m *memoryModel) change(rng *rand.Rand, n int) map[uint64]bool {
	addrs := make([]uint64, 0, len(m.pages))
	for addr := range m.pages {
		addrs = append(addrs, addr)
	}
	slices.Sort(addrs)
	changed := map[uint64]bool{}
	for len(changed) < n {
		addr := addrs[rng.IntN(len(addrs))]
		m.pages[addr] = fill(rng, "random", page)
		changed[addr] = true
	}
	return changed
}

// image returns the image of m captured relative to base, or a full image
// when base is "". A run of present pages is split where it passes between
// changed and unchanged pages. Unchanged runs of an incremental image are
// marked Base and carry no Data.
func (m *memoryModel) image(pid int, base string, changed map[uint64]bool) *Image {
	img := &Image{
		Process:  testProcess(pid),
		Creds:    Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1000, 1000, 1000}},
		Comm:     "target",
		Captured: time.Date(2026, 12, 4, 21, 0, 0, len(changed), time.UTC),
		Threads:  []Thread{{TID: pid}},
		Base:     base,
	}
	for _, r := range m.regions {
		region := Region{Start: r.start, End: r.end, Perms: "rw-p", Saved: true}
		for addr := r.start; addr < r.end; addr += page {
			data, present := m.pages[addr]
			if !present {
				continue
			}
			isBase := base != "" && !changed[addr]
			n := len(region.Runs)
			if n > 0 && region.Runs[n-1].Off+region.Runs[n-1].Len == addr-r.start && region.Runs[n-1].Base == isBase {
				region.Runs[n-1].Len += page
				if !isBase {
					region.Runs[n-1].Data = append(region.Runs[n-1].Data, data...)
				}
				continue
			}
			run := Run{Off: addr - r.start, Len: page, Base: isBase}
			if !isBase {
				run.Data = bytes.Clone(data)
			}
			region.Runs = append(region.Runs, run)
		}
		img.Regions = append(img.Regions, region)
	}
	return img
}

// bytesAt returns what a reader of region r of m must see.
func (m *memoryModel) bytesAt(r modelRegion) []byte {
	b := make([]byte, r.end-r.start)
	for addr := r.start; addr < r.end; addr += page {
		copy(b[addr-r.start:], m.pages[addr])
	}
	return b
}

// strictSource serves the runs of an image that carry Data and fails the
// test when asked for a run marked Base.
type strictSource struct {
	t   *testing.T
	img *Image
}

func (s strictSource) ReadRegion(i int, p []byte, off uint64) error {
	runs := s.img.Regions[i].Runs
	k := sort.Search(len(runs), func(k int) bool { return runs[k].Off+runs[k].Len > off })
	if k < len(runs) && runs[k].Base {
		s.t.Errorf("save read %d bytes at %d of region %d, inside a run marked Base", len(p), off, i)
	}
	return runData{s.img}.ReadRegion(i, p, off)
}

// checkModel reads every region of the snapshot name and compares it with
// the model.
func checkModel(t *testing.T, s *Store, p ProcessID, name string, m *memoryModel) {
	t.Helper()
	snap := load(t, s, p, name)
	if len(snap.Image.Regions) != len(m.regions) {
		t.Fatalf("snapshot %s has %d regions, the model %d", name, len(snap.Image.Regions), len(m.regions))
	}
	for i, r := range m.regions {
		want := m.bytesAt(r)
		got := make([]byte, len(want))
		if err := snap.ReadRegion(i, got, 0); err != nil {
			t.Fatalf("snapshot %s: ReadRegion(%d): %v", name, i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("snapshot %s: region %d (%#x) differs at %s", name, i, r.start, firstDiff(got, want))
		}
	}
}

// saveModel saves img under name, reading memory through a strictSource.
func saveModel(t *testing.T, s *Store, img *Image, name string) *Info {
	t.Helper()
	info, err := s.SaveFrom(img, name, strictSource{t, img})
	if err != nil {
		t.Fatalf("SaveFrom(%s, base %q): %v", name, img.Base, err)
	}
	return info
}

// dataFilesOf returns the names of the data files in the process
// directory of p.
func dataFilesOf(t *testing.T, s *Store, p ProcessID) []string {
	t.Helper()
	proc, err := s.findProcessDir(p)
	if err != nil {
		t.Fatalf("findProcessDir: %v", err)
	}
	entries, err := os.ReadDir(proc)
	if err != nil {
		t.Fatalf("read %s: %v", proc, err)
	}
	var found []string
	for _, entry := range entries {
		if strings.HasPrefix(entry.Name(), dataFilePrefix) {
			found = append(found, entry.Name())
		}
	}
	return found
}

// idOf returns the data id of the snapshot name.
func idOf(t *testing.T, s *Store, p ProcessID, name string) string {
	t.Helper()
	return load(t, s, p, name).id
}

// tempEntries returns the .tmp-* entries of the store's top directory.
func tempEntries(t *testing.T, s *Store) []string {
	t.Helper()
	found, err := filepath.Glob(filepath.Join(s.Dir(), tmpPrefix+"*"))
	if err != nil {
		t.Fatalf("glob: %v", err)
	}
	return found
}
