package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxStoredSetting bounds the size of a stored setting: maxSettingSize of
// data in base64 plus the identity around it.
const maxStoredSetting = maxSettingSize*4/3 + 4096

// putSetting writes the setting to a temporary file in the process
// directory, syncs it and renames it over the old one, all under the lock
// of the directory, then syncs the directory.
func (s *dirStore) putSetting(p ProcessID, uid uint32, key string, encoded []byte) error {
	proc, created, err := s.ensureProcessDir(p, uid)
	if err == nil {
		err = created.wait()
	}
	if err != nil {
		return err
	}
	lock, err := lockDir(proc)
	if err != nil {
		return err
	}

	err = replaceFile(proc, settingPrefix+key, encoded)
	if unlockErr := lock.unlock(); err == nil {
		err = unlockErr
	}
	return err
}

// replaceFile replaces dir/name with data in one step. The caller holds the
// lock of dir, so the fixed temporary name is its own; a temporary file left
// by a crash is deleted first.
func replaceFile(dir, name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.Remove(filepath.Join(dir, tmp)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s in %s: %w", tmp, dir, err)
	}
	if _, err := writeFile(dir, tmp, data); err != nil {
		return fmt.Errorf("write %s in %s: %w", tmp, dir, err)
	}
	if err := os.Rename(filepath.Join(dir, tmp), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("replace %s in %s: %w", name, dir, err)
	}
	return syncDir(dir)
}

func (s *dirStore) getSetting(p ProcessID, key string) ([]byte, error) {
	proc, err := s.findProcessDir(p)
	if err != nil {
		return nil, err
	}
	return readAtMost(filepath.Join(proc, settingPrefix+key), maxStoredSetting)
}

// deleteSetting removes the setting file under the lock of the process
// directory and syncs the directory.
func (s *dirStore) deleteSetting(p ProcessID, key string) error {
	proc, err := s.findProcessDir(p)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	lock, err := lockDir(proc)
	if err != nil {
		return err
	}

	err = removeFile(proc, settingPrefix+key)
	if unlockErr := lock.unlock(); err == nil {
		err = unlockErr
	}
	return err
}

// removeFile deletes dir/name, when present, and syncs dir.
func removeFile(dir, name string) error {
	path := filepath.Join(dir, name)
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return syncDir(dir)
}

// settings reads the setting file of every process directory that has
// one. A setting must name the process of its directory.
func (s *dirStore) settings(key string) (map[ProcessID][]byte, error) {
	owners, err := s.ownerDirs()
	if err != nil {
		return nil, err
	}

	found := map[ProcessID][]byte{}
	for _, owner := range owners {
		entries, err := os.ReadDir(owner)
		if err != nil {
			return nil, fmt.Errorf("read owner directory %s: %w", owner, err)
		}
		for _, entry := range entries {
			if !entry.IsDir() {
				continue
			}
			proc := filepath.Join(owner, entry.Name())
			id, data, err := readSettingIn(proc, key)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				s.warnOnce(filepath.Join(proc, settingPrefix+key), "skipping damaged setting", err)
				continue
			}
			found[id] = data
		}
	}
	return found, nil
}

// readSettingIn reads and checks the setting key of the process directory
// proc. A directory without it gives an error wrapping os.ErrNotExist.
func readSettingIn(proc, key string) (ProcessID, []byte, error) {
	path := filepath.Join(proc, settingPrefix+key)
	encoded, err := readAtMost(path, maxStoredSetting)
	if err != nil {
		return ProcessID{}, nil, err
	}
	id, err := readIdentity(proc)
	if err != nil {
		return ProcessID{}, nil, err
	}

	f, err := decodeSetting(encoded, key)
	if err != nil {
		return ProcessID{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Process != id {
		return ProcessID{}, nil, fmt.Errorf("%s names pid %d start time %d, not the process of its directory: %w",
			path, f.Process.PID, f.Process.StartTime, ErrCorrupt)
	}
	return id, f.Data, nil
}
