package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// fileMode is the mode of every file the store writes: the files of a
// committed snapshot are never modified, only deleted.
const fileMode = 0o400

// syncDir flushes a directory's entries to disk, so that a file created or
// renamed in it survives a crash.
func syncDir(path string) error {
	dir, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open directory %s to sync: %w", path, err)
	}

	err = dir.Sync()
	closeErr := dir.Close()
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", path, err)
	}
	if closeErr != nil {
		return fmt.Errorf("close directory %s: %w", path, closeErr)
	}
	return nil
}

// lockedDir is a directory held open with an exclusive flock(2). The lock
// belongs to the open file, so two lockedDirs of one directory exclude each
// other even inside one process.
type lockedDir struct {
	path string
	file *os.File
}

// lockDir opens the directory at path and waits for an exclusive flock on it.
func lockDir(path string) (*lockedDir, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open directory %s to lock: %w", path, err)
	}

	if err := flock(file, unix.LOCK_EX); err != nil {
		closeErr := file.Close()
		return nil, errors.Join(fmt.Errorf("lock directory %s: %w", path, err), closeErr)
	}
	return &lockedDir{path: path, file: file}, nil
}

// flock retries flock(2) when a signal interrupts the wait.
func flock(file *os.File, how int) error {
	for {
		err := unix.Flock(int(file.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// unlock releases the lock by closing the directory. Calls after the first
// do nothing.
func (l *lockedDir) unlock() error {
	if l.file == nil {
		return nil
	}
	file := l.file
	l.file = nil
	if err := file.Close(); err != nil {
		return fmt.Errorf("unlock directory %s: %w", l.path, err)
	}
	return nil
}

// stillAt reports whether the locked directory is still the one at its path:
// a sweep may delete a directory between its creation and the lock.
func (l *lockedDir) stillAt() (bool, error) {
	held, err := l.file.Stat()
	if err != nil {
		return false, fmt.Errorf("stat locked directory %s: %w", l.path, err)
	}

	current, err := os.Lstat(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat directory %s: %w", l.path, err)
	}
	return os.SameFile(held, current), nil
}

// hashWriter records the size and xxhash64 of the bytes written through it
// to w, the contents of one file of a snapshot.
type hashWriter struct {
	name   string
	w      io.Writer
	digest *xxhash.Digest
	size   uint64
}

func newHashWriter(name string, w io.Writer) hashWriter {
	return hashWriter{name: name, w: w, digest: xxhash.New()}
}

func (h *hashWriter) Write(p []byte) (int, error) {
	n, err := h.w.Write(p)
	h.digest.Write(p[:n])
	h.size += uint64(n)
	if err != nil {
		return n, fmt.Errorf("write %s: %w", h.name, err)
	}
	return n, nil
}

// entry returns the manifest entry of the bytes written so far.
func (h *hashWriter) entry() fileEntry {
	return fileEntry{Name: h.name, Size: h.size, Hash: h.digest.Sum64()}
}

// hashedFile is a new file of a snapshot that records its size and xxhash64
// while it is written.
type hashedFile struct {
	hashWriter
	file *os.File
}

// createHashed creates dir/name, which must not exist yet.
func createHashed(dir, name string) (*hashedFile, error) {
	file, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	return &hashedFile{hashWriter: newHashWriter(name, file), file: file}, nil
}

// finish syncs and closes the file and returns its manifest entry.
func (h *hashedFile) finish() (fileEntry, error) {
	if err := h.file.Sync(); err != nil {
		h.abort()
		return fileEntry{}, fmt.Errorf("sync %s: %w", h.name, err)
	}
	if err := h.file.Close(); err != nil {
		return fileEntry{}, fmt.Errorf("close %s: %w", h.name, err)
	}
	return h.entry(), nil
}

// abort closes the file after a failure. Its error is dropped because the
// caller deletes the whole temporary directory next.
func (h *hashedFile) abort() {
	_ = h.file.Close()
}

// writeFile creates dir/name with data, synced, and returns its manifest
// entry.
func writeFile(dir, name string, data []byte) (fileEntry, error) {
	h, err := createHashed(dir, name)
	if err != nil {
		return fileEntry{}, err
	}

	if _, err := h.Write(data); err != nil {
		h.abort()
		return fileEntry{}, err
	}
	return h.finish()
}

// pendingSync is the sync of a new file, running on its own goroutine so
// that several files written at once reach the disk in one journal commit
// instead of one each.
type pendingSync struct {
	path string
	done chan error
}

// syncInBackground starts syncing, then closing, a file just written.
// Its data and size are durable once wait returns nil.
func syncInBackground(file *os.File) *pendingSync {
	// fdatasync(2) made BenchmarkSaveSmall no faster on ext4 on a
	// virtio disk: a new file needs its inode written either way.
	return startSync(file, file.Sync)
}

// syncDirInBackground starts syncing the directory at path, so that the
// entries created or renamed in it so far become durable.
func syncDirInBackground(path string) (*pendingSync, error) {
	dir, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open directory %s to sync: %w", path, err)
	}
	return startSync(dir, dir.Sync), nil
}

// startSync runs sync and then closes file on a new goroutine.
func startSync(file *os.File, sync func() error) *pendingSync {
	p := &pendingSync{path: file.Name(), done: make(chan error, 1)}
	go func() {
		err := sync()
		if closeErr := file.Close(); err == nil {
			err = closeErr
		}
		p.done <- err
	}()
	return p
}

// wait returns the outcome of the sync. A second call blocks forever, so
// each pendingSync is waited for once. A nil pendingSync returns nil.
func (p *pendingSync) wait() error {
	if p == nil {
		return nil
	}
	if err := <-p.done; err != nil {
		return fmt.Errorf("sync %s: %w", p.path, err)
	}
	return nil
}

// waitAll waits for every sync and returns the first error.
func waitAll(syncs ...*pendingSync) error {
	var first error
	for _, p := range syncs {
		if err := p.wait(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// startFile creates dir/name with data and starts syncing it.
func startFile(dir, name string, data []byte) (fileEntry, *pendingSync, error) {
	h, err := createHashed(dir, name)
	if err != nil {
		return fileEntry{}, nil, err
	}
	if _, err := h.Write(data); err != nil {
		h.abort()
		return fileEntry{}, nil, err
	}
	return h.entry(), syncInBackground(h.file), nil
}
