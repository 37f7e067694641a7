package snapshot

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

// loadSnapshot fetches the manifest and the metadata objects. Memory stays
// on the server: the Snapshot fetches each frame it decompresses with a
// range GET and keeps the last few in its frame cache.
func (s *s3Store) loadSnapshot(p ProcessID, name string) (*Snapshot, error) {
	snap, err := s.load(p, name)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
	}
	return snap, nil
}

func (s *s3Store) load(p ProcessID, name string) (*Snapshot, error) {
	proc := s.processPrefix(p)
	info, m, err := s.readManifest(p, name)
	if err != nil {
		return nil, err
	}
	img, x, err := readMetadata(m, s.metadataReader(proc, m))
	if err != nil {
		return nil, err
	}
	memory := &s3Object{s: s, key: dataKey(proc, m.Data, memoryFile)}
	return newSnapshot(s.url(proc+name), info, m, img, x, memory, nil)
}

func (s *s3Store) loadImage(p ProcessID, name string) (Info, *Image, error) {
	info, m, err := s.readManifest(p, name)
	if err == nil {
		var img *Image
		if img, err = readImage(m, s.metadataReader(s.processPrefix(p), m)); err == nil {
			return info, img, nil
		}
	}
	return Info{}, nil, fmt.Errorf("load snapshot %s of process %d: %w", name, p.PID, err)
}

// readManifest reads and checks the manifest of snapshot name of process p
// against the objects of its data.
func (s *s3Store) readManifest(p ProcessID, name string) (Info, *manifest, error) {
	proc := s.processPrefix(p)
	key := manifestKey(proc, name)
	data, err := s.getAll(key, maxManifestSize)
	if err != nil {
		return Info{}, nil, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return Info{}, nil, fmt.Errorf("manifest %s: %w", s.url(key), err)
	}
	if m.Info.Process != p {
		return Info{}, nil, fmt.Errorf("manifest %s describes pid %d start time %d boot %s: %w",
			s.url(key), m.Info.Process.PID, m.Info.Process.StartTime, m.Info.Process.BootID, ErrCorrupt)
	}

	objects, err := s.listObjects(proc + dataPrefix + m.Data + "/")
	if err != nil {
		return Info{}, nil, err
	}
	info, err := s.checkManifest(proc, name, m, int64(len(data)), objects)
	if err != nil {
		return Info{}, nil, err
	}
	return info, m, nil
}

// metadataReader returns the reader of the metadata objects of manifest
// m for readMetadata and readImage.
func (s *s3Store) metadataReader(proc string, m *manifest) func(fileEntry) ([]byte, error) {
	return func(entry fileEntry) ([]byte, error) {
		key := dataKey(proc, m.Data, entry.Name)
		data, err := s.getAll(key, int64(entry.Size))
		if err != nil {
			return nil, err
		}
		return data, checkContents(s.url(key), data, entry)
	}
}

// getAll returns the whole object at key, which must not exceed limit
// bytes. A missing object gives an error wrapping unix.ENOENT, a larger one
// an error wrapping ErrCorrupt.
func (s *s3Store) getAll(key string, limit int64) ([]byte, error) {
	obj, err := s.client.GetObject(context.Background(), s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.fail("get", key, err)
	}
	defer obj.Close()

	data, err := io.ReadAll(io.LimitReader(obj, limit+1))
	if err != nil {
		return nil, s.fail("get", key, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s exceeds %d bytes: %w", s.url(key), limit, ErrCorrupt)
	}
	return data, nil
}

// s3ReadAhead is the least a range GET of a memory object fetches, and
// s3Windows the number of such windows an s3Object keeps. Frames are
// small and lie back to back, so one GET serves the frames that a
// sequential reader asks for next, and a few windows serve several
// readers at once.
const (
	s3ReadAhead = 1 << 20
	s3Windows   = 4
)

// s3Object reads byte ranges of the memory object of a loaded snapshot
// with range GETs of at least s3ReadAhead bytes, and serves later reads
// from the last few windows fetched. Data objects never change once
// uploaded, so no read needs to check a version.
type s3Object struct {
	s      *s3Store
	key    string
	closed atomic.Bool

	// mu protects windows, most recently used first.
	mu      sync.Mutex
	windows []s3Window
}

// s3Window is bytes of the object from off.
type s3Window struct {
	off  int64
	data []byte
}

// ReadAt fills p from off. A range that ends past the object gives io.EOF,
// which a Snapshot reports as ErrCorrupt: Load checked the object's size.
func (o *s3Object) ReadAt(p []byte, off int64) (int, error) {
	if o.closed.Load() {
		return 0, fmt.Errorf("read %s: %w", o.s.url(o.key), os.ErrClosed)
	}
	if len(p) == 0 || o.fromWindow(p, off) {
		return len(p), nil
	}

	w, err := o.fetch(off, max(int64(len(p)), s3ReadAhead))
	if err != nil {
		return 0, err
	}
	n := copy(p, w.data)
	if n < len(p) {
		return n, io.EOF
	}
	o.mu.Lock()
	o.windows = append([]s3Window{w}, o.windows[:min(len(o.windows), s3Windows-1)]...)
	o.mu.Unlock()
	return n, nil
}

// fromWindow copies p from a window that holds all of it and reports
// whether one did.
func (o *s3Object) fromWindow(p []byte, off int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, w := range o.windows {
		if off >= w.off && off+int64(len(p)) <= w.off+int64(len(w.data)) {
			copy(p, w.data[off-w.off:])
			copy(o.windows[1:k+1], o.windows[:k])
			o.windows[0] = w
			return true
		}
	}
	return false
}

// fetch gets up to n bytes of the object from off with one range GET.
// Fewer come back when the object ends sooner.
func (o *s3Object) fetch(off, n int64) (s3Window, error) {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return s3Window{}, fmt.Errorf("read %d bytes at %d of %s: %w", n, off, o.s.url(o.key), unix.EINVAL)
	}
	obj, err := o.s.client.GetObject(context.Background(), o.s.bucket, o.key, opts)
	if err != nil {
		return s3Window{}, o.s.fail("get range of", o.key, err)
	}
	defer obj.Close()

	data, err := io.ReadAll(io.LimitReader(obj, n))
	if s3Response(err).Code == "InvalidRange" {
		return s3Window{off: off}, nil
	}
	if err != nil {
		return s3Window{}, o.s.fail("get range of", o.key, err)
	}
	return s3Window{off: off, data: data}, nil
}

// Close makes later reads fail; there is nothing to release.
func (o *s3Object) Close() error {
	o.closed.Store(true)
	return nil
}
