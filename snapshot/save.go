package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Save writes img to the store as a snapshot named name, or as the next
// snap-N of its process when name is "". The snapshot appears complete or not
// at all. In a directory, its files are written and synced in a work
// directory that is renamed into place after the manifest. In a bucket, its
// data objects are uploaded before the manifest object. On any failure the
// partial data is deleted where the backend can reach it and the error keeps
// the errno, so a full disk gives an error wrapping unix.ENOSPC. A taken name
// gives one wrapping unix.EEXIST, an invalid name or malformed image one
// wrapping unix.EINVAL. Save does not modify img.
func (s *Store) Save(img *Image, name string) (*Info, error) {
	if img == nil {
		return nil, fmt.Errorf("save snapshot: no image: %w", unix.EINVAL)
	}
	return s.save(img, name, runData{img}, true)
}

func (s *dirStore) saveImage(img *Image, name string, src MemorySource) (*Info, error) {
	// Fail before compressing anything when the name is already taken; the
	// check is repeated under the lock at commit.
	if name != "" {
		if err := s.checkFree(img.Process, name); err != nil {
			return nil, err
		}
	}

	tmp, err := s.makeTempDir()
	if err != nil {
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	info, err := s.saveIn(tmp, img, name, src)
	if err != nil {
		s.discard(tmp)
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	return info, nil
}

// checkFree returns an error wrapping unix.EEXIST when p has a snapshot
// directory called name.
func (s *dirStore) checkFree(p ProcessID, name string) error {
	dir, err := s.findProcessDir(p)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	return checkFreeIn(dir, name)
}

func checkFreeIn(dir, name string) error {
	_, err := os.Lstat(filepath.Join(dir, name))
	if err == nil {
		return fmt.Errorf("snapshot %s exists in %s: %w", name, dir, unix.EEXIST)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("check snapshot name %s in %s: %w", name, dir, err)
	}
	return nil
}

// saveIn writes the data files into tmp, then commits them under the lock
// of the process directory.
func (s *dirStore) saveIn(tmp *lockedDir, img *Image, name string, src MemorySource) (*Info, error) {
	files, err := writeDataFrom(tmp.path, img, src)
	if err != nil {
		return nil, err
	}

	proc, err := s.ensureProcessDir(img.Process, img.Creds.UID[0])
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(proc)
	if err != nil {
		return nil, err
	}
	info, err := s.commit(tmp, proc, img, name, files)
	if unlockErr := lock.unlock(); err == nil && unlockErr != nil {
		return nil, unlockErr
	}
	return info, err
}

// writeData writes every file of a snapshot whose runs carry their bytes,
// except the manifest, and returns their manifest entries in manifest order.
func writeData(dir string, img *Image) ([]fileEntry, error) {
	return writeDataFrom(dir, img, runData{img})
}

// writeDataFrom is writeData for memory read from src.
func writeDataFrom(dir string, img *Image, src MemorySource) ([]fileEntry, error) {
	meta, err := json.Marshal(img)
	if err != nil {
		return nil, fmt.Errorf("encode image metadata: %w", err)
	}
	imageEntry, err := writeFile(dir, imageFile, meta)
	if err != nil {
		return nil, err
	}
	mapsEntry, err := writeFile(dir, mapsFile, img.Maps)
	if err != nil {
		return nil, err
	}

	memoryEntry, x, err := writeMemory(dir, img, src)
	if err != nil {
		return nil, err
	}
	indexEntry, err := writeFile(dir, indexFile, x.encode())
	if err != nil {
		return nil, err
	}
	return []fileEntry{imageEntry, mapsEntry, indexEntry, memoryEntry}, nil
}

// commit names the snapshot, writes its manifest and renames tmp into the
// process directory. The caller holds the lock of proc.
func (s *dirStore) commit(tmp *lockedDir, proc string, img *Image, name string, files []fileEntry) (*Info, error) {
	if name == "" {
		auto, err := s.nextAutoName(proc)
		if err != nil {
			return nil, err
		}
		name = auto
	}
	if err := checkFreeIn(proc, name); err != nil {
		return nil, err
	}

	m := &manifest{Version: manifestVersion, Info: newInfo(img, name), Files: files}
	data, err := encodeManifest(m)
	if err != nil {
		return nil, err
	}
	if _, err := writeFile(tmp.path, manifestFile, data); err != nil {
		return nil, err
	}
	if err := syncDir(tmp.path); err != nil {
		return nil, err
	}

	final := filepath.Join(proc, name)
	if err := os.Rename(tmp.path, final); err != nil {
		return nil, fmt.Errorf("commit snapshot %s: %w", final, err)
	}
	// NOTE: from here on the snapshot is committed and listed, so an error
	// below (a failed directory sync) is reported although it exists.
	if err := tmp.unlock(); err != nil {
		return nil, err
	}
	if err := syncDir(proc); err != nil {
		return nil, err
	}
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}

	info := m.Info
	info.Stored = uint64(len(data))
	for _, file := range files {
		info.Stored += file.Size
	}
	return &info, nil
}
