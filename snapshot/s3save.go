package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

// maxAutoAttempts bounds the snap-N numbers one save tries when concurrent
// saves of the same process take the numbers it picked.
const maxAutoAttempts = 100

// errNoReply marks a manifest put that failed without a reply from the
// server, which may have created the manifest all the same.
var errNoReply = errors.New("no reply from the server")

// saveImage uploads the data objects of the snapshot under a new upload id,
// then creates its manifest object, which commits it.
func (s *s3Store) saveImage(img *Image, name string, src MemorySource) (*Info, error) {
	proc := s.processPrefix(img.Process)
	if name != "" {
		// Fail before compressing anything when the name is already
		// taken; the conditional put of the manifest checks again.
		if err := s.checkFree(proc, name); err != nil {
			return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
		}
	}

	id := newDataID()
	files, err := s.upload(proc, id, img, src)
	if err != nil {
		s.deleteData(proc, id)
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	if s.afterUpload != nil {
		s.afterUpload()
	}

	info, err := s.commit(proc, id, img, name, files)
	if errors.Is(err, errNoReply) {
		s.log.Warn("snapshot data kept because its manifest may exist", "pid", img.Process.PID,
			"path", s.url(proc+dataPrefix+id), "err", err)
	} else if err != nil {
		s.deleteData(proc, id)
	}
	if err != nil {
		return nil, fmt.Errorf("save snapshot of process %d: %w", img.Process.PID, err)
	}
	return info, nil
}

// checkFree returns an error wrapping unix.EEXIST when the process under
// proc has a manifest for name.
func (s *s3Store) checkFree(proc, name string) error {
	key := manifestKey(proc, name)
	_, err := s.client.StatObject(context.Background(), s.bucket, key, minio.StatObjectOptions{})
	if err == nil {
		return fmt.Errorf("snapshot %s exists at %s: %w", name, s.url(key), unix.EEXIST)
	}
	if s3Errno(err) != unix.ENOENT {
		return s.fail("check snapshot name", key, err)
	}
	return nil
}

// upload puts every object of a snapshot except the manifest and returns
// their manifest entries in manifest order.
func (s *s3Store) upload(proc, id string, img *Image, src MemorySource) ([]fileEntry, error) {
	meta, err := json.Marshal(img)
	if err != nil {
		return nil, fmt.Errorf("encode image metadata: %w", err)
	}
	imageEntry, err := s.putData(proc, id, imageFile, meta)
	if err != nil {
		return nil, err
	}
	mapsEntry, err := s.putData(proc, id, mapsFile, img.Maps)
	if err != nil {
		return nil, err
	}

	memoryEntry, x, err := s.uploadMemory(proc, id, img, src)
	if err != nil {
		return nil, err
	}
	packed, err := packIndex(x)
	if err != nil {
		return nil, err
	}
	indexEntry, err := s.putData(proc, id, indexFile, packed)
	if err != nil {
		return nil, err
	}
	return []fileEntry{memoryEntry, imageEntry, mapsEntry, indexEntry}, nil
}

// putData puts one data object of upload id and returns its manifest entry.
func (s *s3Store) putData(proc, id, file string, data []byte) (fileEntry, error) {
	key := dataKey(proc, id, file)
	_, err := s.client.PutObject(context.Background(), s.bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return fileEntry{}, s.fail("put", key, err)
	}
	return fileEntry{Name: file, Size: uint64(len(data)), Hash: xxhash.Sum64(data)}, nil
}

// uploadMemory compresses the memory of img into a spool file, then puts
// it, so that the client knows its size and can retry or split it in
// parts. The spool is unlinked at once and disappears with its descriptor,
// even when this program is killed.
func (s *s3Store) uploadMemory(proc, id string, img *Image, src MemorySource) (fileEntry, *index, error) {
	spool, err := os.CreateTemp("", "ckptfs-memory-*")
	if err != nil {
		return fileEntry{}, nil, fmt.Errorf("create spool file for memory: %w", err)
	}
	defer spool.Close()
	if err := os.Remove(spool.Name()); err != nil {
		return fileEntry{}, nil, fmt.Errorf("unlink spool file %s: %w", spool.Name(), err)
	}

	out := newHashWriter(memoryFile, spool)
	x, err := encodeMemory(&out, img, src, false)
	if err != nil {
		return fileEntry{}, nil, fmt.Errorf("spool memory to %s: %w", spool.Name(), err)
	}

	entry := out.entry()
	key := dataKey(proc, id, memoryFile)
	body := io.NewSectionReader(spool, 0, int64(entry.Size))
	_, err = s.client.PutObject(context.Background(), s.bucket, key, body, int64(entry.Size),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return fileEntry{}, nil, s.fail("put", key, err)
	}
	return entry, x, nil
}

// commit names the snapshot and creates its manifest object. An automatic
// name takes the next number above the process's counter and its snap-N
// names. When a concurrent save creates that manifest first, commit tries
// the next number.
func (s *s3Store) commit(proc, id string, img *Image, name string, files []fileEntry) (*Info, error) {
	auto := name == ""
	var n uint64
	if auto {
		last, err := s.lastAutoNumber(proc)
		if err != nil {
			return nil, err
		}
		n = last + 1
	}

	for attempt := 1; ; attempt++ {
		if auto {
			name = autoName(n)
		}
		m := &manifest{Version: manifestVersion, Info: newInfo(img, name), Files: files, Data: id}
		data, err := encodeManifest(m)
		if err != nil {
			return nil, err
		}

		err = s.putManifest(proc, name, data)
		if auto && errors.Is(err, unix.EEXIST) && attempt < maxAutoAttempts {
			n++
			continue
		}
		if err != nil {
			return nil, err
		}

		if auto {
			s.writeCounter(proc, n)
		}
		info := m.Info
		info.Stored = uint64(len(data))
		for _, file := range files {
			info.Stored += file.Size
		}
		return &info, nil
	}
}

// putManifest creates the manifest object of snapshot name, which must not
// exist: a taken name gives an error wrapping unix.EEXIST.
func (s *s3Store) putManifest(proc, name string, data []byte) error {
	key := manifestKey(proc, name)
	opts := minio.PutObjectOptions{ContentType: "text/plain"}
	if s.unconditional.Load() {
		if err := s.checkFree(proc, name); err != nil {
			return err
		}
	} else {
		opts.SetMatchETagExcept("*")
	}

	_, err := s.client.PutObject(context.Background(), s.bucket, key, bytes.NewReader(data), int64(len(data)), opts)
	switch {
	case err == nil:
		return nil
	case s3Errno(err) == unix.EEXIST:
		return fmt.Errorf("snapshot %s exists at %s: %w", name, s.url(key), unix.EEXIST)
	case s3Errno(err) == unix.EOPNOTSUPP && !s.unconditional.Load():
		// NOTE: without If-None-Match, two saves that check a name at the
		// same moment may both put its manifest, and the later one
		// replaces the earlier. Servers that ignore the header have the
		// same race without this warning.
		s.log.Warn("S3 server rejects conditional puts, a concurrent save may replace a snapshot of the same name",
			"endpoint", s.endpoint, "err", err)
		s.unconditional.Store(true)
		return s.putManifest(proc, name, data)
	case !gotReply(err):
		return fmt.Errorf("%w: %w", s.fail("put manifest", key, err), errNoReply)
	}
	return s.fail("put manifest", key, err)
}

// lastAutoNumber returns the highest of the process's counter and the N of
// its snap-N names.
func (s *s3Store) lastAutoNumber(proc string) (uint64, error) {
	last := s.readCounter(proc)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: proc}) {
		if obj.Err != nil {
			return 0, s.fail("list", proc, obj.Err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(obj.Key, proc), "/")
		if n, ok := autoNumber(name); ok {
			last = max(last, n)
		}
	}
	return last, nil
}

// readCounter returns the last auto number of a process. A missing counter
// reads as 0; a damaged one is logged and read as 0, because the names
// present still keep their numbers from being reused.
func (s *s3Store) readCounter(proc string) uint64 {
	key := proc + counterFile
	data, err := s.getAll(key, 64)
	if errors.Is(err, unix.ENOENT) {
		return 0
	}
	if err == nil {
		n, parseErr := strconv.ParseUint(strings.TrimSuffix(string(data), "\n"), 10, 64)
		if parseErr == nil {
			return n
		}
		err = fmt.Errorf("counter %q: %v: %w", data, parseErr, ErrCorrupt)
	}
	s.warnOnce(s.url(key), "auto-name counter unreadable, names restart above the newest present", err)
	return 0
}

// writeCounter records n as the last auto number of a process. The
// snapshot that uses n is already committed, so a failure is only logged.
func (s *s3Store) writeCounter(proc string, n uint64) {
	// NOTE: two saves of one process at once may write their numbers in
	// the wrong order and leave the lower one. The higher snapshot still
	// keeps its number from reuse until it is removed.
	key := proc + counterFile
	data := []byte(strconv.FormatUint(n, 10) + "\n")
	_, err := s.client.PutObject(context.Background(), s.bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "text/plain"})
	if err != nil {
		s.log.Warn("cannot record the auto-name counter", "path", s.url(key), "n", n, "err", s.fail("put", key, err))
	}
}

// deleteData deletes the data objects of upload id after a failed save or
// a removal. Objects it cannot delete are logged and stay; no manifest
// names them, so they are never listed. It gives up at the first request
// without a reply, because the others would fail the same way.
func (s *s3Store) deleteData(proc, id string) {
	for _, file := range dataFiles {
		key := dataKey(proc, id, file)
		err := s.client.RemoveObject(context.Background(), s.bucket, key, minio.RemoveObjectOptions{})
		if err == nil || s3Errno(err) == unix.ENOENT {
			continue
		}

		// NOTE: nothing sweeps data objects left by failed deletes or by
		// saves killed before their manifest: they cost space until
		// deleted by hand under PREFIX/HOST/*/.data/.
		s.log.Warn("cannot delete snapshot data, it stays but is never listed", "path", s.url(proc+dataPrefix+id),
			"err", s.fail("delete", key, err))
		if !gotReply(err) {
			return
		}
	}
}

// linksBase is false: a bucket stores every snapshot whole, reading the
// Base runs of an incremental image from its base.
func (s *s3Store) linksBase() bool { return false }
