package snapshot

import (
	"encoding/json"
	"fmt"

	"golang.org/x/sys/unix"
)

// Per-process settings are small values that a program keeps in the store
// beside a process's snapshots, such as the autosave schedule of the mount.
// A setting has a key ([a-z][a-z0-9-]*, at most 32 bytes) and opaque data of
// at most maxSettingSize bytes. It is stored as a settingFile with the
// identity of its process, so that a setting copied or renamed to another
// process is detected as damaged:
//
//	local: <uid>/<pid>-<starttime>/.setting.<key>      mode 0400
//	S3:    <pid>-<starttime>.boot-<tag>/.setting.<key>
//
// The leading dot keeps the file apart from snapshot names. A setting is
// replaced in one step. Locally, a temporary file is written beside it,
// synced and renamed over the old one under the lock of the process
// directory. In a bucket, one put replaces the whole object.
const (
	settingPrefix  = ".setting."
	maxSettingKey  = 32
	maxSettingSize = 64 << 10
)

// settingFile is the stored form of one setting.
type settingFile struct {
	Process ProcessID `json:"process"`
	Key     string    `json:"key"`
	Data    []byte    `json:"data"`
}

// settingsBackend is implemented by every backend.
type settingsBackend interface {
	// putSetting stores encoded as the setting key of p, creating the
	// process's place in the store under uid when p has none.
	putSetting(p ProcessID, uid uint32, key string, encoded []byte) error

	// getSetting returns the stored setting key of p, or an error wrapping
	// unix.ENOENT.
	getSetting(p ProcessID, key string) ([]byte, error)

	// deleteSetting deletes the setting key of p; a missing one is no error.
	deleteSetting(p ProcessID, key string) error

	// settings returns the data of setting key of every process that has
	// a valid one, logging damaged ones at Warn once.
	settings(key string) (map[ProcessID][]byte, error)
}

// Compile-time checks that every backend keeps settings.
var (
	_ settingsBackend = (*dirStore)(nil)
	_ settingsBackend = (*s3Store)(nil)
)

// PutSetting stores data as the setting key of process p, replacing any
// earlier value in one step. uid is the owner under which a process that
// has no snapshots yet gets its directory in a local store: the process's
// real uid, as Save uses. A bad key or data larger than 64 KiB give an
// error wrapping unix.EINVAL.
func (s *Store) PutSetting(p ProcessID, uid uint32, key string, data []byte) error {
	if err := validSettingKey(key); err != nil {
		return fmt.Errorf("put setting of process %d: %w", p.PID, err)
	}
	if len(data) > maxSettingSize {
		return fmt.Errorf("put setting %s of process %d: %d bytes, more than %d: %w",
			key, p.PID, len(data), maxSettingSize, unix.EINVAL)
	}

	encoded, err := json.Marshal(settingFile{Process: p, Key: key, Data: data})
	if err != nil {
		return fmt.Errorf("encode setting %s of process %d: %w", key, p.PID, err)
	}
	if err := s.settingsBackend().putSetting(p, uid, key, append(encoded, '\n')); err != nil {
		return fmt.Errorf("put setting %s of process %d: %w", key, p.PID, err)
	}
	return nil
}

// GetSetting returns the setting key of process p. A process without that
// setting gives an error wrapping unix.ENOENT, a damaged setting one
// wrapping ErrCorrupt.
func (s *Store) GetSetting(p ProcessID, key string) ([]byte, error) {
	if err := validSettingKey(key); err != nil {
		return nil, fmt.Errorf("get setting of process %d: %w", p.PID, err)
	}
	encoded, err := s.settingsBackend().getSetting(p, key)
	if err != nil {
		return nil, fmt.Errorf("get setting %s of process %d: %w", key, p.PID, err)
	}

	f, err := decodeSetting(encoded, key)
	if err == nil && f.Process != p {
		err = fmt.Errorf("setting names pid %d start time %d: %w", f.Process.PID, f.Process.StartTime, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("get setting %s of process %d: %w", key, p.PID, err)
	}
	return f.Data, nil
}

// DeleteSetting deletes the setting key of process p. Deleting a setting
// that does not exist does nothing.
func (s *Store) DeleteSetting(p ProcessID, key string) error {
	if err := validSettingKey(key); err != nil {
		return fmt.Errorf("delete setting of process %d: %w", p.PID, err)
	}
	if err := s.settingsBackend().deleteSetting(p, key); err != nil {
		return fmt.Errorf("delete setting %s of process %d: %w", key, p.PID, err)
	}
	return nil
}

// Settings returns the setting key of every process in the store that has
// one, live or not. Damaged settings, and settings stored in the place of
// another process, are skipped and logged at Warn once per Store.
func (s *Store) Settings(key string) (map[ProcessID][]byte, error) {
	if err := validSettingKey(key); err != nil {
		return nil, fmt.Errorf("list settings: %w", err)
	}
	found, err := s.settingsBackend().settings(key)
	if err != nil {
		return nil, fmt.Errorf("list settings %s: %w", key, err)
	}
	return found, nil
}

// settingsBackend returns the backend as a settingsBackend. Every backend
// implements it, so a failure is a broken invariant of this package.
func (s *Store) settingsBackend() settingsBackend {
	b, ok := s.backend.(settingsBackend)
	if !ok {
		panic(fmt.Sprintf("snapshot: backend %T keeps no settings", s.backend))
	}
	return b
}

// decodeSetting parses a stored setting and checks that it is setting key
// and that its process identity is complete. Damage gives an error wrapping
// ErrCorrupt.
func decodeSetting(encoded []byte, key string) (settingFile, error) {
	var f settingFile
	if err := json.Unmarshal(encoded, &f); err != nil {
		return settingFile{}, fmt.Errorf("setting %s: %v: %w", key, err, ErrCorrupt)
	}
	if f.Key != key {
		return settingFile{}, fmt.Errorf("setting %s is stored with key %q: %w", key, f.Key, ErrCorrupt)
	}
	if f.Process.PID <= 0 || f.Process.BootID == "" {
		return settingFile{}, fmt.Errorf("setting %s names no process: %w", key, ErrCorrupt)
	}
	return f, nil
}

// validSettingKey checks a setting key: [a-z][a-z0-9-]*, at most 32 bytes.
// The error wraps unix.EINVAL.
func validSettingKey(key string) error {
	if key == "" || len(key) > maxSettingKey {
		return fmt.Errorf("invalid setting key %.40q: must be 1 to %d bytes: %w", key, maxSettingKey, unix.EINVAL)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		ok := c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '-')
		if !ok {
			return fmt.Errorf("invalid setting key %q: byte %d (%q) breaks [a-z][a-z0-9-]*: %w", key, i, c, unix.EINVAL)
		}
	}
	return nil
}
