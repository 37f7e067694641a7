package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

// putSetting replaces the setting object with one put, which a reader sees
// whole or not at all. A bucket has no per-owner place, so uid is unused.
func (s *s3Store) putSetting(p ProcessID, uid uint32, key string, encoded []byte) error {
	object := s.processPrefix(p) + settingPrefix + key
	_, err := s.client.PutObject(context.Background(), s.bucket, object, bytes.NewReader(encoded), int64(len(encoded)),
		minio.PutObjectOptions{ContentType: "application/json"})
	if err != nil {
		return s.fail("put", object, err)
	}
	return nil
}

func (s *s3Store) getSetting(p ProcessID, key string) ([]byte, error) {
	return s.getAll(s.processPrefix(p)+settingPrefix+key, maxStoredSetting)
}

func (s *s3Store) deleteSetting(p ProcessID, key string) error {
	object := s.processPrefix(p) + settingPrefix + key
	err := s.client.RemoveObject(context.Background(), s.bucket, object, minio.RemoveObjectOptions{})
	if err != nil && s3Errno(err) != unix.ENOENT {
		return s.fail("delete", object, err)
	}
	return nil
}

// settings lists the host's objects once and fetches every setting object
// of the key. A setting must name the process of its prefix.
//
// NOTE: the listing covers every object of the host, snapshot data
// included, so its cost grows with the number of stored snapshots.
func (s *s3Store) settings(key string) (map[ProcessID][]byte, error) {
	objects, err := s.listObjects(s.root)
	if err != nil {
		return nil, err
	}

	found := map[ProcessID][]byte{}
	for object := range objects {
		proc, name, ok := strings.Cut(strings.TrimPrefix(object, s.root), "/")
		if !ok || name != settingPrefix+key {
			continue
		}
		p, data, err := s.readSetting(s.root+proc+"/", object, key)
		if err != nil {
			s.warnOnce(s.url(object), "skipping damaged setting", err)
			continue
		}
		found[p] = data
	}
	return found, nil
}

// readSetting fetches and checks the setting object under the process
// prefix proc.
func (s *s3Store) readSetting(proc, object, key string) (ProcessID, []byte, error) {
	encoded, err := s.getAll(object, maxStoredSetting)
	if err != nil {
		return ProcessID{}, nil, err
	}
	f, err := decodeSetting(encoded, key)
	if err != nil {
		return ProcessID{}, nil, fmt.Errorf("%s: %w", s.url(object), err)
	}
	if s.processPrefix(f.Process) != proc {
		return ProcessID{}, nil, fmt.Errorf("%s names pid %d start time %d, not the process of its prefix: %w",
			s.url(object), f.Process.PID, f.Process.StartTime, ErrCorrupt)
	}
	return f.Process, f.Data, nil
}
