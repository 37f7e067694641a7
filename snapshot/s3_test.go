package snapshot

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestS3ManifestPutIsConditional(t *testing.T) {
	srv := startS3(t)
	s, logs := openS3Store(t, srv, "host-a")
	b := s3Of(t, s)
	proc := b.processPrefix(testProcess(10))

	if err := b.putManifest(proc, "x", []byte("first\n")); err != nil {
		t.Fatalf("first putManifest: %v", err)
	}
	err := b.putManifest(proc, "x", []byte("second\n"))
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second putManifest = %v, want EEXIST", err)
	}
	if b.unconditional.Load() || strings.Contains(logs.String(), "conditional") {
		t.Errorf("the server rejected If-None-Match, so names are unique only by a check before the put: %s", logs.String())
	}
	data, err := b.getAll(manifestKey(proc, "x"), 64)
	if err != nil || string(data) != "first\n" {
		t.Errorf("manifest after the rejected put = %q, %v, want the first", data, err)
	}
}

func TestS3HostsDoNotCollide(t *testing.T) {
	srv := startS3(t)
	a, _ := openS3Store(t, srv, "host-a")
	b, _ := openS3Store(t, srv, "host-b")

	// The same process identity and names on both hosts, with different
	// contents.
	imgA, imgB := testImage(1200, 50), testImage(1200, 51)
	for _, save := range []struct {
		s   *Store
		img *Image
	}{{a, imgA}, {b, imgB}} {
		for _, name := range []string{"", "same"} {
			if _, err := save.s.Save(save.img, name); err != nil {
				t.Fatalf("Save(%q) on %s: %v", name, save.s.Dir(), err)
			}
		}
	}

	for _, side := range []struct {
		s   *Store
		img *Image
	}{{a, imgA}, {b, imgB}} {
		list, err := side.s.List(0)
		if err != nil {
			t.Fatalf("List on %s: %v", side.s.Dir(), err)
		}
		if !slices.Equal(names(list), []string{"same", "snap-1"}) {
			t.Errorf("List on %s = %v, want its own [same snap-1]", side.s.Dir(), names(list))
		}
		snap := load(t, side.s, side.img.Process, "same")
		if !snap.Info.Captured.Equal(side.img.Captured) {
			t.Errorf("Load on %s returned the snapshot captured %v", side.s.Dir(), snap.Info.Captured)
		}
		want := regionBytes(&side.img.Regions[1])
		got := make([]byte, len(want))
		if err := snap.ReadRegion(1, got, 0); err != nil || !bytes.Equal(got, want) {
			t.Errorf("region 1 on %s: err %v, equal %v", side.s.Dir(), err, bytes.Equal(got, want))
		}
	}

	if err := a.Remove(imgA.Process, "same"); err != nil {
		t.Fatalf("Remove on host-a: %v", err)
	}
	if list, _ := b.List(0); !slices.Equal(names(list), []string{"same", "snap-1"}) {
		t.Errorf("List on host-b after a removal on host-a = %v, want [same snap-1]", names(list))
	}
	if list, _ := a.List(0); !slices.Equal(names(list), []string{"snap-1"}) {
		t.Errorf("List on host-a after its removal = %v, want [snap-1]", names(list))
	}
}

func TestS3ServerStoppedMidSave(t *testing.T) {
	srv := startS3(t)
	s, _ := openS3Store(t, srv, "host-a")
	b := s3Of(t, s)
	img := testImage(1300, 60)

	b.afterUpload = srv.stop
	_, err := s.Save(img, "lost")
	if err == nil {
		t.Fatalf("Save with the server stopped before its manifest succeeded")
	}
	t.Logf("Save error: %v", err)
	if !strings.Contains(err.Error(), srv.Addr) {
		t.Errorf("Save error does not name the endpoint %s: %v", srv.Addr, err)
	}
	if !strings.Contains(err.Error(), "lost/manifest") {
		t.Errorf("Save error does not name the manifest it failed to put: %v", err)
	}

	b.afterUpload = nil
	srv.start(t)
	list, err := s.List(0)
	if err != nil {
		t.Fatalf("List after the restart: %v", err)
	}
	if len(list) != 0 {
		t.Errorf("List after a save cut off by the server = %v, want nothing", names(list))
	}
	if _, err := s.Load(img.Process, "lost"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Load of the cut-off save = %v, want ENOENT", err)
	}
	if _, err := s.Save(img, "lost"); err != nil {
		t.Errorf("Save of the same name after the restart: %v", err)
	}
}

func TestS3ServerStoppedBeforeSave(t *testing.T) {
	srv := startS3(t)
	s, _ := openS3Store(t, srv, "host-a")
	srv.stop()

	_, err := s.Save(testImage(1301, 61), "")
	if err == nil || !strings.Contains(err.Error(), srv.endpoint()) {
		t.Errorf("Save with the server down = %v, want an error naming %s", err, srv.endpoint())
	}
	if _, err := s.List(0); err == nil || !strings.Contains(err.Error(), srv.endpoint()) {
		t.Errorf("List with the server down = %v, want an error naming %s", err, srv.endpoint())
	}
}

func TestS3ListSkipsDamagedManifest(t *testing.T) {
	srv := startS3(t)
	s, logs := openS3Store(t, srv, "host-a")
	b := s3Of(t, s)
	img := testImage(1400, 70)
	for _, name := range []string{"good", "bad"} {
		if _, err := s.Save(img, name); err != nil {
			t.Fatalf("Save(%s): %v", name, err)
		}
	}
	if list, _ := s.List(0); len(list) != 2 {
		t.Fatalf("List before the damage = %v, want both", names(list))
	}

	flipObjectByte(t, b, manifestKey(b.processPrefix(img.Process), "bad"), 60)
	list, err := s.List(0)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !slices.Equal(names(list), []string{"good"}) {
		t.Errorf("List with a damaged manifest = %v, want [good]", names(list))
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "bad/manifest") {
		t.Errorf("skipping a damaged manifest logged no warning naming it: %s", logs.String())
	}
	if _, err := s.Load(img.Process, "bad"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Load with a damaged manifest = %v, want ErrCorrupt", err)
	}
}

func TestS3ListSeesRemovalByAnotherStore(t *testing.T) {
	srv := startS3(t)
	first, _ := openS3Store(t, srv, "host-a")
	second, _ := openS3Store(t, srv, "host-a")
	img := testImage(1500, 80)
	info, err := first.Save(img, "")
	if err != nil {
		t.Fatalf("Save: %v", err)
	}

	if list, _ := first.Snapshots(img.Process); len(list) != 1 || !reflect.DeepEqual(list[0], *info) {
		t.Fatalf("Snapshots = %+v, want only %+v", list, *info)
	}
	if err := second.Remove(img.Process, info.Name); err != nil {
		t.Fatalf("Remove in a second Store: %v", err)
	}
	if list, _ := first.Snapshots(img.Process); len(list) != 0 {
		t.Errorf("Snapshots after a removal by another Store = %v, want nothing", names(list))
	}
}

func TestOpenURL(t *testing.T) {
	srv := startS3(t)
	t.Setenv("CKPTFS_S3_ENDPOINT", srv.endpoint())
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
	t.Setenv("AWS_ACCESS_KEY_ID", testS3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testS3Secret)
	t.Setenv("AWS_REGION", "us-east-1")
	host, err := hostID()
	if err != nil {
		t.Fatalf("hostID: %v", err)
	}

	s, err := OpenURL("s3://"+testBucket+"/"+testPrefix+"/", nil)
	if err != nil {
		t.Fatalf("OpenURL: %v", err)
	}
	if want := "s3://" + testBucket + "/" + testPrefix + "/" + host; s.Dir() != want {
		t.Errorf("Dir = %s, want %s", s.Dir(), want)
	}
	img := testImage(1600, 90)
	if _, err := s.Save(img, "via-url"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	key := filepath.Join(srv.Dir, testBucket, testPrefix, host, processDirNames(img.Process)[1], "via-url", manifestFile)
	if _, err := os.Stat(key); err != nil {
		t.Errorf("manifest not at PREFIX/HOST/PROCESS/NAME/manifest: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "local")
	local, err := OpenURL(dir, nil)
	if err != nil {
		t.Fatalf("OpenURL of a path: %v", err)
	}
	if local.Dir() != dir {
		t.Errorf("OpenURL of a path opened %s, want the local store %s", local.Dir(), dir)
	}

	if _, err := OpenURL("s3://missing-bucket/x", nil); !errors.Is(err, unix.ENOENT) {
		t.Errorf("OpenURL of a missing bucket = %v, want ENOENT", err)
	}
	if _, err := OpenURL("gs://bucket/x", nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("OpenURL of an unknown scheme = %v, want EINVAL", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err = OpenURL("s3://"+testBucket, nil)
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("OpenURL without a secret key = %v, want EINVAL", err)
	}
}

func TestOpenURLWrongSecret(t *testing.T) {
	srv := startS3(t)
	t.Setenv("CKPTFS_S3_ENDPOINT", srv.endpoint())
	t.Setenv("AWS_ACCESS_KEY_ID", testS3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	t.Setenv("AWS_REGION", "us-east-1")

	_, err := OpenURL("s3://"+testBucket+"/x", nil)
	if err == nil {
		t.Fatalf("OpenURL with a wrong secret succeeded")
	}
	if strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("error shows the secret key: %v", err)
	}
}
