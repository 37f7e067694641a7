package snapshot

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
)

func (s *s3Store) listSnapshots(pid int) ([]Info, error) {
	prefix := s.root
	if pid != 0 {
		// Process prefixes are "<pid>-<starttime>.boot-<tag>".
		prefix += strconv.Itoa(pid) + "-"
	}
	infos, err := s.snapshotsUnder(prefix, nil)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	return infos, nil
}

func (s *s3Store) processSnapshots(p ProcessID) ([]Info, error) {
	infos, err := s.snapshotsUnder(s.processPrefix(p), &p)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of process %d: %w", p.PID, err)
	}
	return infos, nil
}

// snapshotsUnder returns the snapshots whose manifest key starts with
// prefix and verifies: its name and process match its key (and only, when
// not nil), and every data object it lists exists with the recorded size.
// One listing of the prefix gives the keys and sizes; manifests come from
// the cache when their ETag is unchanged.
func (s *s3Store) snapshotsUnder(prefix string, only *ProcessID) ([]Info, error) {
	objects, err := s.listObjects(prefix)
	if err != nil {
		return nil, err
	}

	infos := []Info{}
	for key, obj := range objects {
		proc, name, ok := s.parseManifestKey(key)
		if !ok {
			continue
		}
		info, err := s.readInfo(proc, name, obj, objects)
		if err == nil && only != nil && info.Process != *only {
			err = fmt.Errorf("manifest describes pid %d start time %d boot %s: %w",
				info.Process.PID, info.Process.StartTime, info.Process.BootID, ErrCorrupt)
		}
		if err != nil {
			s.warnOnce(s.url(key), "skipping snapshot without a valid manifest", err)
			continue
		}
		infos = append(infos, info)
	}
	s.pruneManifests(prefix, objects)
	return infos, nil
}

// listObjects returns every object under prefix by key.
func (s *s3Store) listObjects(prefix string) (map[string]minio.ObjectInfo, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	objects := map[string]minio.ObjectInfo{}
	opts := minio.ListObjectsOptions{Prefix: prefix, Recursive: true}
	for obj := range s.client.ListObjects(ctx, s.bucket, opts) {
		if obj.Err != nil {
			return nil, s.fail("list", prefix, obj.Err)
		}
		objects[obj.Key] = obj
	}
	return objects, nil
}

// parseManifestKey splits ROOT/PROC/NAME/manifest into the process prefix
// ROOT/PROC/ and NAME.
func (s *s3Store) parseManifestKey(key string) (proc, name string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(key, s.root), "/")
	if len(parts) != 3 || parts[0] == "" || parts[2] != manifestFile || ValidName(parts[1]) != nil {
		return "", "", false
	}
	return s.root + parts[0] + "/", parts[1], true
}

// readInfo checks the manifest object obj of snapshot name under the
// process prefix proc against the listed objects.
func (s *s3Store) readInfo(proc, name string, obj minio.ObjectInfo, objects map[string]minio.ObjectInfo) (Info, error) {
	m, err := s.cachedManifest(obj)
	if err != nil {
		return Info{}, err
	}
	return s.checkManifest(proc, name, m, obj.Size, objects)
}

// checkManifest checks that manifest m, of size bytes, belongs at the key
// of snapshot name under proc, and that objects holds every data object it
// lists with the recorded size. It returns the snapshot's Info.
func (s *s3Store) checkManifest(proc, name string, m *manifest, size int64, objects map[string]minio.ObjectInfo) (Info, error) {
	if m.Info.Name != name || s.processPrefix(m.Info.Process) != proc {
		return Info{}, fmt.Errorf("manifest of %s describes snapshot %q of pid %d start time %d: %w",
			s.url(proc+name), m.Info.Name, m.Info.Process.PID, m.Info.Process.StartTime, ErrCorrupt)
	}
	if len(m.Sources) != 0 {
		return Info{}, fmt.Errorf("manifest of %s points into other uploads, which a bucket never does: %w", s.url(proc+name), ErrCorrupt)
	}

	info := m.Info
	info.Stored = uint64(size)
	for _, entry := range m.Files {
		key := dataKey(proc, m.Data, entry.Name)
		obj, ok := objects[key]
		if !ok {
			return Info{}, fmt.Errorf("%s listed in the manifest is missing: %w", s.url(key), ErrCorrupt)
		}
		if uint64(obj.Size) != entry.Size {
			return Info{}, fmt.Errorf("%s is %d bytes, expected %d from the manifest: %w", s.url(key), obj.Size, entry.Size, ErrCorrupt)
		}
		info.Stored += entry.Size
	}
	return info, nil
}

// cachedManifest returns the parsed manifest of the listed object obj,
// fetching it only when the cache has no entry with its ETag.
func (s *s3Store) cachedManifest(obj minio.ObjectInfo) (*manifest, error) {
	s.manifestMu.Lock()
	cached, ok := s.manifests[obj.Key]
	s.manifestMu.Unlock()
	if ok && cached.etag == obj.ETag && cached.size == obj.Size {
		return cached.m, nil
	}

	data, err := s.getAll(obj.Key, maxManifestSize)
	if err != nil {
		return nil, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", s.url(obj.Key), err)
	}

	s.manifestMu.Lock()
	s.manifests[obj.Key] = cachedManifest{etag: obj.ETag, size: obj.Size, m: m}
	s.manifestMu.Unlock()
	return m, nil
}

// pruneManifests drops the cached manifests under prefix that the listing
// objects no longer holds.
func (s *s3Store) pruneManifests(prefix string, objects map[string]minio.ObjectInfo) {
	s.manifestMu.Lock()
	defer s.manifestMu.Unlock()
	for key := range s.manifests {
		if _, ok := objects[key]; !ok && strings.HasPrefix(key, prefix) {
			delete(s.manifests, key)
		}
	}
}

// removeSnapshot deletes the manifest object first, so the snapshot
// disappears in one step, then its data objects.
func (s *s3Store) removeSnapshot(p ProcessID, name string) error {
	proc := s.processPrefix(p)
	key := manifestKey(proc, name)
	data, err := s.getAll(key, maxManifestSize)
	if err != nil {
		return fmt.Errorf("remove snapshot %s of process %d: %w", name, p.PID, err)
	}
	m, parseErr := parseManifest(data)

	err = s.client.RemoveObject(context.Background(), s.bucket, key, minio.RemoveObjectOptions{})
	if err != nil {
		return fmt.Errorf("remove snapshot %s of process %d: %w", name, p.PID, s.fail("delete", key, err))
	}
	s.manifestMu.Lock()
	delete(s.manifests, key)
	s.manifestMu.Unlock()

	if parseErr != nil {
		s.log.Warn("removed a damaged manifest, its data objects stay", "path", s.url(key), "err", parseErr)
		return nil
	}
	s.deleteData(proc, m.Data)
	return nil
}
