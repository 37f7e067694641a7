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
// most 64 KiB, and compressed as it arrives, so the store holds only a few
// frames of it at a time. The runs of img may carry Data; src is read all
// the same. Errors are those of Save, plus the errors of src, wrapped.
//
// An image with Base set is saved relative to that snapshot of the same
// process: runs marked Base are never read from src, because the base holds
// their bytes at the same addresses. A local store records where the base
// keeps them and stores only the other runs; a bucket copies them from the
// base. A base that is missing, of another process, or that lacks saved
// bytes (data or zero pages) at an address of a Base run gives an error
// wrapping unix.EINVAL naming the base and the address, and nothing is
// committed.
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
	if img.Base != "" && !s.backend.linksBase() {
		base, err := s.openBaseSource(img, src)
		if err != nil {
			return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
		}
		defer s.closeBase(base.addrs.snap)
		src = base
	}
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

// openBaseSource loads the base of img and returns a source that reads its
// Base runs from the base and the others from src, after checking that the
// base holds every byte of the Base runs. The caller closes the base.
func (s *Store) openBaseSource(img *Image, src MemorySource) (baseSource, error) {
	base, err := loadBase(s.backend, img)
	if err != nil {
		return baseSource{}, err
	}
	if _, err := linkBase(img, base); err != nil {
		s.closeBase(base)
		return baseSource{}, err
	}
	return baseSource{img: img, addrs: newAddressMap(base), src: src}, nil
}

// closeBase closes a base snapshot after a save, logging a failure: the
// save's outcome does not depend on it.
func (s *Store) closeBase(base *Snapshot) {
	if err := base.Close(); err != nil {
		s.log.Warn("cannot close base snapshot", "snapshot", base.Info.Name, "pid", base.Info.Process.PID, "err", err)
	}
}
