package fs

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// startOnPID starts a safe_target that gets pid, by setting the kernel's
// last allocated pid to pid-1 right before the fork. Another process of
// the machine, or a thread of this one, may take the pid first, so it
// tries a few times. Targets that got another pid keep running until the
// test ends: killing them now would make their cleanup signal a pid that
// may be reused by then.
func startOnPID(t *testing.T, pid int) *safeTarget {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0o644); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		tg := startSafeTarget(t, 0)
		if tg.PID == pid {
			return tg
		}
		t.Logf("attempt %d: new target got pid %d, not %d", attempt, tg.PID, pid)
	}
	t.Fatalf("no target got the recycled pid %d in 20 attempts", pid)
	return nil
}

func TestRecycledPIDSeesNoSnapshots(t *testing.T) {
	m := newMount(t)

	// The old process lives in a subtest, whose cleanup kills and reaps
	// it before its pid is handed out again.
	var oldID snapshot.ProcessID
	t.Run("old process", func(t *testing.T) {
		old := startSafeTarget(t, 0)
		oldID = identify(t, old.PID)
		m.mustWrite("1\n", old.PID, "capture")
		m.mustWrite("before-exit\n", old.PID, "capture")
	})
	if t.Failed() {
		t.FailNow()
	}
	pid := oldID.PID
	oldSnap, err := m.store.Load(oldID, "snap-1")
	if err != nil {
		t.Fatal(err)
	}
	defer oldSnap.Close()

	recycled := startOnPID(t, pid)
	if identify(t, pid) == oldID {
		t.Fatal("the new process has the identity of the old one")
	}

	names := listDir(t, m.path(pid))
	for _, name := range []string{"snap-1", "before-exit", "latest"} {
		if slices.Contains(names, name) {
			t.Errorf("/ckpt/%d of the new process lists %s of the old one: %v", pid, name, names)
		}
	}
	if _, err := os.Stat(m.path(pid, "snap-1", "info")); !errors.Is(err, unix.ENOENT) {
		t.Errorf("stat of the old process's snapshot through the new one: %v, want ENOENT", err)
	}
	if _, err := os.Readlink(m.path(pid, "latest")); !errors.Is(err, unix.ENOENT) {
		t.Errorf("latest of the new process: %v, want ENOENT", err)
	}

	wantErrno(t, "restore of the old process's snapshot onto the new one", m.write("snap-1\n", pid, "restore"), unix.ENOENT)
	if _, err := engine.Restore(pid, oldSnap.Image, oldSnap, nil, nil); !errors.Is(err, unix.ESRCH) {
		t.Errorf("engine restore of the old image onto the new process: %v, want ESRCH", err)
	}
	if err := engine.CheckUnchanged(pid, oldSnap.Image); !errors.Is(err, unix.ESRCH) {
		t.Errorf("CheckUnchanged of the old image on the new process: %v, want ESRCH", err)
	}
	if !recycled.Alive() || recycled.counter(t) != 0 {
		t.Error("the new process changed")
	}

	infos, err := m.store.List(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 {
		t.Fatalf("store lists %d snapshots for pid %d, want the old process's 2: %v", len(infos), pid, infos)
	}
	for _, info := range infos {
		if info.Process != oldID {
			t.Errorf("snapshot %s belongs to %v, want the old process %v", info.Name, info.Process, oldID)
		}
	}

	// The new process counts its own snapshots from snap-1.
	m.mustWrite("1\n", pid, "capture")
	if got := listDir(t, m.path(pid)); !slices.Contains(got, "snap-1") || slices.Contains(got, "before-exit") {
		t.Errorf("/ckpt/%d after capturing the new process: %v", pid, got)
	}
	if infos, err := m.store.List(pid); err != nil || len(infos) != 3 {
		t.Errorf("store lists %v (%v), want 3 snapshots of two processes", infos, err)
	}
}
