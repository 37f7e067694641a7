package fs

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// ownerMode returns the owner and permission bits of path, not following
// a final symbolic link.
func ownerMode(t *testing.T, path string) (uint32, os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid, fi.Mode().Perm()
}

// checkSnapshotTree fails unless every file below dir is owned by uid with
// mode 0400 and every directory with mode 0500, and returns a memory file.
func checkSnapshotTree(t *testing.T, dir string, uid uint32) string {
	t.Helper()
	var memFile string
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		owner, mode := ownerMode(t, path)
		want := os.FileMode(0o400)
		if d.IsDir() {
			want = 0o500
		} else {
			files++
		}
		if owner != uid || mode != want {
			t.Errorf("%s: owner %d mode %v, want %d %v", path, owner, mode, uid, want)
		}
		if filepath.Base(filepath.Dir(path)) == "memory" && memFile == "" {
			memFile = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 7 || memFile == "" {
		t.Fatalf("%s holds %d files and memory file %q, want info, regs, fpregs, maps, fds, threads and memory", dir, files, memFile)
	}
	return memFile
}

func TestAccessMatrix(t *testing.T) {
	m := newMount(t)
	asNobody := newProber(t, nobody)
	rootTarget := startSafeTarget(t, 0)
	nobodyTarget := startSafeTarget(t, nobody)
	hidden := startSafeTarget(t, nobody)

	m.mustWrite("1\n", rootTarget.PID, "capture")
	m.mustWrite("1\n", nobodyTarget.PID, "capture")
	m.mustWrite("1\n", hidden.PID, "capture")
	if got := hidden.command(t, "d", "dumpable "); got != "0" {
		t.Fatalf("prctl(PR_SET_DUMPABLE, 0) left dumpable %s", got)
	}

	t.Run("listing", func(t *testing.T) {
		asRoot := listDir(t, m.dir)
		for _, tg := range []*safeTarget{rootTarget, nobodyTarget, hidden} {
			if !slices.Contains(asRoot, strconv.Itoa(tg.PID)) {
				t.Errorf("root's listing lacks pid %d", tg.PID)
			}
		}
		listed, res := asNobody.list(m.dir)
		if res != "ok" {
			t.Fatalf("nobody lists the mount: %s", res)
		}
		if !slices.Contains(listed, strconv.Itoa(nobodyTarget.PID)) || !slices.Contains(listed, "self") {
			t.Errorf("nobody's listing lacks its own pid %d or self: %v", nobodyTarget.PID, listed)
		}
		if slices.Contains(listed, strconv.Itoa(rootTarget.PID)) {
			t.Errorf("nobody's listing shows root's pid %d", rootTarget.PID)
		}
		if slices.Contains(listed, strconv.Itoa(hidden.PID)) {
			t.Errorf("nobody's listing shows its non-dumpable pid %d", hidden.PID)
		}
	})

	t.Run("process directories", func(t *testing.T) {
		for _, c := range []struct {
			tg  *safeTarget
			uid uint32
		}{{rootTarget, 0}, {nobodyTarget, nobody}, {hidden, nobody}} {
			uid, mode := ownerMode(t, m.path(c.tg.PID))
			if uid != c.uid || mode != 0o700 {
				t.Errorf("/ckpt/%d: owner %d mode %v, want %d 0700", c.tg.PID, uid, mode, c.uid)
			}
			wantResult(t, "nobody's stat of a process directory", asNobody.result("stat", m.path(c.tg.PID)),
				"ok uid="+strconv.Itoa(int(c.uid))+" mode=700")
		}
	})

	t.Run("snapshot files", func(t *testing.T) {
		rootMem := checkSnapshotTree(t, m.path(rootTarget.PID, "snap-1"), 0)
		nobodyMem := checkSnapshotTree(t, m.path(nobodyTarget.PID, "snap-1"), nobody)

		wantResult(t, "nobody reads root's info", asNobody.result("read", m.path(rootTarget.PID, "snap-1", "info")), "err EACCES")
		wantResult(t, "nobody reads root's memory", asNobody.result("read", rootMem), "err EACCES")
		wantResult(t, "nobody lists root's snapshot", asNobody.result("list", m.path(rootTarget.PID, "snap-1")), "err EACCES")
		wantResult(t, "nobody reads its own info", asNobody.result("read", m.path(nobodyTarget.PID, "snap-1", "info")), "ok")
		wantResult(t, "nobody reads its own memory", asNobody.result("read", nobodyMem), "ok")
		wantResult(t, "nobody reads the snapshot of its non-dumpable process",
			asNobody.result("read", m.path(hidden.PID, "snap-1", "info")), "err EPERM")
	})

	t.Run("operations", func(t *testing.T) {
		wantResult(t, "nobody captures root's process", asNobody.result("write", m.path(rootTarget.PID, "capture"), "1\n"), "err EACCES")
		wantResult(t, "nobody restores root's process", asNobody.result("write", m.path(rootTarget.PID, "restore"), "snap-1\n"), "err EACCES")
		wantResult(t, "nobody reads root's status", asNobody.result("read", m.path(rootTarget.PID, "status")), "err EACCES")

		wantResult(t, "nobody captures its non-dumpable process", asNobody.result("write", m.path(hidden.PID, "capture"), "1\n"), "err EPERM")
		wantResult(t, "nobody restores its non-dumpable process", asNobody.result("write", m.path(hidden.PID, "restore"), "snap-1\n"), "err EPERM")
		refusal := "pid " + strconv.Itoa(hidden.PID) + " is not dumpable"
		if log := m.log.String(); !strings.Contains(log, refusal) || !strings.Contains(log, "errno=EPERM") {
			t.Errorf("log does not give the reason of nobody's refused writes (%q)", refusal)
		}
		if status := m.read(hidden.PID, "status"); strings.Contains(status, "uid 65534") {
			t.Errorf("a refused caller changed the status:\n%s", status)
		}
		m.mustWrite("root-may\n", hidden.PID, "capture")

		wantResult(t, "nobody captures its own process", asNobody.result("write", m.path(nobodyTarget.PID, "capture"), "1\n"), "ok")
		nobodyTarget.command(t, "i", "counter ")
		wantResult(t, "nobody restores its own process", asNobody.result("write", m.path(nobodyTarget.PID, "restore"), "snap-1\n"), "ok")
		if got := nobodyTarget.counter(t); got != 0 {
			t.Errorf("counter %d after nobody's restore, want 0", got)
		}
		if !rootTarget.Alive() || rootTarget.counter(t) != 0 {
			t.Error("root's process changed after nobody's refused operations")
		}
	})

	t.Run("store", func(t *testing.T) {
		uid, mode := ownerMode(t, m.storeDir)
		if uid != 0 || mode != 0o700 {
			t.Errorf("store %s: owner %d mode %v, want 0 0700", m.storeDir, uid, mode)
		}
		wantResult(t, "nobody lists the store", asNobody.result("list", m.storeDir), "err EACCES")

		var stored []string
		err := filepath.WalkDir(m.storeDir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && strings.Contains(path, "snap-1") {
				stored = append(stored, path)
				if _, mode := ownerMode(t, path); mode&0o077 != 0 {
					t.Errorf("store file %s has mode %v, open to other users", path, mode)
				}
			}
			return err
		})
		if err != nil || len(stored) == 0 {
			t.Fatalf("no snapshot files found in the store (%v)", err)
		}
		for _, path := range stored {
			wantResult(t, "nobody reads "+path, asNobody.result("read", path), "err EACCES")
		}
	})
}
