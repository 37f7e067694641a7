package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// collect deletes the data files of the process directory proc that no
// snapshot in it uses, neither as its own data nor as a source of frames,
// and syncs proc when it deleted any. When a manifest cannot be read, the
// data it uses is unknown, so collect deletes nothing and returns an
// error. The caller holds the lock of proc.
func (s *dirStore) collect(proc string) error {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return fmt.Errorf("read process directory %s: %w", proc, err)
	}

	used := map[string]bool{}
	var data []string
	for _, entry := range entries {
		name := entry.Name()
		if id, ok := strings.CutPrefix(name, dataFilePrefix); ok && validDataID(id) {
			data = append(data, id)
			continue
		}
		if !entry.Type().IsRegular() || ValidName(name) != nil {
			continue
		}
		m, err := readManifestFile(filepath.Join(proc, name))
		if err != nil {
			return fmt.Errorf("find data in use in %s: %w", proc, err)
		}
		used[m.Data] = true
		for _, id := range m.Sources {
			used[id] = true
		}
	}

	removed := false
	for _, id := range data {
		if used[id] {
			continue
		}
		path := filepath.Join(proc, dataFileName(id))
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete unused data file %s: %w", path, err)
		}
		removed = true
	}
	if removed {
		return syncDir(proc)
	}
	return nil
}

// collectOrWarn runs collect and logs its failure: the snapshots are all
// intact, and the next removal in proc or the sweep of a crashed removal
// tries again.
func (s *dirStore) collectOrWarn(proc string) {
	if err := s.collect(proc); err != nil {
		s.log.Warn("cannot delete snapshot data no snapshot uses, it stays", "path", proc, "err", err)
	}
}

// readManifestFile reads and parses the manifest file at path.
func readManifestFile(path string) (*manifest, error) {
	data, err := readAtMost(path, maxManifestSize)
	if err != nil {
		return nil, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return m, nil
}

// collectAfter runs collect in the process directory of the manifest at
// path, which a save or a removal that never finished left in its work
// entry: a save may have moved its data file in before it died, and a
// removal may have moved the manifest out before deleting the data only it
// used. A missing manifest means nothing moved. The caller holds the lock
// of the work entry, which comes before that of a process directory.
func (s *dirStore) collectAfter(path string) {
	m, err := readManifestFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		s.log.Warn("cannot read manifest of unfinished snapshot data, data it used may stay", "path", path, "err", err)
		return
	}
	proc, err := s.findProcessDir(m.Info.Process)
	if err != nil {
		return
	}

	lock, err := lockDir(proc)
	if err != nil {
		s.log.Warn("cannot lock process directory to delete unused data", "path", proc, "err", err)
		return
	}
	s.collectOrWarn(proc)
	if err := lock.unlock(); err != nil {
		s.log.Warn("cannot unlock process directory", "path", proc, "err", err)
	}
}
