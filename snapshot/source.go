package snapshot

import (
	"fmt"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// MemorySource supplies the saved bytes of an image whose runs carry no
// Data, such as memory read from a copy-on-write clone of the process after
// it was thawed. SaveFrom calls ReadRegion only for ranges inside one run
// of region i (an index into Image.Regions), from several goroutines at
// once, so an implementation must be safe for concurrent use.
type MemorySource interface {
	MemoryReader
}

// SaveFrom is Save for an image whose memory comes from src instead of
// Run.Data: every byte of every run is read from src once, in pieces of at
// most 512 KiB, and compressed as it arrives, so the store holds only a few
// frames of it at a time. The runs of img may carry Data; src is read all
// the same. Errors are those of Save, plus the errors of src, wrapped.
func (s *Store) SaveFrom(img *Image, name string, src MemorySource) (*Info, error) {
	if img == nil || src == nil {
		return nil, fmt.Errorf("save snapshot: no image or no memory source: %w", unix.EINVAL)
	}
	return s.save(img, name, src, false)
}

// save checks img and name and commits img through the backend, reading
// memory from src. With data set, every run must carry its bytes.
func (s *Store) save(img *Image, name string, src MemorySource, data bool) (*Info, error) {
	if name != "" {
		if err := ValidName(name); err != nil {
			return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
		}
	}
	if err := checkImage(img, data); err != nil {
		return nil, fmt.Errorf("save snapshot of process %d: malformed image: %v: %w", img.Process.PID, err, unix.EINVAL)
	}

	start := time.Now()
	info, err := s.backend.saveImage(img, name, src)
	if err != nil {
		return nil, err
	}

	s.log.Debug("snapshot saved", "pid", info.Process.PID, "snapshot", info.Name,
		"bytes", info.Bytes, "stored", info.Stored, "took", time.Since(start))
	return info, nil
}

// runData is the MemorySource of an image fresh from capture, whose runs
// hold their bytes in Run.Data.
type runData struct{ img *Image }

// ReadRegion copies bytes of region i at off from the run that holds them.
// A range outside every run gives an error wrapping unix.EINVAL.
func (d runData) ReadRegion(i int, p []byte, off uint64) error {
	runs := d.img.Regions[i].Runs
	k := sort.Search(len(runs), func(k int) bool { return runs[k].Off+runs[k].Len > off })
	if k == len(runs) || off < runs[k].Off || off+uint64(len(p)) > runs[k].Off+runs[k].Len {
		return fmt.Errorf("read of %d bytes at %d of region %d: not inside one run: %w", len(p), off, i, unix.EINVAL)
	}
	copy(p, runs[k].Data[off-runs[k].Off:])
	return nil
}
