package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// cacheFrames is the number of decompressed frames a Snapshot keeps. FUSE
// reads 128 KiB at a time, so a sequential read of a memory file needs only
// the frame it is in. The others serve readers of several regions at once.
const cacheFrames = 8

// decoder is shared by every Snapshot, because DecodeAll may run
// concurrently on one decoder.
var decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		// One decoder state per CPU for concurrent DecodeAll calls.
		zstd.WithDecoderConcurrency(0),
		// A damaged frame cannot decode to more than the index allows.
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(maxFrameSize),
	)
})

// Snapshot is a loaded snapshot: its description, its image without memory
// bytes (Runs have no Data, Maps is set), and a reader of the saved memory.
// Its methods are safe for concurrent use.
type Snapshot struct {
	Info  Info
	Image *Image

	// dir is the snapshot's directory, or its URL in a remote store.
	dir    string
	memory memoryObject
	index  *index

	// mu protects cache.
	mu sync.Mutex
	// cache holds recently decompressed frames, most recently used first.
	cache []cachedFrame
}

type cachedFrame struct {
	frame uint32
	data  []byte
}

// Compile-time check that Snapshot serves restores.
var _ MemoryReader = (*Snapshot)(nil)

// Load opens the snapshot name of process p after checking its manifest,
// the hashes of its metadata files, and that its index describes exactly the
// saved runs of the image. A missing snapshot gives an error wrapping
// unix.ENOENT, a damaged one an error wrapping ErrCorrupt. The caller closes
// the Snapshot.
func (s *Store) Load(p ProcessID, name string) (*Snapshot, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("load snapshot of process %d: %w", p.PID, err)
	}
	return s.backend.loadSnapshot(p, name)
}

func (s *dirStore) loadSnapshot(p ProcessID, name string) (*Snapshot, error) {
	proc, err := s.findProcessDir(p)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", name, err)
	}

	dir := filepath.Join(proc, name)
	info, m, err := readInfo(dir, name, p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, unix.ENOENT)
	}
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}

	snap, err := loadFiles(dir, info, m)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}
	return snap, nil
}

// loadFiles reads the metadata of the committed snapshot directory dir,
// whose manifest is m, and opens its memory file.
func loadFiles(dir string, info Info, m *manifest) (*Snapshot, error) {
	img, x, err := readMetadata(m, func(entry fileEntry) ([]byte, error) {
		return readVerified(dir, entry)
	})
	if err != nil {
		return nil, err
	}

	memory, err := os.Open(filepath.Join(dir, memoryFile))
	if err != nil {
		return nil, fmt.Errorf("open memory: %w", err)
	}
	snap, err := newSnapshot(dir, info, m, img, x, memory)
	if err != nil {
		memory.Close()
		return nil, err
	}
	return snap, nil
}

// newSnapshot returns a Snapshot reading its frames from memory, after
// checking that the frames of the index end where the memory file of the
// manifest does.
func newSnapshot(dir string, info Info, m *manifest, img *Image, x *index, memory memoryObject) (*Snapshot, error) {
	if want := m.file(memoryFile).Size; x.dataSize() != want {
		return nil, fmt.Errorf("index frames end at %d, memory file is %d bytes: %w", x.dataSize(), want, ErrCorrupt)
	}
	return &Snapshot{Info: info, Image: img, dir: dir, memory: memory, index: x}, nil
}

// readMetadata reads and cross-checks the image, maps and index files of
// manifest m. read returns the contents of one file after checking its size
// and hash against the entry.
func readMetadata(m *manifest, read func(fileEntry) ([]byte, error)) (*Image, *index, error) {
	meta, err := read(m.file(imageFile))
	if err != nil {
		return nil, nil, err
	}
	img := &Image{}
	if err := json.Unmarshal(meta, img); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %v: %w", imageFile, err, ErrCorrupt)
	}
	if err := checkImage(img, false); err != nil {
		return nil, nil, fmt.Errorf("%s: %v: %w", imageFile, err, ErrCorrupt)
	}
	if len(img.Regions) != m.Info.Regions || len(img.Threads) != m.Info.Threads || img.Process != m.Info.Process {
		return nil, nil, fmt.Errorf("%s does not match the manifest: %w", imageFile, ErrCorrupt)
	}

	img.Maps, err = read(m.file(mapsFile))
	if err != nil {
		return nil, nil, err
	}

	raw, err := read(m.file(indexFile))
	if err != nil {
		return nil, nil, err
	}
	x, err := parseIndex(raw)
	if err != nil {
		return nil, nil, err
	}
	if err := x.checkCoverage(img); err != nil {
		return nil, nil, err
	}
	return img, x, nil
}

// ReadRegion fills p with the saved memory of region i (an index into
// Image.Regions) from offset off of the region. Bytes outside every run read
// as zeros. Every frame read is checked against the lengths and hash in the
// index. A mismatch gives an error wrapping ErrCorrupt, and p must then not
// be used. A read past the end of the region gives an error wrapping
// unix.EINVAL.
func (s *Snapshot) ReadRegion(i int, p []byte, off uint64) error {
	if i < 0 || i >= len(s.Image.Regions) {
		return fmt.Errorf("read region %d of snapshot %s: only %d regions: %w", i, s.Info.Name, len(s.Image.Regions), unix.EINVAL)
	}
	size := s.Image.Regions[i].Len()
	if off > size || uint64(len(p)) > size-off {
		return fmt.Errorf("read of %d bytes at %d of region %d of snapshot %s: region has %d bytes: %w",
			len(p), off, i, s.Info.Name, size, unix.EINVAL)
	}

	clear(p)
	extents := s.index.regions[i]
	end := off + uint64(len(p))
	for k := find(extents, off); k < len(extents) && extents[k].Off < end; k++ {
		e := extents[k]
		if e.Kind != extentData {
			continue
		}
		lo, hi := max(e.Off, off), min(e.end(), end)
		data, err := s.frame(e.Frame)
		if err != nil {
			return fmt.Errorf("read region %d of snapshot %s at %d: %w", i, s.Info.Name, lo, err)
		}
		from := uint64(e.FrameOff) + (lo - e.Off)
		copy(p[lo-off:hi-off], data[from:])
	}
	return nil
}

// frame returns the uncompressed bytes of frame n, from the cache when
// there. The slice is shared and must not be modified.
func (s *Snapshot) frame(n uint32) ([]byte, error) {
	s.mu.Lock()
	for k, c := range s.cache {
		if c.frame == n {
			copy(s.cache[1:k+1], s.cache[:k])
			s.cache[0] = c
			s.mu.Unlock()
			return c.data, nil
		}
	}
	s.mu.Unlock()

	// Two readers missing the same frame both decode it. That costs only
	// time, and keeps the lock free while decoding.
	data, err := s.decodeFrame(n)
	if err != nil {
		return nil, err
	}

	s.mu.Lock()
	if len(s.cache) < cacheFrames {
		s.cache = append(s.cache, cachedFrame{})
	}
	copy(s.cache[1:], s.cache[:len(s.cache)-1])
	s.cache[0] = cachedFrame{frame: n, data: data}
	s.mu.Unlock()
	return data, nil
}

// decodeFrame reads, decompresses and checks frame n.
func (s *Snapshot) decodeFrame(n uint32) ([]byte, error) {
	f := s.index.frames[n]
	compressed := make([]byte, f.CLen)
	if _, err := s.memory.ReadAt(compressed, int64(f.FileOff)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("frame %d lies past the end of the memory file: %w", n, ErrCorrupt)
		}
		return nil, fmt.Errorf("read frame %d: %w", n, err)
	}

	dec, err := decoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd decoder: %w", err)
	}
	data, err := dec.DecodeAll(compressed, make([]byte, 0, f.ULen))
	if err != nil {
		return nil, fmt.Errorf("decompress frame %d: %v: %w", n, err, ErrCorrupt)
	}
	if len(data) != int(f.ULen) {
		return nil, fmt.Errorf("frame %d decompressed to %d bytes, expected %d from the index: %w", n, len(data), f.ULen, ErrCorrupt)
	}
	if got := xxhash.Sum64(data); got != f.Hash {
		return nil, fmt.Errorf("frame %d has hash %016x, expected %016x from the index: %w", n, got, f.Hash, ErrCorrupt)
	}
	return data, nil
}

// Close closes the memory file. Reads of stored bytes fail after Close.
func (s *Snapshot) Close() error {
	s.mu.Lock()
	s.cache = nil
	s.mu.Unlock()

	if err := s.memory.Close(); err != nil {
		return fmt.Errorf("close snapshot %s: %w", s.Info.Name, err)
	}
	return nil
}
