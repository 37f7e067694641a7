package fs

import (
	"github.com/ckptfs/ckptfs/internal/errnos"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// smallStore returns a store directory on a tmpfs of sizeMiB that the test
// mounts and unmounts.
func smallStore(t *testing.T, sizeMiB int) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(sizeMiB)+"m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "store")
}

func TestStoreFullGivesENOSPC(t *testing.T) {
	m := mountStore(t, smallStore(t, 6))
	tg := testproc.StartMem(t, 64, true)

	err := m.writeOrAbort("1\n", tg.PID, "capture")
	wantErrno(t, "capture into a full store", err, unix.ENOSPC)
	wantRefusal(t, m, tg.PID, unix.ENOSPC, "no space left on device")

	tg.CheckCounting(t, "target after the failed capture")
	if state, tracer := waitRunning(tg.PID, 0); state == "T" || state == "t" || tracer != 0 {
		t.Errorf("target after the failed capture: state %s tracer %d", state, tracer)
	}
	if infos, err := m.store.List(0); err != nil || len(infos) != 0 {
		t.Errorf("store lists %v (%v) after ENOSPC, want nothing", infos, err)
	}
	if tmp := tmpEntries(t, m.storeDir); len(tmp) != 0 {
		t.Errorf("ENOSPC left work directories %v", tmp)
	}
	for _, name := range listDir(t, m.path(tg.PID)) {
		if !slices.Contains([]string{"capture", "restore", "status", "autosave"}, name) {
			t.Errorf("/ckpt/%d lists %s after ENOSPC, want only the control files", tg.PID, name)
		}
	}

	// The space of the partial snapshot is free again: a small process fits.
	small := startSafeTarget(t, 0)
	m.mustWrite("1\n", small.PID, "capture")
	if _, err := os.Stat(m.path(small.PID, "snap-1", "info")); err != nil {
		t.Errorf("capture after ENOSPC: %v", err)
	}
}

func TestTargetExitsDuringCapture(t *testing.T) {
	m := newMount(t)
	tg := testproc.StartMem(t, 512, false)
	id := identify(t, tg.PID)

	done := make(chan error, 1)
	go func() { done <- m.write("1\n", tg.PID, "capture") }()
	waitUntil(t, "the capture freezes the target", func() bool { return tracerOf(tg.PID) > 0 })
	tg.Kill()

	err := m.awaitOrAbort("capture of an exiting process", done)
	wantErrno(t, "capture of a process killed while frozen", err, unix.ESRCH)
	// The status file went with the process directory; its record stays.
	if rec, _ := m.srv.state.proc(id).snapshotState(); rec == nil || errnos.Of(rec.Err) != unix.ESRCH {
		t.Errorf("record of the capture: %+v, want a failure with ESRCH", rec)
	}
	if infos, err := m.store.List(tg.PID); err != nil || len(infos) != 0 {
		t.Errorf("store lists %v (%v) for the killed process, want nothing", infos, err)
	}
	if tmp := tmpEntries(t, m.storeDir); len(tmp) != 0 {
		t.Errorf("the failed capture left work directories %v", tmp)
	}
	if log := m.log.String(); !strings.Contains(log, "errno=ESRCH") || !strings.Contains(log, "exited during capture") {
		t.Errorf("log does not report the exit during the capture")
	}
}
