package snapshot

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the names of work-in-progress directories in the store's
// top directory.
const tmpPrefix = ".tmp-"

// Store is a set of snapshots kept by a backend: a local directory (Open)
// or an S3 bucket (OpenURL). Several Stores, in one process or in several,
// may use the same directory or bucket at once.
type Store struct {
	// backend performs every operation; the methods of Store check their
	// arguments and sort what it returns.
	backend backend
	log     *slog.Logger
	url     string // the path or URL for OpenURL to open this store again

	// dirStore is the backend of a store in a local directory, nil for a
	// remote one. It is embedded so that the directory's own operations
	// (work directories, process directories) are methods of the Store.
	*dirStore
}

// dirStore is a directory of snapshots, the default backend.
type dirStore struct {
	dir string
	warnings
}

// Compile-time check that a directory is a backend.
var _ backend = (*dirStore)(nil)

// Open opens the store in dir, creating it with mode 0700 when missing and
// narrowing an empty directory to 0700. A directory owned by another user,
// or a non-empty one that other users can access, gives an error wrapping
// unix.EPERM: Open never changes the mode of a directory that holds
// anything, such as /tmp. Open deletes the
// leftovers of saves and removals that never finished (.tmp-* directories
// no other Store holds locked), logging each at Warn. A nil log discards
// messages.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dir == "" {
		return nil, fmt.Errorf("open store: empty directory name; give the store's path: %w", unix.EINVAL)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}

	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create store %s: %w", abs, err)
	}
	info, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("open store %s: not a directory: %w", abs, unix.ENOTDIR)
	}
	if err := checkOwner(abs, info); err != nil {
		return nil, err
	}
	if err := makePrivate(abs, info.Mode().Perm()); err != nil {
		return nil, err
	}

	d := &dirStore{dir: abs, warnings: newWarnings(log)}
	if err := d.sweep(); err != nil {
		return nil, err
	}
	return &Store{backend: d, log: log, url: abs, dirStore: d}, nil
}

// makePrivate gives the store directory at path mode 0700 when it is empty
// and rejects it when it holds files that other users can reach.
func makePrivate(path string, perm os.FileMode) error {
	if perm&0o077 == 0 {
		return nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("open store %s: %w", path, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("open store %s: other users have access (mode %#o) and it is not empty; use a directory of its own or chmod 0700 it: %w",
			path, perm, unix.EPERM)
	}
	if err := os.Chmod(path, 0o700); err != nil {
		return fmt.Errorf("set mode of store %s: %w", path, err)
	}
	return nil
}

// checkOwner rejects a store directory owned by another user, who could
// change the snapshots that this program restores into processes.
func checkOwner(path string, info os.FileInfo) error {
	stat, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("open store %s: no owner in its file information: %w", path, unix.EINVAL)
	}
	if euid := os.Geteuid(); int(stat.Uid) != euid {
		return fmt.Errorf("open store %s: owned by uid %d, not by the user running this program (uid %d): %w",
			path, stat.Uid, euid, unix.EPERM)
	}
	return nil
}

// Dir returns the absolute path of the store's directory, or for a remote
// store its URL down to the prefix of this host, such as
// s3://bucket/prefix/host1.
func (s *Store) Dir() string { return s.backend.location() }

// URL returns the path or URL from which OpenURL opens this store again,
// in another process with the same environment: the absolute path of a
// local store, or the s3:// URL it was opened with.
func (s *Store) URL() string { return s.url }

func (s *dirStore) location() string { return s.dir }

// sweep deletes the .tmp-* entries of crashed saves and removals, and the
// data files they may have left unused in a process directory. A directory
// whose flock another Store holds belongs to a save in progress and is
// kept.
func (s *dirStore) sweep() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read store %s: %w", s.dir, err)
	}

	for _, entry := range entries {
		if !strings.HasPrefix(entry.Name(), tmpPrefix) {
			continue
		}
		path := filepath.Join(s.dir, entry.Name())
		if err := s.sweepOne(path); err != nil {
			s.log.Warn("cannot remove unfinished snapshot data", "path", path, "err", err)
		}
	}
	return nil
}

func (s *dirStore) sweepOne(path string) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer file.Close()

	err = flock(file, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		s.log.Debug("unfinished snapshot data in use by another store, kept", "path", path)
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}

	s.log.Warn("removing unfinished snapshot data", "path", path)
	stat, err := file.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if stat.IsDir() {
		s.collectAfter(filepath.Join(path, manifestFile))
	} else {
		s.collectAfter(path)
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// makeTempDir creates a locked work directory in the store's top directory,
// on the same filesystem as the snapshots so that it commits by rename.
func (s *dirStore) makeTempDir() (*lockedDir, error) {
	// A sweep by another Store may delete the directory before it is
	// locked; a few attempts are plenty because sweeps only run at Open.
	for range 10 {
		path, err := os.MkdirTemp(s.dir, tmpPrefix+"*")
		if err != nil {
			return nil, fmt.Errorf("create work directory in %s: %w", s.dir, err)
		}

		lock, err := lockDir(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}

		ok, err := lock.stillAt()
		if ok && err == nil {
			return lock, nil
		}
		if unlockErr := lock.unlock(); err == nil {
			err = unlockErr
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("create work directory in %s: deleted by concurrent sweeps: %w", s.dir, unix.EAGAIN)
}

// discard unlocks and deletes a work directory after a failure, logging
// what it cannot delete (the next Open sweeps it).
func (s *dirStore) discard(tmp *lockedDir) {
	if err := os.RemoveAll(tmp.path); err != nil {
		s.log.Warn("cannot remove unfinished snapshot data", "path", tmp.path, "err", err)
	}
	if err := tmp.unlock(); err != nil {
		s.log.Warn("cannot unlock work directory", "path", tmp.path, "err", err)
	}
}

// ownerDirs returns the paths of the per-uid directories.
func (s *dirStore) ownerDirs() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read store %s: %w", s.dir, err)
	}

	var dirs []string
	for _, entry := range entries {
		uid, err := strconv.ParseUint(entry.Name(), 10, 32)
		if err != nil || !entry.IsDir() || strconv.FormatUint(uid, 10) != entry.Name() {
			continue
		}
		dirs = append(dirs, filepath.Join(s.dir, entry.Name()))
	}
	return dirs, nil
}
