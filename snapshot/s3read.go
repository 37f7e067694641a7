package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
	key := manifestKey(proc, name)
	data, err := s.getAll(key, maxManifestSize)
	if err != nil {
		return nil, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", s.url(key), err)
	}
	if m.Info.Process != p {
		return nil, fmt.Errorf("manifest %s describes pid %d start time %d boot %s: %w",
			s.url(key), m.Info.Process.PID, m.Info.Process.StartTime, m.Info.Process.BootID, ErrCorrupt)
	}

	objects, err := s.listObjects(proc + dataPrefix + m.Data + "/")
	if err != nil {
		return nil, err
	}
	info, err := s.checkManifest(proc, name, m, int64(len(data)), objects)
	if err != nil {
		return nil, err
	}

	img, x, err := readMetadata(m, func(entry fileEntry) ([]byte, error) {
		key := dataKey(proc, m.Data, entry.Name)
		data, err := s.getAll(key, int64(entry.Size))
		if err != nil {
			return nil, err
		}
		return data, checkContents(s.url(key), data, entry)
	})
	if err != nil {
		return nil, err
	}
	memory := &s3Object{s: s, key: dataKey(proc, m.Data, memoryFile)}
	return newSnapshot(s.url(proc+name), info, m, img, x, memory)
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

// s3Object reads byte ranges of the memory object of a loaded snapshot,
// one range GET a call. Data objects never change once uploaded, so no
// read needs to check a version.
type s3Object struct {
	s      *s3Store
	key    string
	closed atomic.Bool
}

// ReadAt fills p from off. A range that ends past the object gives io.EOF,
// which a Snapshot reports as ErrCorrupt: Load checked the object's size.
func (o *s3Object) ReadAt(p []byte, off int64) (int, error) {
	if o.closed.Load() {
		return 0, fmt.Errorf("read %s: %w", o.s.url(o.key), os.ErrClosed)
	}
	if len(p) == 0 {
		return 0, nil
	}

	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+int64(len(p))-1); err != nil {
		return 0, fmt.Errorf("read %d bytes at %d of %s: %w", len(p), off, o.s.url(o.key), unix.EINVAL)
	}
	obj, err := o.s.client.GetObject(context.Background(), o.s.bucket, o.key, opts)
	if err != nil {
		return 0, o.s.fail("get range of", o.key, err)
	}
	defer obj.Close()

	n, err := io.ReadFull(obj, p)
	if errors.Is(err, io.ErrUnexpectedEOF) || s3Response(err).Code == "InvalidRange" {
		return n, io.EOF
	}
	if err != nil {
		return n, o.s.fail("get range of", o.key, err)
	}
	return n, nil
}

// Close makes later reads fail; there is nothing to release.
func (o *s3Object) Close() error {
	o.closed.Store(true)
	return nil
}
