package snapshot

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"golang.org/x/sys/unix"
)

// baseLink holds the extents an incremental save takes from its base
// snapshot. For every run marked Base, they point straight at the frames
// where the base keeps the bytes of the same addresses. Those frames may belong
// to the base or to snapshots the base itself points into, so a reader
// never follows a chain.
type baseLink struct {
	// sources are the data ids the frames lie in; frame source k is
	// sources[k-1].
	sources []string
	frames  []frameEntry

	// regions holds, per region of the new image, the extents of its Base
	// runs, sorted, Frame indexing frames.
	regions [][]extent

	// frameOf maps a frame of the base's index to its place in frames,
	// and sourceOf a data id to its source number.
	frameOf  map[uint32]uint32
	sourceOf map[string]uint32
}

// addressMap finds the regions of a loaded snapshot by virtual address.
type addressMap struct {
	snap  *Snapshot
	order []int // indexes of snap.Image.Regions sorted by Start
}

func newAddressMap(snap *Snapshot) addressMap {
	order := make([]int, len(snap.Image.Regions))
	for i := range order {
		order[i] = i
	}
	regions := snap.Image.Regions
	slices.SortFunc(order, func(a, b int) int { return compareUint(regions[a].Start, regions[b].Start) })
	return addressMap{snap: snap, order: order}
}

// locate returns the index of the region that contains addr, or -1.
func (m addressMap) locate(addr uint64) int {
	regions := m.snap.Image.Regions
	k := sort.Search(len(m.order), func(k int) bool { return regions[m.order[k]].End > addr })
	if k == len(m.order) || regions[m.order[k]].Start > addr {
		return -1
	}
	return m.order[k]
}

// linkBase returns the extents of every Base run of img in the frames of
// base, a loaded snapshot of the same process. A Base run with a byte that
// no extent of the base covers, a data or a zero extent, gives an error
// wrapping unix.EINVAL that names the base and the address.
func linkBase(img *Image, base *Snapshot) (*baseLink, error) {
	link := &baseLink{
		regions:  make([][]extent, len(img.Regions)),
		frameOf:  map[uint32]uint32{},
		sourceOf: map[string]uint32{},
	}
	addrs := newAddressMap(base)
	for i := range img.Regions {
		r := &img.Regions[i]
		for _, run := range r.Runs {
			if !run.Base {
				continue
			}
			if err := link.addRun(addrs, i, r.Start, run); err != nil {
				return nil, err
			}
		}
	}
	return link, nil
}

// addRun appends to region i, which starts at address regionStart, the
// extents of its Base run. Extents merge only inside the run, because the
// extents of a region tile each run separately.
func (l *baseLink) addRun(addrs addressMap, i int, regionStart uint64, run Run) error {
	base := addrs.snap
	start, end := regionStart+run.Off, regionStart+run.Off+run.Len
	for addr := start; addr < end; {
		j := addrs.locate(addr)
		if j < 0 {
			return notInBase(base, addr)
		}
		br := &base.Image.Regions[j]
		off := addr - br.Start
		extents := base.index.regions[j]
		k := find(extents, off)
		if k == len(extents) || extents[k].Off > off {
			return notInBase(base, addr)
		}

		e := extents[k]
		n := min(e.end()-off, end-addr)
		linked := extent{Off: addr - regionStart, Len: n, Kind: e.Kind}
		if e.Kind == extentData {
			linked.Frame = l.frame(base, e.Frame)
			linked.FrameOff = e.FrameOff + uint32(off-e.Off)
		}
		l.regions[i] = appendExtent(l.regions[i], linked, addr != start)
		addr += n
	}
	return nil
}

func notInBase(base *Snapshot, addr uint64) error {
	return fmt.Errorf("base snapshot %s has no saved bytes at address %#x, which a run marked Base covers: %w",
		base.Info.Name, addr, unix.EINVAL)
}

// frame returns the place in l.frames of frame n of the base's index,
// adding it on first use.
func (l *baseLink) frame(base *Snapshot, n uint32) uint32 {
	if k, ok := l.frameOf[n]; ok {
		return k
	}
	f := base.index.frames[n]
	id := base.id
	if f.Source != 0 {
		id = base.index.sources[f.Source-1]
	}
	source, ok := l.sourceOf[id]
	if !ok {
		l.sources = append(l.sources, id)
		source = uint32(len(l.sources))
		l.sourceOf[id] = source
	}

	f.Source = source
	l.frames = append(l.frames, f)
	k := uint32(len(l.frames) - 1)
	l.frameOf[n] = k
	return k
}

// addLinked adds the frames, sources and extents of link to x, an index
// whose frames all lie in the snapshot's own memory, so that every extent
// of a linked frame follows the own frames.
func (x *index) addLinked(link *baseLink) {
	own := uint32(len(x.frames))
	x.frames = append(x.frames, link.frames...)
	x.sources = link.sources
	for i, linked := range link.regions {
		if len(linked) == 0 {
			continue
		}
		saved := x.regions[i]
		merged := make([]extent, 0, len(saved)+len(linked))
		for len(saved) > 0 || len(linked) > 0 {
			if len(linked) == 0 || len(saved) > 0 && saved[0].Off < linked[0].Off {
				merged = append(merged, saved[0])
				saved = saved[1:]
				continue
			}
			e := linked[0]
			linked = linked[1:]
			if e.Kind == extentData {
				e.Frame += own
			}
			merged = append(merged, e)
		}
		x.regions[i] = merged
	}
}

// loadBase opens the base snapshot of img. A base that is not a snapshot
// of img's process gives an error wrapping unix.EINVAL.
func loadBase(b backend, img *Image) (*Snapshot, error) {
	base, err := b.loadSnapshot(img.Process, img.Base)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("base snapshot %s is not a snapshot of process %d: %v: %w", img.Base, img.Process.PID, err, unix.EINVAL)
	}
	if err != nil {
		return nil, fmt.Errorf("load base snapshot %s: %w", img.Base, err)
	}
	return base, nil
}

// baseSource is the MemorySource of an incremental save into a backend
// that stores only full snapshots: it reads the Base runs of img from the
// loaded base, by address, and the other runs from src.
type baseSource struct {
	img   *Image
	addrs addressMap
	src   MemorySource
}

// ReadRegion reads a range inside one run of region i.
func (b baseSource) ReadRegion(i int, p []byte, off uint64) error {
	r := &b.img.Regions[i]
	k := sort.Search(len(r.Runs), func(k int) bool { return r.Runs[k].Off+r.Runs[k].Len > off })
	if k == len(r.Runs) || !r.Runs[k].Base {
		return b.src.ReadRegion(i, p, off)
	}
	return b.addrs.read(p, r.Start+off)
}

// read fills p with the saved bytes at address addr, which may lie in
// several adjacent regions.
func (m addressMap) read(p []byte, addr uint64) error {
	for len(p) > 0 {
		j := m.locate(addr)
		if j < 0 {
			return notInBase(m.snap, addr)
		}
		r := &m.snap.Image.Regions[j]
		n := min(uint64(len(p)), r.End-addr)
		if err := m.snap.ReadRegion(j, p[:n], addr-r.Start); err != nil {
			return fmt.Errorf("read base snapshot %s at %#x: %w", m.snap.Info.Name, addr, err)
		}
		p, addr = p[n:], addr+n
	}
	return nil
}
