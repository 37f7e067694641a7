package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

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

	// dir is the path of the snapshot's manifest, or its URL in a remote
	// store.
	dir string
	// id is the id of the snapshot's data (manifest Data).
	id     string
	memory memoryObject
	// sources hold the frames of other snapshots that the index points
	// into: frame source k lies in sources[k-1].
	sources []memoryObject
	index   *index

	// mu protects cache.
	mu sync.Mutex
	// cache holds recently decompressed frames, most recently used first.
	cache []cachedFrame
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

// LoadImage reads the description and the image of snapshot name of
// process p, without its memory: for a caller that needs to check a
// snapshot or plan around it but leaves reading its memory to another
// process. Its errors are those of Load.
func (s *Store) LoadImage(p ProcessID, name string) (Info, *Image, error) {
	if err := ValidName(name); err != nil {
		return Info{}, nil, fmt.Errorf("load snapshot of process %d: %w", p.PID, err)
	}
	return s.backend.loadImage(p, name)
}

func (s *dirStore) loadImage(p ProcessID, name string) (Info, *Image, error) {
	proc, err := s.findProcessDir(p)
	if err != nil {
		return Info{}, nil, fmt.Errorf("load snapshot %s: %w", name, err)
	}
	info, m, err := readInfo(proc, name, p)
	if errors.Is(err, os.ErrNotExist) {
		return Info{}, nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, unix.ENOENT)
	}
	if err != nil {
		return Info{}, nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}

	data, err := openData(proc, m.Data)
	if err != nil {
		return Info{}, nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}
	defer data.Close()
	img, err := readImage(m, func(entry fileEntry) ([]byte, error) {
		return readSection(data, sectionOffset(m, entry.Name), entry)
	})
	if err != nil {
		return Info{}, nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}
	return info, img, nil
}

func (s *dirStore) loadSnapshot(p ProcessID, name string) (*Snapshot, error) {
	proc, err := s.findProcessDir(p)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", name, err)
	}

	info, m, err := readInfo(proc, name, p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, unix.ENOENT)
	}
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}

	snap, err := openLocal(proc, info, m)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}
	return snap, nil
}

// newSnapshot returns a Snapshot reading its own frames from memory and
// those of source k from sources[k-1], after checking that the frames of
// the index end where the memory of the manifest does.
func newSnapshot(dir string, info Info, m *manifest, img *Image, x *index, memory memoryObject, sources []memoryObject) (*Snapshot, error) {
	if want := m.file(memoryFile).Size; x.dataSize() != want {
		return nil, fmt.Errorf("index frames end at %d, memory is %d bytes: %w", x.dataSize(), want, ErrCorrupt)
	}
	if len(sources) != len(x.sources) {
		return nil, fmt.Errorf("index points into %d other snapshots, %d are open: %w", len(x.sources), len(sources), ErrCorrupt)
	}
	return &Snapshot{Info: info, Image: img, dir: dir, id: m.Data, memory: memory, sources: sources, index: x}, nil
}

// readMetadata reads and cross-checks the image, maps and index files of
// manifest m. read returns the contents of one file after checking its size
// and hash against the entry.
func readMetadata(m *manifest, read func(fileEntry) ([]byte, error)) (*Image, *index, error) {
	img, err := readImage(m, read)
	if err != nil {
		return nil, nil, err
	}

	raw, err := read(m.file(indexFile))
	if err != nil {
		return nil, nil, err
	}
	x, err := unpackIndex(raw)
	if err != nil {
		return nil, nil, err
	}
	if !slices.Equal(x.sources, m.Sources) {
		return nil, nil, fmt.Errorf("index points into data %v, the manifest names %v: %w", x.sources, m.Sources, ErrCorrupt)
	}
	if err := x.checkCoverage(img); err != nil {
		return nil, nil, err
	}
	return img, x, nil
}

// readImage reads and checks the image and maps files of manifest m, as
// readMetadata does.
func readImage(m *manifest, read func(fileEntry) ([]byte, error)) (*Image, error) {
	meta, err := read(m.file(imageFile))
	if err != nil {
		return nil, err
	}
	img := &Image{}
	if err := json.Unmarshal(meta, img); err != nil {
		return nil, fmt.Errorf("decode %s: %v: %w", imageFile, err, ErrCorrupt)
	}
	if err := checkImage(img, false); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", imageFile, err, ErrCorrupt)
	}
	if len(img.Regions) != m.Info.Regions || len(img.Threads) != m.Info.Threads || img.Process != m.Info.Process {
		return nil, fmt.Errorf("%s does not match the manifest: %w", imageFile, ErrCorrupt)
	}

	img.Maps, err = read(m.file(mapsFile))
	if err != nil {
		return nil, err
	}
	return img, nil
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
		buf, err := s.frame(e.Frame)
		if err != nil {
			return fmt.Errorf("read region %d of snapshot %s at %d: %w", i, s.Info.Name, lo, err)
		}
		from := uint64(e.FrameOff) + (lo - e.Off)
		copy(p[lo-off:hi-off], buf.data[from:])
		s.release(buf)
	}
	return nil
}

// Close closes the memory files. Reads of stored bytes fail after Close.
func (s *Snapshot) Close() error {
	s.mu.Lock()
	for _, c := range s.cache {
		s.unref(c.buf)
	}
	s.cache = nil
	s.mu.Unlock()

	err := s.memory.Close()
	for _, source := range s.sources {
		if closeErr := source.Close(); err == nil {
			err = closeErr
		}
	}
	if err != nil {
		return fmt.Errorf("close snapshot %s: %w", s.Info.Name, err)
	}
	return nil
}
