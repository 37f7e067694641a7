package snapshot

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// List returns every committed snapshot in the store, of live and exited
// processes, sorted by pid, process start time, capture time and name. A pid
// other than 0 keeps only the snapshots of processes with that pid. Damaged
// snapshots are skipped and logged at Warn once per Store.
func (s *Store) List(pid int) ([]Info, error) {
	infos, err := s.backend.listSnapshots(pid)
	if err != nil {
		return nil, err
	}

	slices.SortFunc(infos, func(a, b Info) int {
		if a.Process.PID != b.Process.PID {
			return a.Process.PID - b.Process.PID
		}
		if a.Process.StartTime != b.Process.StartTime {
			return compareUint(a.Process.StartTime, b.Process.StartTime)
		}
		return compareCaptured(a, b)
	})
	return infos, nil
}

func (s *dirStore) listSnapshots(pid int) ([]Info, error) {
	owners, err := s.ownerDirs()
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}

	infos := []Info{}
	for _, owner := range owners {
		entries, err := os.ReadDir(owner)
		if err != nil {
			return nil, fmt.Errorf("list snapshots in %s: %w", owner, err)
		}
		for _, entry := range entries {
			if !entry.IsDir() {
				continue
			}
			proc := filepath.Join(owner, entry.Name())
			id, err := readIdentity(proc)
			if err != nil {
				s.warnOnce(proc, "skipping process directory", err)
				continue
			}
			if pid != 0 && id.PID != pid {
				continue
			}
			found, err := s.snapshotsIn(proc, id)
			if err != nil {
				return nil, fmt.Errorf("list snapshots: %w", err)
			}
			infos = append(infos, found...)
		}
	}
	return infos, nil
}

// Snapshots returns the committed snapshots of one process, oldest capture
// first (ties by name). A process without snapshots gives an empty list.
func (s *Store) Snapshots(p ProcessID) ([]Info, error) {
	infos, err := s.backend.processSnapshots(p)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(infos, compareCaptured)
	return infos, nil
}

func (s *dirStore) processSnapshots(p ProcessID) ([]Info, error) {
	proc, err := s.findProcessDir(p)
	if errors.Is(err, unix.ENOENT) {
		return []Info{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots of process %d: %w", p.PID, err)
	}

	infos, err := s.snapshotsIn(proc, p)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of process %d: %w", p.PID, err)
	}
	return infos, nil
}

func compareCaptured(a, b Info) int {
	if c := a.Captured.Compare(b.Captured); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// snapshotsIn returns the snapshots of the process directory proc whose
// manifest verifies and names process id.
func (s *dirStore) snapshotsIn(proc string, id ProcessID) ([]Info, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("read process directory %s: %w", proc, err)
	}

	infos := []Info{}
	for _, entry := range entries {
		if ValidName(entry.Name()) != nil {
			continue
		}
		info, _, err := readInfo(proc, entry.Name(), id)
		if err != nil {
			s.warnOnce(filepath.Join(proc, entry.Name()), "skipping snapshot without a valid manifest", err)
			continue
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// Remove deletes the snapshot name of process p. The snapshot disappears at
// once (its manifest is moved out of the process directory under the lock,
// or its manifest object is deleted first) and the name can be used again
// at once. Its data is deleted afterwards, in a directory only when no
// other snapshot of the process points into its frames. The process
// directory and its auto-name counter stay, so snap-N numbers are not
// reused. A missing snapshot gives an error wrapping unix.ENOENT, an
// invalid name one wrapping unix.EINVAL.
func (s *Store) Remove(p ProcessID, name string) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("remove snapshot of process %d: %w", p.PID, err)
	}
	if err := s.backend.removeSnapshot(p, name); err != nil {
		return err
	}
	s.log.Debug("snapshot removed", "pid", p.PID, "snapshot", name)
	return nil
}

func (s *dirStore) removeSnapshot(p ProcessID, name string) error {
	proc, err := s.findProcessDir(p)
	if err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}

	lock, err := lockDir(proc)
	if err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}
	trash, err := s.detach(proc, name)
	if err == nil {
		s.collectOrWarn(proc)
	}
	if unlockErr := lock.unlock(); err == nil && unlockErr != nil {
		err = unlockErr
	}
	if err != nil {
		return fmt.Errorf("remove snapshot %s of process %d: %w", name, p.PID, err)
	}

	if err := os.Remove(trash); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("cannot delete manifest of removed snapshot, the next Open deletes it",
			"snapshot", name, "pid", p.PID, "path", trash, "err", err)
	}
	return nil
}

// detach moves the manifest proc/name to a new .tmp-rm-* path in the
// store's top directory, syncs proc, and returns that path. The snapshot
// is then gone. After a crash, a sweep that finds the moved manifest reads
// from it which process directory may hold data no snapshot uses. The caller
// holds the lock of proc.
func (s *dirStore) detach(proc, name string) (string, error) {
	path := filepath.Join(proc, name)
	info, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a snapshot manifest: %w", path, unix.ENOENT)
	}

	random := make([]byte, 8)
	rand.Read(random)
	trash := filepath.Join(s.dir, tmpPrefix+"rm-"+hex.EncodeToString(random))
	if err := os.Rename(path, trash); err != nil {
		return "", fmt.Errorf("move %s out of the process directory: %w", path, err)
	}
	if err := syncDir(proc); err != nil {
		return "", err
	}
	return trash, nil
}
