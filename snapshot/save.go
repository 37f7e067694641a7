package snapshot

import (
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
	var link *baseLink
	if img.Base != "" {
		var err error
		if link, err = s.linkToBase(img); err != nil {
			return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
		}
	}

	tmp, err := s.makeTempDir()
	if err != nil {
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	info, err := s.saveIn(tmp, img, name, src, link)
	if err != nil {
		s.discard(tmp)
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	return info, nil
}

// linksBase is true: a directory stores an incremental image as extents
// that point at the frames of older snapshots.
func (s *dirStore) linksBase() bool { return true }

// linkToBase loads the base of img and returns the extents of its Base
// runs in the base's frames.
func (s *dirStore) linkToBase(img *Image) (*baseLink, error) {
	base, err := loadBase(s, img)
	if err != nil {
		return nil, err
	}
	link, err := linkBase(img, base)
	if closeErr := base.Close(); closeErr != nil {
		s.log.Warn("cannot close base snapshot", "snapshot", img.Base, "pid", img.Process.PID, "err", closeErr)
	}
	return link, err
}

// checkFree returns an error wrapping unix.EEXIST when p has a snapshot
// called name.
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

// saveIn writes the data file into tmp, then commits it under the lock of
// the process directory.
func (s *dirStore) saveIn(tmp *lockedDir, img *Image, name string, src MemorySource, link *baseLink) (*Info, error) {
	data, err := writeData(tmp.path, img, src, link)
	if err != nil {
		return nil, err
	}

	proc, created, err := s.ensureProcessDir(img.Process, img.Creds.UID[0])
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(proc)
	if err != nil {
		return nil, errors.Join(err, created.wait())
	}
	info, err := s.commit(tmp, proc, img, name, data, created)
	if unlockErr := lock.unlock(); err == nil && unlockErr != nil {
		return nil, unlockErr
	}
	if err != nil {
		return nil, err
	}
	s.dropWorkDir(tmp)
	return info, nil
}

// commit names the snapshot, writes its manifest into tmp and publishes
// it with the data file in the process directory. created is the sync of
// the parent of proc when this save created proc. The caller holds the
// lock of proc.
func (s *dirStore) commit(tmp *lockedDir, proc string, img *Image, name string, data *dataFile, created *pendingSync) (*Info, error) {
	var counter *pendingSync
	if name == "" {
		auto, synced, err := s.nextAutoName(proc)
		if err != nil {
			return nil, err
		}
		name, counter = auto, synced
	}
	if err := checkFreeIn(proc, name); err != nil {
		return nil, errors.Join(err, counter.wait())
	}
	// Removals delete data only under the lock, so the frames of the base
	// that the index points into stay from this check on.
	if err := checkSources(proc, img.Base, data.index.sources); err != nil {
		return nil, errors.Join(err, counter.wait())
	}

	m := &manifest{Version: manifestVersion, Info: newInfo(img, name), Files: data.files, Data: newDataID(), Sources: data.index.sources}
	encoded, err := encodeManifest(m)
	if err != nil {
		return nil, errors.Join(err, counter.wait())
	}
	_, manifestSynced, err := startFile(tmp.path, manifestFile, encoded)
	if err != nil {
		return nil, errors.Join(err, counter.wait())
	}

	// Every file must be on disk before a rename makes it reachable.
	if err := waitAll(data.synced, counter, manifestSynced); err != nil {
		return nil, err
	}
	if counter != nil {
		if err := replaceCounter(proc); err != nil {
			return nil, err
		}
	}
	if err := publish(tmp.path, proc, name, m.Data, created); err != nil {
		return nil, err
	}

	info := m.Info
	info.Stored = uint64(len(encoded)) + dataSize(data.files)
	return &info, nil
}

// checkSources checks that the data files an index points into are still
// in proc: a removal while the save ran may have deleted them.
func checkSources(proc, base string, sources []string) error {
	// NOTE: a save whose base data was removed meanwhile fails with EINVAL
	// instead of falling back to a full save. Its caller must capture again
	// without a base.
	for _, id := range sources {
		_, err := os.Lstat(filepath.Join(proc, dataFileName(id)))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("base snapshot %s: data %s it points into was removed during the save: %w", base, id, unix.EINVAL)
		}
		if err != nil {
			return fmt.Errorf("check data %s of base snapshot %s: %w", id, base, err)
		}
	}
	return nil
}

// publish moves the data file of the work directory work into proc as
// .data-<id>, then its manifest as proc/name, which commits the snapshot,
// and syncs proc while created (the sync of the parent of a new proc, or
// nil) finishes. A crash between the two renames leaves a data file no
// manifest uses, which the sweep of work directories deletes. The caller
// holds the lock of proc.
func publish(work, proc, name, id string, created *pendingSync) error {
	dataPath := filepath.Join(proc, dataFileName(id))
	if err := os.Rename(filepath.Join(work, workDataFile), dataPath); err != nil {
		return fmt.Errorf("move data of snapshot %s into %s: %w", name, proc, err)
	}
	if err := os.Rename(filepath.Join(work, manifestFile), filepath.Join(proc, name)); err != nil {
		if removeErr := os.Remove(dataPath); removeErr != nil {
			err = errors.Join(err, removeErr)
		}
		return fmt.Errorf("commit snapshot %s in %s: %w", name, proc, err)
	}

	// NOTE: from here on the snapshot is committed and listed, so a
	// failed directory sync is reported although it exists.
	synced, err := syncDirInBackground(proc)
	if err != nil {
		return errors.Join(err, created.wait())
	}
	return waitAll(synced, created)
}

// dropWorkDir deletes the empty work directory of a committed save and
// releases its lock. A failure is only logged: the next Open sweeps it.
func (s *dirStore) dropWorkDir(tmp *lockedDir) {
	if err := os.Remove(tmp.path); err != nil {
		s.log.Warn("cannot remove work directory", "path", tmp.path, "err", err)
	}
	if err := tmp.unlock(); err != nil {
		s.log.Warn("cannot unlock work directory", "path", tmp.path, "err", err)
	}
}
