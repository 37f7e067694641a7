package snapshot

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// The index file is the seek table of the memory file. All integers are
// little endian:
//
//	header   magic "ckptidx\n", u32 version, u32 regions, u32 frames, u32 extents
//	frames   per frame: u64 file offset, u32 compressed length,
//	         u32 uncompressed length, u64 xxhash64 of the uncompressed bytes
//	counts   per region: u32 number of its extents
//	extents  per extent, grouped by region in region order:
//	         u64 region offset, u64 length, u32 frame, u32 offset in the
//	         frame's uncompressed bytes, u8 kind, 7 zero bytes
//
// Frames lie back to back in the memory file from offset 0. The extents of a
// region are sorted by offset, do not overlap, and exactly tile the region's
// runs: bytes outside every run have no extent and read as zeros.
const (
	indexMagic   = "ckptidx\n"
	indexVersion = 1

	indexHeaderSize = 24
	frameEntrySize  = 24
	extentEntrySize = 32
)

// Extent kinds.
const (
	// extentData bytes are stored in frame Frame of this snapshot, starting
	// at FrameOff of its uncompressed bytes.
	extentData = 1

	// extentZero bytes are all-zero pages inside a run; nothing is stored,
	// and Frame and FrameOff are zero.
	extentZero = 2

	// NOTE: incremental snapshots go here: an extentParent kind whose Frame
	// indexes a frame table of the parent snapshot (named in the manifest)
	// or of a per-owner dedup pack, so unchanged pages cost one extent.
)

// maxFrameSize bounds the uncompressed length of a frame that parseIndex
// accepts. The writer uses frameSize.
const maxFrameSize = 4 << 20

// index is the parsed seek table.
type index struct {
	frames  []frameEntry
	regions [][]extent
}

type frameEntry struct {
	FileOff uint64
	CLen    uint32
	ULen    uint32
	Hash    uint64
}

type extent struct {
	Off      uint64 // from the region's start
	Len      uint64
	Frame    uint32
	FrameOff uint32
	Kind     uint8
}

// end returns the region offset just past the extent.
func (e extent) end() uint64 { return e.Off + e.Len }

// dataSize returns the length of the memory file the frames describe.
func (x *index) dataSize() uint64 {
	if len(x.frames) == 0 {
		return 0
	}
	last := x.frames[len(x.frames)-1]
	return last.FileOff + uint64(last.CLen)
}

// encode returns the bytes of the index file.
func (x *index) encode() []byte {
	extents := 0
	for _, region := range x.regions {
		extents += len(region)
	}
	size := indexHeaderSize + len(x.frames)*frameEntrySize + len(x.regions)*4 + extents*extentEntrySize
	b := make([]byte, 0, size)

	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, indexVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.regions)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.frames)))
	b = binary.LittleEndian.AppendUint32(b, uint32(extents))
	for _, f := range x.frames {
		b = binary.LittleEndian.AppendUint64(b, f.FileOff)
		b = binary.LittleEndian.AppendUint32(b, f.CLen)
		b = binary.LittleEndian.AppendUint32(b, f.ULen)
		b = binary.LittleEndian.AppendUint64(b, f.Hash)
	}
	for _, region := range x.regions {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(region)))
	}
	for _, region := range x.regions {
		for _, e := range region {
			b = binary.LittleEndian.AppendUint64(b, e.Off)
			b = binary.LittleEndian.AppendUint64(b, e.Len)
			b = binary.LittleEndian.AppendUint32(b, e.Frame)
			b = binary.LittleEndian.AppendUint32(b, e.FrameOff)
			b = append(b, e.Kind, 0, 0, 0, 0, 0, 0, 0)
		}
	}
	return b
}

// parseIndex decodes and checks an index file. Every error wraps ErrCorrupt.
func parseIndex(b []byte) (*index, error) {
	if len(b) < indexHeaderSize || string(b[:8]) != indexMagic {
		return nil, fmt.Errorf("index header missing: %w", ErrCorrupt)
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != indexVersion {
		return nil, fmt.Errorf("index format version %d is not the supported %d: %w", v, indexVersion, ErrCorrupt)
	}
	nregions, nframes, nextents := uint64(le.Uint32(b[12:])), uint64(le.Uint32(b[16:])), uint64(le.Uint32(b[20:]))

	// Check the length before allocating anything the counts ask for.
	want := indexHeaderSize + nframes*frameEntrySize + nregions*4 + nextents*extentEntrySize
	if uint64(len(b)) != want {
		return nil, fmt.Errorf("index is %d bytes, its counts need %d: %w", len(b), want, ErrCorrupt)
	}

	x := &index{}
	b = b[indexHeaderSize:]
	frames, err := parseFrames(b[:nframes*frameEntrySize])
	if err != nil {
		return nil, err
	}
	x.frames = frames
	b = b[nframes*frameEntrySize:]

	counts, extents := b[:nregions*4], b[nregions*4:]
	x.regions = make([][]extent, nregions)
	for i := range x.regions {
		n := uint64(le.Uint32(counts[i*4:]))
		if n > uint64(len(extents))/extentEntrySize {
			return nil, fmt.Errorf("index region %d claims %d extents, more than remain: %w", i, n, ErrCorrupt)
		}
		region, err := parseExtents(extents[:n*extentEntrySize], frames)
		if err != nil {
			return nil, fmt.Errorf("index region %d: %w", i, err)
		}
		x.regions[i] = region
		extents = extents[n*extentEntrySize:]
	}
	if len(extents) != 0 {
		return nil, fmt.Errorf("index has %d bytes of extents no region claims: %w", len(extents), ErrCorrupt)
	}
	return x, nil
}

func parseFrames(b []byte) ([]frameEntry, error) {
	frames := make([]frameEntry, len(b)/frameEntrySize)
	next := uint64(0)
	for i := range frames {
		e := b[i*frameEntrySize:]
		f := frameEntry{
			FileOff: binary.LittleEndian.Uint64(e),
			CLen:    binary.LittleEndian.Uint32(e[8:]),
			ULen:    binary.LittleEndian.Uint32(e[12:]),
			Hash:    binary.LittleEndian.Uint64(e[16:]),
		}
		if f.FileOff != next {
			return nil, fmt.Errorf("index frame %d starts at %d, expected %d: %w", i, f.FileOff, next, ErrCorrupt)
		}
		if f.CLen == 0 || f.ULen == 0 || f.ULen > maxFrameSize {
			return nil, fmt.Errorf("index frame %d has lengths %d/%d: %w", i, f.CLen, f.ULen, ErrCorrupt)
		}
		next += uint64(f.CLen)
		frames[i] = f
	}
	return frames, nil
}

// parseExtents decodes the extents of one region and checks them against
// the frame table.
func parseExtents(b []byte, frames []frameEntry) ([]extent, error) {
	extents := make([]extent, len(b)/extentEntrySize)
	prevEnd := uint64(0)
	for i := range extents {
		raw := b[i*extentEntrySize:]
		e := extent{
			Off:      binary.LittleEndian.Uint64(raw),
			Len:      binary.LittleEndian.Uint64(raw[8:]),
			Frame:    binary.LittleEndian.Uint32(raw[16:]),
			FrameOff: binary.LittleEndian.Uint32(raw[20:]),
			Kind:     raw[24],
		}
		if binary.LittleEndian.Uint64(raw[24:])>>8 != 0 {
			return nil, fmt.Errorf("extent %d has nonzero padding: %w", i, ErrCorrupt)
		}
		if e.Len == 0 || e.Off < prevEnd || e.end() < e.Off {
			return nil, fmt.Errorf("extent %d (%d+%d) is empty, overlaps or wraps: %w", i, e.Off, e.Len, ErrCorrupt)
		}
		if err := checkExtentSource(e, frames); err != nil {
			return nil, fmt.Errorf("extent %d: %w", i, err)
		}
		prevEnd = e.end()
		extents[i] = e
	}
	return extents, nil
}

func checkExtentSource(e extent, frames []frameEntry) error {
	switch e.Kind {
	case extentData:
		if uint64(e.Frame) >= uint64(len(frames)) {
			return fmt.Errorf("frame %d of %d: %w", e.Frame, len(frames), ErrCorrupt)
		}
		if uint64(e.FrameOff)+e.Len > uint64(frames[e.Frame].ULen) {
			return fmt.Errorf("bytes %d+%d outside frame %d of %d bytes: %w",
				e.FrameOff, e.Len, e.Frame, frames[e.Frame].ULen, ErrCorrupt)
		}
	case extentZero:
		if e.Frame != 0 || e.FrameOff != 0 {
			return fmt.Errorf("zero extent names frame %d offset %d: %w", e.Frame, e.FrameOff, ErrCorrupt)
		}
	default:
		return fmt.Errorf("unknown kind %d: %w", e.Kind, ErrCorrupt)
	}
	return nil
}

// checkCoverage checks that the extents of every region exactly tile that
// region's runs, so every saved byte has one source and no read lands in
// data the image does not describe.
func (x *index) checkCoverage(img *Image) error {
	if len(x.regions) != len(img.Regions) {
		return fmt.Errorf("index has %d regions, image %d: %w", len(x.regions), len(img.Regions), ErrCorrupt)
	}
	for i := range img.Regions {
		if err := checkRegionCoverage(&img.Regions[i], x.regions[i]); err != nil {
			return fmt.Errorf("region %d (%x-%x): %w", i, img.Regions[i].Start, img.Regions[i].End, err)
		}
	}
	return nil
}

func checkRegionCoverage(r *Region, extents []extent) error {
	k := 0
	for j, run := range r.Runs {
		pos := run.Off
		for pos < run.Off+run.Len {
			if k == len(extents) || extents[k].Off != pos || extents[k].end() > run.Off+run.Len {
				return fmt.Errorf("run %d (%d+%d) not tiled by the extents at byte %d: %w", j, run.Off, run.Len, pos, ErrCorrupt)
			}
			pos = extents[k].end()
			k++
		}
	}
	if k != len(extents) {
		return fmt.Errorf("%d extents lie outside every run: %w", len(extents)-k, ErrCorrupt)
	}
	return nil
}

// find returns the position of the first extent of a region that ends after
// off.
func find(extents []extent, off uint64) int {
	return sort.Search(len(extents), func(k int) bool { return extents[k].end() > off })
}
