package snapshot

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
)

// The index file is the seek table of a snapshot's memory, compressed
// with zstd as one frame (see packIndex). Decompressed, all integers are
// little endian:
//
//	header   magic "ckptidx\n", u32 version, u32 regions, u32 frames,
//	         u32 extents, u32 sources, u32 zero
//	sources  per source: the 16-byte data id of another snapshot's data
//	frames   per frame: u64 file offset, u32 compressed length,
//	         u32 uncompressed length, u64 xxhash64 of the uncompressed
//	         bytes, u32 source, u32 zero
//	counts   per region: u32 number of its extents
//	extents  per extent, grouped by region in region order:
//	         u64 region offset, u64 length, u32 frame, u32 offset in the
//	         frame's uncompressed bytes, u8 kind, 7 zero bytes
//
// A frame of source 0 lies in this snapshot's own memory; those frames come
// first and lie back to back from offset 0. A frame of source k >= 1 lies
// in the memory of the data whose id is the k-th of sources, at its file
// offset: an incremental snapshot points at the frames of older ones. The
// extents of a region are sorted by offset, do not overlap, and exactly tile
// the region's runs: bytes outside every run have no extent and read as
// zeros.
const (
	indexMagic   = "ckptidx\n"
	indexVersion = 3

	indexHeaderSize = 32
	sourceEntrySize = dataIDLen / 2
	frameEntrySize  = 32
	extentEntrySize = 32
)

// Extent kinds.
const (
	// extentData bytes are stored in frame Frame of the index, starting
	// at FrameOff of its uncompressed bytes.
	extentData = 1

	// extentZero bytes are all-zero pages inside a run; nothing is stored,
	// and Frame and FrameOff are zero.
	extentZero = 2
)

// maxFrameSize bounds the uncompressed length of a frame that parseIndex
// accepts. The writer uses frameSize.
const maxFrameSize = 4 << 20

// maxFileOffset bounds the file offset of a frame, so that the offset
// and length of every frame fit an int64 file position.
const maxFileOffset = 1 << 62

// index is the parsed seek table.
type index struct {
	// sources are the data ids (hex) of the other snapshots whose frames
	// this index uses; frame source k is sources[k-1].
	sources []string
	frames  []frameEntry
	regions [][]extent
}

type frameEntry struct {
	FileOff uint64
	CLen    uint32
	ULen    uint32
	Hash    uint64
	Source  uint32 // 0: this snapshot's memory; k: that of sources[k-1]
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

// dataSize returns the length of the snapshot's own memory: the end of its
// last frame of source 0.
func (x *index) dataSize() uint64 {
	size := uint64(0)
	for _, f := range x.frames {
		if f.Source == 0 {
			size = f.FileOff + uint64(f.CLen)
		}
	}
	return size
}

// encode returns the bytes of the index file.
func (x *index) encode() []byte {
	extents := 0
	for _, region := range x.regions {
		extents += len(region)
	}
	size := indexHeaderSize + len(x.sources)*sourceEntrySize + len(x.frames)*frameEntrySize +
		len(x.regions)*4 + extents*extentEntrySize
	b := make([]byte, 0, size)

	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, indexVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.regions)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.frames)))
	b = binary.LittleEndian.AppendUint32(b, uint32(extents))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.sources)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, id := range x.sources {
		// parseIndex and the writer only put valid ids here.
		raw, _ := hex.DecodeString(id)
		b = append(b, raw...)
	}
	for _, f := range x.frames {
		b = binary.LittleEndian.AppendUint64(b, f.FileOff)
		b = binary.LittleEndian.AppendUint32(b, f.CLen)
		b = binary.LittleEndian.AppendUint32(b, f.ULen)
		b = binary.LittleEndian.AppendUint64(b, f.Hash)
		b = binary.LittleEndian.AppendUint32(b, f.Source)
		b = binary.LittleEndian.AppendUint32(b, 0)
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
	nsources := uint64(le.Uint32(b[24:]))
	if le.Uint32(b[28:]) != 0 {
		return nil, fmt.Errorf("index header has nonzero padding: %w", ErrCorrupt)
	}

	// Check the length before allocating anything the counts ask for.
	want := indexHeaderSize + nsources*sourceEntrySize + nframes*frameEntrySize + nregions*4 + nextents*extentEntrySize
	if uint64(len(b)) != want {
		return nil, fmt.Errorf("index is %d bytes, its counts need %d: %w", len(b), want, ErrCorrupt)
	}

	x := &index{}
	b = b[indexHeaderSize:]
	sources, err := parseSources(b[:nsources*sourceEntrySize])
	if err != nil {
		return nil, err
	}
	x.sources = sources
	b = b[nsources*sourceEntrySize:]

	frames, err := parseFrames(b[:nframes*frameEntrySize], len(sources))
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

// parseSources decodes the data ids of the sources table, which must be
// distinct.
func parseSources(b []byte) ([]string, error) {
	sources := make([]string, len(b)/sourceEntrySize)
	seen := make(map[string]bool, len(sources))
	for k := range sources {
		id := hex.EncodeToString(b[k*sourceEntrySize : (k+1)*sourceEntrySize])
		if seen[id] {
			return nil, fmt.Errorf("index source %d repeats data %s: %w", k+1, id, ErrCorrupt)
		}
		seen[id] = true
		sources[k] = id
	}
	return sources, nil
}

// parseFrames decodes the frame table: first the frames of source 0, back
// to back from offset 0, then those of sources 1 to nsources.
func parseFrames(b []byte, nsources int) ([]frameEntry, error) {
	frames := make([]frameEntry, len(b)/frameEntrySize)
	next := uint64(0)
	foreign := false
	for i := range frames {
		e := b[i*frameEntrySize:]
		f := frameEntry{
			FileOff: binary.LittleEndian.Uint64(e),
			CLen:    binary.LittleEndian.Uint32(e[8:]),
			ULen:    binary.LittleEndian.Uint32(e[12:]),
			Hash:    binary.LittleEndian.Uint64(e[16:]),
			Source:  binary.LittleEndian.Uint32(e[24:]),
		}
		if binary.LittleEndian.Uint32(e[28:]) != 0 {
			return nil, fmt.Errorf("index frame %d has nonzero padding: %w", i, ErrCorrupt)
		}
		if f.CLen == 0 || f.ULen == 0 || f.ULen > maxFrameSize || f.FileOff > maxFileOffset {
			return nil, fmt.Errorf("index frame %d has offset %d and lengths %d/%d: %w", i, f.FileOff, f.CLen, f.ULen, ErrCorrupt)
		}
		if err := checkFrameSource(i, f, nsources, foreign, next); err != nil {
			return nil, err
		}
		if f.Source == 0 {
			next += uint64(f.CLen)
		}
		if f.Source != 0 {
			foreign = true
		}
		frames[i] = f
	}
	return frames, nil
}

// checkFrameSource checks where frame i lies: a frame of source 0 at next
// and before every frame of another source, any other within the sources
// table.
func checkFrameSource(i int, f frameEntry, nsources int, afterForeign bool, next uint64) error {
	switch {
	case uint64(f.Source) > uint64(nsources):
		return fmt.Errorf("index frame %d names source %d of %d: %w", i, f.Source, nsources, ErrCorrupt)
	case f.Source != 0:
		return nil
	case afterForeign:
		return fmt.Errorf("index frame %d of this snapshot follows frames of other sources: %w", i, ErrCorrupt)
	case f.FileOff != next:
		return fmt.Errorf("index frame %d starts at %d, expected %d: %w", i, f.FileOff, next, ErrCorrupt)
	}
	return nil
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
