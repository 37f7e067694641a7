package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// Files of a process directory besides its snapshots. Their leading dot
// keeps them apart from snapshot names, which start with a letter or digit.
const (
	identityFile = ".process" // JSON ProcessID of the process the directory belongs to
	counterFile  = ".counter" // last auto number used, in decimal
)

// processDirNames returns the names a directory of p's snapshots may have.
// The first is "<pid>-<starttime>". Pid and start time can repeat after a
// reboot, so when that name belongs to a process of another boot, p uses the
// second, which adds a tag derived from the boot id.
func processDirNames(p ProcessID) [2]string {
	base := fmt.Sprintf("%d-%d", p.PID, p.StartTime)
	return [2]string{base, fmt.Sprintf("%s.boot-%08x", base, uint32(xxhash.Sum64String(p.BootID)))}
}

// findProcessDir returns the directory of p's snapshots, or an error
// wrapping unix.ENOENT when p has none.
func (s *dirStore) findProcessDir(p ProcessID) (string, error) {
	owners, err := s.ownerDirs()
	if err != nil {
		return "", err
	}

	for _, owner := range owners {
		for _, name := range processDirNames(p) {
			path := filepath.Join(owner, name)
			id, err := readIdentity(path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				s.warnOnce(path, "skipping process directory", err)
				continue
			}
			if id == p {
				return path, nil
			}
		}
	}
	return "", fmt.Errorf("no snapshots of process %d (start time %d): %w", p.PID, p.StartTime, unix.ENOENT)
}

// ensureProcessDir returns the directory of p's snapshots, creating it
// under the owner uid when p has none. A process keeps the directory of its
// first capture even when its uid changes later. When it creates the
// directory, the sync of the owner directory that makes it durable is
// still running: the caller waits for the returned pendingSync (nil when
// there is nothing to wait for) before it reports anything durable.
func (s *dirStore) ensureProcessDir(p ProcessID, uid uint32) (string, *pendingSync, error) {
	path, err := s.findProcessDir(p)
	if !errors.Is(err, unix.ENOENT) {
		return path, nil, err
	}

	owner := filepath.Join(s.dir, strconv.FormatUint(uint64(uid), 10))
	if err := s.makeOwnerDir(owner); err != nil {
		return "", nil, err
	}
	for _, name := range processDirNames(p) {
		path := filepath.Join(owner, name)
		created, err := s.createProcessDir(path, p)
		if err != nil {
			return "", nil, err
		}

		id, err := readIdentity(path)
		if err == nil && id == p {
			return path, created, nil
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return "", nil, errors.Join(err, created.wait())
		}
	}
	return "", nil, fmt.Errorf("directories %v of process %d belong to processes of other boots: %w",
		processDirNames(p), p.PID, unix.EEXIST)
}

// makeOwnerDir creates the per-uid directory when missing.
func (s *dirStore) makeOwnerDir(path string) error {
	err := os.Mkdir(path, 0o700)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create owner directory %s: %w", path, err)
	}
	return syncDir(s.dir)
}

// createProcessDir creates the process directory at path with its identity
// and counter files in one rename, so no reader sees it half made, and
// starts syncing its parent, which the caller waits for. It does nothing
// when path exists, and then returns a nil pendingSync.
func (s *dirStore) createProcessDir(path string, p ProcessID) (*pendingSync, error) {
	// NOTE: this costs the first save of a process a third round of syncs.
	// Renaming a work directory that already holds the first snapshot
	// into place would save it, at the price of a second commit path.
	if _, err := os.Lstat(path); err == nil {
		return nil, nil
	}

	tmp, err := s.makeTempDir()
	if err != nil {
		return nil, err
	}
	if err := fillProcessDir(tmp.path, p); err != nil {
		s.discard(tmp)
		return nil, fmt.Errorf("create process directory %s: %w", path, err)
	}

	err = os.Rename(tmp.path, path)
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		// Another Store created it first.
		s.discard(tmp)
		return nil, nil
	}
	if err != nil {
		s.discard(tmp)
		return nil, fmt.Errorf("create process directory %s: %w", path, err)
	}
	if err := tmp.unlock(); err != nil {
		return nil, err
	}
	return syncDirInBackground(filepath.Dir(path))
}

// fillProcessDir writes the identity and counter files into dir and syncs
// them and dir at once.
func fillProcessDir(dir string, p ProcessID) error {
	identity, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode process identity: %w", err)
	}
	_, identitySynced, err := startFile(dir, identityFile, append(identity, '\n'))
	if err != nil {
		return err
	}
	_, counterSynced, err := startFile(dir, counterFile, []byte("0\n"))
	if err != nil {
		return errors.Join(err, identitySynced.wait())
	}
	dirSynced, err := syncDirInBackground(dir)
	if err != nil {
		return errors.Join(err, waitAll(identitySynced, counterSynced))
	}
	return waitAll(identitySynced, counterSynced, dirSynced)
}

// readIdentity reads the identity file of a process directory. A missing
// directory gives an error wrapping os.ErrNotExist, a damaged file one
// wrapping ErrCorrupt.
func readIdentity(dir string) (ProcessID, error) {
	data, err := readAtMost(filepath.Join(dir, identityFile), 4096)
	if err != nil {
		return ProcessID{}, err
	}

	var id ProcessID
	if err := json.Unmarshal(data, &id); err != nil {
		return ProcessID{}, fmt.Errorf("process identity in %s: %v: %w", dir, err, ErrCorrupt)
	}
	if names := processDirNames(id); filepath.Base(dir) != names[0] && filepath.Base(dir) != names[1] {
		return ProcessID{}, fmt.Errorf("process identity in %s names pid %d start time %d: %w",
			dir, id.PID, id.StartTime, ErrCorrupt)
	}
	return id, nil
}

// nextAutoName picks the next snap-N name of a locked process directory and
// starts writing N to a new counter file. Once its sync is done, the caller
// puts it in place with replaceCounter, so that N is never used again even
// after the snapshot is removed. N is above both the counter and every
// snap-N present, which also skips numbers a user took by name.
func (s *dirStore) nextAutoName(dir string) (string, *pendingSync, error) {
	last := s.readCounter(dir)

	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, fmt.Errorf("read process directory %s: %w", dir, err)
	}
	for _, entry := range entries {
		if n, ok := autoNumber(entry.Name()); ok {
			last = max(last, n)
		}
	}

	synced, err := startCounter(dir, last+1)
	if err != nil {
		return "", nil, err
	}
	return autoName(last + 1), synced, nil
}

// readCounter returns the last auto number of a process directory. A damaged
// counter is logged and read as 0: the names present still keep numbers from
// being reused while their snapshots exist.
func (s *dirStore) readCounter(dir string) uint64 {
	data, err := readAtMost(filepath.Join(dir, counterFile), 64)
	if err == nil {
		n, parseErr := strconv.ParseUint(strings.TrimSuffix(string(data), "\n"), 10, 64)
		if parseErr == nil {
			return n
		}
		err = fmt.Errorf("counter %q: %v: %w", data, parseErr, ErrCorrupt)
	}
	s.warnOnce(filepath.Join(dir, counterFile), "auto-name counter unreadable, names restart above the newest present", err)
	return 0
}

// newCounterFile is the counter file being written, before replaceCounter
// renames it over the counter. The lock of the process directory makes the
// fixed name safe.
const newCounterFile = counterFile + ".tmp"

// startCounter writes n to a new counter file in dir and starts syncing
// it.
func startCounter(dir string, n uint64) (*pendingSync, error) {
	if err := os.Remove(filepath.Join(dir, newCounterFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s in %s: %w", newCounterFile, dir, err)
	}
	_, synced, err := startFile(dir, newCounterFile, []byte(strconv.FormatUint(n, 10)+"\n"))
	if err != nil {
		return nil, fmt.Errorf("write counter of %s: %w", dir, err)
	}
	return synced, nil
}

// replaceCounter renames the synced new counter file over the counter. The
// caller syncs the directory when it commits the snapshot that uses the
// number.
func replaceCounter(dir string) error {
	if err := os.Rename(filepath.Join(dir, newCounterFile), filepath.Join(dir, counterFile)); err != nil {
		return fmt.Errorf("replace counter of %s: %w", dir, err)
	}
	return nil
}
