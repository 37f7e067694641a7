package fs

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountTwiceIsBusy(t *testing.T) {
	m := newMount(t)

	srv, err := Mount(m.dir, Config{Store: m.store})
	if err == nil {
		_ = srv.Unmount()
		t.Fatalf("second mount on %s succeeded, want EBUSY", m.dir)
	}
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("second mount on %s: %v, want EBUSY", m.dir, err)
	}
}
