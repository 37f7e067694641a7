package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

func TestSettingsRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, again := tb.open(t)
		p, q := testProcess(5101), testProcess(5102)

		if _, err := s.GetSetting(p, "autosave"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("GetSetting of a process without snapshots: %v, want ENOENT", err)
		}
		mustPutSetting(t, s, p, "autosave", []byte("30s keep=10"))
		mustPutSetting(t, s, p, "autosave", []byte("1m keep=3"))
		mustPutSetting(t, s, p, "autosave-counter", []byte("7"))
		mustPutSetting(t, s, q, "autosave", []byte("5s keep=1"))

		if got := mustGetSetting(t, s, p, "autosave"); string(got) != "1m keep=3" {
			t.Errorf("GetSetting after a replace = %q, want the second value", got)
		}
		if got := mustGetSetting(t, s, p, "autosave-counter"); string(got) != "7" {
			t.Errorf("GetSetting(autosave-counter) = %q, want 7", got)
		}

		all, err := again().Settings("autosave")
		if err != nil {
			t.Fatalf("Settings on a reopened store: %v", err)
		}
		if len(all) != 2 || string(all[p]) != "1m keep=3" || string(all[q]) != "5s keep=1" {
			t.Errorf("Settings(autosave) = %v, want two processes with their values", all)
		}
	})
}

func TestSettingsDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		p := testProcess(5111)
		mustPutSetting(t, s, p, "autosave", []byte("2s"))
		mustPutSetting(t, s, p, "autosave-counter", []byte("3"))

		if err := s.DeleteSetting(p, "autosave"); err != nil {
			t.Fatalf("DeleteSetting: %v", err)
		}
		if _, err := s.GetSetting(p, "autosave"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("GetSetting after DeleteSetting: %v, want ENOENT", err)
		}
		if got := mustGetSetting(t, s, p, "autosave-counter"); string(got) != "3" {
			t.Errorf("another key of the process = %q after the delete, want 3", got)
		}
		if err := s.DeleteSetting(p, "autosave"); err != nil {
			t.Errorf("DeleteSetting of a missing setting: %v, want nil", err)
		}
		if err := s.DeleteSetting(testProcess(5112), "autosave"); err != nil {
			t.Errorf("DeleteSetting of a process unknown to the store: %v, want nil", err)
		}

		all, err := s.Settings("autosave")
		if err != nil {
			t.Fatalf("Settings: %v", err)
		}
		if len(all) != 0 {
			t.Errorf("Settings after the delete = %v, want none", all)
		}
	})
}

func TestSettingsBesideSnapshots(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tb testBackend) {
		s, _ := tb.open(t)
		img := testImage(5121, 3)
		mustPutSetting(t, s, img.Process, "autosave", []byte("1s"))

		info, err := s.Save(img, "")
		if err != nil {
			t.Fatalf("Save after PutSetting: %v", err)
		}
		if info.Name != "snap-1" {
			t.Errorf("first automatic name = %s, want snap-1", info.Name)
		}
		infos, err := s.Snapshots(img.Process)
		if err != nil {
			t.Fatalf("Snapshots: %v", err)
		}
		if len(infos) != 1 || infos[0].Name != "snap-1" {
			t.Errorf("Snapshots = %v, want only snap-1", infos)
		}

		if err := s.Remove(img.Process, "snap-1"); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if got := mustGetSetting(t, s, img.Process, "autosave"); string(got) != "1s" {
			t.Errorf("setting after removing the only snapshot = %q, want 1s", got)
		}
	})
}

func TestSettingsRejectBadInput(t *testing.T) {
	s, _ := openTestStore(t)
	p := testProcess(5131)

	for _, key := range []string{"", "Autosave", "9lives", "a/b", ".counter", "auto save", strings.Repeat("k", 33)} {
		if err := s.PutSetting(p, 0, key, []byte("x")); !errors.Is(err, unix.EINVAL) {
			t.Errorf("PutSetting key %q: %v, want EINVAL", key, err)
		}
		if _, err := s.GetSetting(p, key); !errors.Is(err, unix.EINVAL) {
			t.Errorf("GetSetting key %q: %v, want EINVAL", key, err)
		}
	}
	if err := s.PutSetting(p, 0, "big", make([]byte, maxSettingSize+1)); !errors.Is(err, unix.EINVAL) {
		t.Errorf("PutSetting of %d bytes: %v, want EINVAL", maxSettingSize+1, err)
	}
	mustPutSetting(t, s, p, "big", make([]byte, maxSettingSize))
	if got := mustGetSetting(t, s, p, "big"); len(got) != maxSettingSize {
		t.Errorf("GetSetting of the largest setting returned %d bytes, want %d", len(got), maxSettingSize)
	}
}

func TestSettingsLocalLayout(t *testing.T) {
	s, _ := openTestStore(t)
	p := testProcess(5141)
	mustPutSetting(t, s, p, "autosave", []byte("10s"))

	proc := filepath.Join(s.Dir(), "1234", processDirNames(p)[0])
	path := filepath.Join(proc, settingPrefix+"autosave")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("setting file under the owner uid given to PutSetting: %v", err)
	}
	if fi.Mode().Perm() != fileMode {
		t.Errorf("setting file mode %v, want %v", fi.Mode().Perm(), os.FileMode(fileMode))
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left beside the setting: %v", err)
	}

	// A Save of the process uses the directory the setting created.
	img := testImage(p.PID, 4)
	img.Process = p
	if _, err := s.Save(img, "first"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if _, err := os.Stat(filepath.Join(proc, "first")); err != nil {
		t.Errorf("snapshot not in the process directory of the setting: %v", err)
	}
}

func TestSettingsDamaged(t *testing.T) {
	s, logs := openTestStore(t)
	p, q := testProcess(5151), testProcess(5152)
	mustPutSetting(t, s, p, "autosave", []byte("10s"))
	mustPutSetting(t, s, q, "autosave", []byte("20s"))

	pDir, err := s.findProcessDir(p)
	if err != nil {
		t.Fatal(err)
	}
	qDir, err := s.findProcessDir(q)
	if err != nil {
		t.Fatal(err)
	}
	// p's setting copied into q's directory names the wrong process.
	moved, err := os.ReadFile(filepath.Join(pDir, settingPrefix+"autosave"))
	if err != nil {
		t.Fatal(err)
	}
	overwrite(t, filepath.Join(qDir, settingPrefix+"autosave"), moved)
	overwrite(t, filepath.Join(pDir, settingPrefix+"autosave"), []byte("{not json"))

	all, err := s.Settings("autosave")
	if err != nil {
		t.Fatalf("Settings: %v", err)
	}
	if len(all) != 0 {
		t.Errorf("Settings returned damaged settings: %v", all)
	}
	if _, err := s.GetSetting(p, "autosave"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("GetSetting of a damaged file: %v, want ErrCorrupt", err)
	}
	if _, err := s.GetSetting(q, "autosave"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("GetSetting of another process's setting: %v, want ErrCorrupt", err)
	}
	if n := strings.Count(logs.String(), "skipping damaged setting"); n != 2 {
		t.Errorf("%d warnings about damaged settings, want 2:\n%s", n, logs)
	}
}

func overwrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustPutSetting(t *testing.T, s *Store, p ProcessID, key string, data []byte) {
	t.Helper()
	if err := s.PutSetting(p, 1234, key, data); err != nil {
		t.Fatalf("PutSetting(%d, %s): %v", p.PID, key, err)
	}
}

func mustGetSetting(t *testing.T, s *Store, p ProcessID, key string) []byte {
	t.Helper()
	data, err := s.GetSetting(p, key)
	if err != nil {
		t.Fatalf("GetSetting(%d, %s): %v", p.PID, key, err)
	}
	return bytes.Clone(data)
}

func TestSettingsDamagedS3(t *testing.T) {
	srv := startS3(t)
	s, logs := openS3Store(t, srv, "host-a")
	b := s3Of(t, s)
	p, q := testProcess(5161), testProcess(5162)
	mustPutSetting(t, s, p, "autosave", []byte("10s"))

	// p's setting copied under q's prefix names the wrong process.
	encoded, err := b.getAll(b.processPrefix(p)+settingPrefix+"autosave", maxStoredSetting)
	if err != nil {
		t.Fatal(err)
	}
	moved := b.processPrefix(q) + settingPrefix + "autosave"
	_, err = b.client.PutObject(context.Background(), b.bucket, moved, bytes.NewReader(encoded), int64(len(encoded)), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}

	all, err := s.Settings("autosave")
	if err != nil {
		t.Fatalf("Settings: %v", err)
	}
	if len(all) != 1 || string(all[p]) != "10s" {
		t.Errorf("Settings = %v, want only the setting of pid %d", all, p.PID)
	}
	if _, err := s.GetSetting(q, "autosave"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("GetSetting of another process's setting: %v, want ErrCorrupt", err)
	}
	if !strings.Contains(logs.String(), "skipping damaged setting") {
		t.Errorf("no warning about the moved setting:\n%s", logs)
	}
}
