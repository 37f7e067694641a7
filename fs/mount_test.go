package fs

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

var marker = map[string]string{
	"heap":   "CKPTFS-FS-HEAP-MARKER-4a8f",
	"global": "CKPTFS-FS-GLOBAL-MARKER-71d2",
}

func TestCaptureAndBrowse(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 2)
	liveMaps, err := os.ReadFile("/proc/" + strconv.Itoa(tg.PID) + "/maps")
	if err != nil {
		t.Fatal(err)
	}

	before := time.Now()
	m.mustWrite("1\n", tg.PID, "capture")
	after := time.Now()

	if got := m.read(tg.PID, "capture"); got != "snap-1\n" {
		t.Errorf("capture reads %q, want snap-1", got)
	}
	if link, err := os.Readlink(m.path(tg.PID, "latest")); err != nil || link != "snap-1" {
		t.Errorf("latest -> %q (%v), want snap-1", link, err)
	}
	entries, err := os.ReadDir(m.path(tg.PID, "snap-1"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if got := strings.Join(names, " "); got != "fds fpregs info maps memory regs threads" {
		t.Errorf("snapshot lists %q", got)
	}

	snapMaps := m.read(tg.PID, "snap-1", "maps")
	if snapMaps != string(liveMaps) {
		t.Errorf("maps differ from /proc/%d/maps\n got:\n%s\nwant:\n%s", tg.PID, snapMaps, liveMaps)
	}
	maps := parseMaps(t, snapMaps)

	t.Run("memory", func(t *testing.T) { checkMarkers(t, m, tg, maps) })
	t.Run("regs", func(t *testing.T) { checkRegs(t, m.read(tg.PID, "snap-1", "regs"), maps) })
	t.Run("threads", func(t *testing.T) { checkThreads(t, m, tg, maps) })
	t.Run("info", func(t *testing.T) { checkInfo(t, m, tg, len(maps), before, after) })

	t.Run("fpregs", func(t *testing.T) {
		fp := keyValuesSpace(m.read(tg.PID, "snap-1", "fpregs"))
		// The x87 control word and mxcsr of a C program are the ABI's
		// initial values.
		if fp["fcw"] != "0x037f" {
			t.Errorf("fcw %s, want 0x037f", fp["fcw"])
		}
		if fp["mxcsr"] != "0x00001f80" {
			t.Errorf("mxcsr %s, want 0x00001f80", fp["mxcsr"])
		}
		want := []string{"st0", "xmm15", "ymm15"}
		if cpuHas(t, "avx512f") {
			want = append(want, "zmm0", "zmm31", "k7")
		}
		for _, name := range want {
			if _, ok := fp[name]; !ok {
				t.Errorf("%s missing", name)
			}
		}
	})

	t.Run("fds", func(t *testing.T) {
		fds := m.read(tg.PID, "snap-1", "fds")
		if !strings.HasPrefix(fds, "0 pipe pipe:[") {
			t.Errorf("fds does not start with stdin as a pipe:\n%s", fds)
		}
	})

	t.Run("status", func(t *testing.T) {
		status := keyValues(m.read(tg.PID, "status"))
		if status["operation"] != "capture" || status["snapshot"] != "snap-1" || status["result"] != "ok" {
			t.Errorf("status %v", status)
		}
	})
}

// checkMarkers reads the heap and global markers back from the memory
// files: whole file, ReadAt, seek and read, and mmap.
func checkMarkers(t *testing.T, m *testMount, tg *target, maps []mapping) {
	for what, addr := range map[string]uint64{"heap": tg.heap, "global": tg.global} {
		want := []byte(marker[what])
		mp := containing(t, maps, addr)
		file := m.path(tg.PID, "snap-1", "memory", mp.bounds)
		off := int64(addr - mp.start)

		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(mp.end-mp.start) {
			t.Errorf("%s: size %d, want mapping length %d", file, fi.Size(), mp.end-mp.start)
		}
		if fi.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v, want 0400", file, fi.Mode())
		}

		whole, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(whole[off:off+int64(len(want))], want) {
			t.Errorf("%s marker via ReadFile: %q", what, whole[off:off+int64(len(want))])
		}

		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s marker via ReadAt: %q, %v", what, got, err)
		}

		// dd skip=N bs=1 seeks, then reads.
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		clear(got)
		if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s marker via seek and read: %q, %v", what, got, err)
		}

		mem, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			t.Fatalf("mmap %s: %v", file, err)
		}
		if !bytes.Equal(mem[off:off+int64(len(want))], want) {
			t.Errorf("%s marker via mmap: %q", what, mem[off:off+int64(len(want))])
		}
		if err := syscall.Munmap(mem); err != nil {
			t.Fatal(err)
		}
	}

	dd := exec.Command("dd", "if="+m.path(tg.PID, "snap-1", "memory", containing(t, maps, tg.heap).bounds),
		"bs=1", "skip="+strconv.FormatUint(tg.heap-containing(t, maps, tg.heap).start, 10),
		"count="+strconv.Itoa(len(marker["heap"])), "status=none")
	out, err := dd.Output()
	if err != nil || string(out) != marker["heap"] {
		t.Errorf("dd skip= read %q, %v", out, err)
	}
}

// checkRegs checks that rip is in an executable mapping and rsp in the
// stack.
func checkRegs(t *testing.T, regsText string, maps []mapping) {
	t.Helper()
	regs := keyValuesSpace(regsText)
	rip := parseHex(t, regs["rip"])
	rsp := parseHex(t, regs["rsp"])

	if mp := containing(t, maps, rip); !strings.Contains(mp.perms, "x") {
		t.Errorf("rip %#x in non-executable mapping %s %s", rip, mp.bounds, mp.perms)
	}
	if mp := containing(t, maps, rsp); mp.path != "[stack]" {
		t.Errorf("rsp %#x in %s %q, want [stack]", rsp, mp.bounds, mp.path)
	}
	if len(regs) != 27 {
		t.Errorf("%d registers, want 27", len(regs))
	}
}

func checkThreads(t *testing.T, m *testMount, tg *target, maps []mapping) {
	entries, err := os.ReadDir(m.path(tg.PID, "snap-1", "threads"))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatalf("thread entry %q", e.Name())
		}
		got = append(got, tid)
	}
	want := slices.Clone(tg.tids)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("threads %v, want %v", got, want)
	}

	for _, tid := range got {
		regs := keyValuesSpace(m.read(tg.PID, "snap-1", "threads", tid, "regs"))
		rip := parseHex(t, regs["rip"])
		if mp := containing(t, maps, rip); !strings.Contains(mp.perms, "x") {
			t.Errorf("tid %d: rip %#x in non-executable mapping %s", tid, rip, mp.bounds)
		}
		if fp := m.read(tg.PID, "snap-1", "threads", tid, "fpregs"); !strings.Contains(fp, "\nmxcsr 0x") {
			t.Errorf("tid %d: fpregs has no mxcsr", tid)
		}
	}
	if main := m.read(tg.PID, "snap-1", "threads", tg.PID, "regs"); main != m.read(tg.PID, "snap-1", "regs") {
		t.Error("threads/<pid>/regs differs from regs")
	}
}

func checkInfo(t *testing.T, m *testMount, tg *target, regions int, before, after time.Time) {
	info := keyValues(m.read(tg.PID, "snap-1", "info"))
	want := map[string]string{
		"pid":     strconv.Itoa(tg.PID),
		"comm":    "fs_target",
		"exe":     tg.bin,
		"threads": strconv.Itoa(len(tg.tids)),
		"regions": strconv.Itoa(regions),
	}
	for key, value := range want {
		if info[key] != value {
			t.Errorf("info %s: %q, want %q", key, info[key], value)
		}
	}

	captured, err := time.Parse(time.RFC3339, info["captured"])
	if err != nil {
		t.Errorf("captured %q: %v", info["captured"], err)
	} else if captured.Before(before.Truncate(time.Second)) || captured.After(after) {
		t.Errorf("captured %v, not between %v and %v", captured, before, after)
	}
	if frozen, err := time.ParseDuration(info["frozen"]); err != nil || frozen <= 0 {
		t.Errorf("frozen %q: %v", info["frozen"], err)
	}
	for _, key := range []string{"bytes", "stored"} {
		if n, err := strconv.ParseUint(info[key], 10, 64); err != nil || n == 0 {
			t.Errorf("info %s: %q", key, info[key])
		}
	}
}

// cpuHas reports whether /proc/cpuinfo lists flag.
func cpuHas(t *testing.T, flag string) bool {
	t.Helper()
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if rest, ok := strings.CutPrefix(line, "flags"); ok {
			return slices.Contains(strings.Fields(rest), flag)
		}
	}
	return false
}

// keyValuesSpace parses "name value" lines.
func keyValuesSpace(text string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if key, value, ok := strings.Cut(line, " "); ok {
			m[key] = value
		}
	}
	return m
}

func TestCaptureNamesAndErrors(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)

	m.mustWrite("before-upgrade\n", tg.PID, "capture")
	if _, err := os.Stat(m.path(tg.PID, "before-upgrade", "info")); err != nil {
		t.Errorf("named snapshot: %v", err)
	}
	if link, _ := os.Readlink(m.path(tg.PID, "latest")); link != "before-upgrade" {
		t.Errorf("latest -> %q, want before-upgrade", link)
	}

	wantErrno(t, "capture of a taken name", m.write("before-upgrade\n", tg.PID, "capture"), unix.EEXIST)
	status := m.read(tg.PID, "status")
	if !strings.Contains(status, "result: failed: EEXIST: ") || !strings.Contains(status, "before-upgrade") {
		t.Errorf("status after EEXIST:\n%s", status)
	}

	wantErrno(t, "capture of garbage", m.write("not a name!\n", tg.PID, "capture"), unix.EINVAL)
	if status := m.read(tg.PID, "status"); !strings.Contains(status, "result: failed: EINVAL: ") {
		t.Errorf("status after garbage:\n%s", status)
	}
	wantErrno(t, "capture named auto-x", m.write("auto-x\n", tg.PID, "capture"), unix.EINVAL)
	if status := m.read(tg.PID, "status"); !strings.Contains(status, "reserved") {
		t.Errorf("status after auto-x does not say the prefix is reserved:\n%s", status)
	}

	wantErrno(t, "restore of an unknown name", m.write("nope\n", tg.PID, "restore"), unix.ENOENT)
	wantErrno(t, "empty restore", m.write("\n", tg.PID, "restore"), unix.EINVAL)
	wantErrno(t, "restore of an unknown part", m.write("before-upgrade everything\n", tg.PID, "restore"), unix.EINVAL)
	wantErrno(t, "write to status", m.write("1\n", tg.PID, "status"), unix.EACCES)

	// The first automatic name is snap-1 even after a named capture.
	m.mustWrite("\n", tg.PID, "capture")
	if got := m.read(tg.PID, "capture"); got != "snap-1\n" {
		t.Errorf("capture reads %q after an automatic capture, want snap-1", got)
	}
	if _, err := os.Stat(m.path(tg.PID, "no-such-snapshot")); !os.IsNotExist(err) {
		t.Errorf("stat of a missing snapshot: %v", err)
	}
	if !tg.Alive() || tg.counter(t) != 0 {
		t.Error("target did not keep running after the captures")
	}
}

func TestBusyProcess(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)

	// Own the process as a running capture does, first frozen, then saving.
	ps := m.srv.state.proc(identify(t, tg.PID))
	if err := ps.acquire(tg.PID, "capture", 1, false); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "capture while busy", m.write("1\n", tg.PID, "capture"), unix.EBUSY)
	wantErrno(t, "restore while busy", m.write("snap-1\n", tg.PID, "restore"), unix.EBUSY)
	ps.startSaving()
	wantErrno(t, "capture while saving", m.write("1\n", tg.PID, "capture"), unix.EBUSY)
	ps.release()

	m.mustWrite("1\n", tg.PID, "capture")
}

func TestProcessDirGoneAfterExit(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	pid := strconv.Itoa(tg.PID)

	m.mustWrite("1\n", tg.PID, "capture")
	if !slices.Contains(listDir(t, m.dir), pid) {
		t.Fatalf("%s not listed while the process runs", pid)
	}

	tg.Kill()
	if _, err := os.Stat(m.path(pid)); !os.IsNotExist(err) {
		t.Errorf("stat of exited pid: %v, want ENOENT", err)
	}
	if _, err := os.Stat(m.path(pid, "snap-1", "info")); !os.IsNotExist(err) {
		t.Errorf("stat of exited pid's snapshot: %v, want ENOENT", err)
	}
	if slices.Contains(listDir(t, m.dir), pid) {
		t.Errorf("%s still listed after exit", pid)
	}

	infos, err := m.store.List(tg.PID)
	if err != nil || len(infos) != 1 {
		t.Errorf("store lists %v (%v), want the snapshot of the exited process", infos, err)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestRemoveSnapshot(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	m.mustWrite("one\n", tg.PID, "capture")
	m.mustWrite("two\n", tg.PID, "capture")

	// Look inside first, so the kernel holds the subtree.
	m.read(tg.PID, "one", "info")
	if err := os.Remove(m.path(tg.PID, "one")); err != nil {
		t.Fatalf("rmdir: %v", err)
	}
	if _, err := os.Stat(m.path(tg.PID, "one")); !os.IsNotExist(err) {
		t.Errorf("stat after rmdir: %v", err)
	}

	listDir(t, m.path(tg.PID, "two", "memory"))
	if out, err := exec.Command("rm", "-r", m.path(tg.PID, "two")).CombinedOutput(); err != nil {
		t.Fatalf("rm -r: %v\n%s", err, out)
	}
	if _, err := os.Stat(m.path(tg.PID, "two")); !os.IsNotExist(err) {
		t.Errorf("stat after rm -r: %v", err)
	}

	infos, err := m.store.Snapshots(identify(t, tg.PID))
	if err != nil || len(infos) != 0 {
		t.Errorf("store still has %v (%v)", infos, err)
	}
	if _, err := os.Readlink(m.path(tg.PID, "latest")); !os.IsNotExist(err) {
		t.Errorf("latest after removing every snapshot: %v", err)
	}
	wantErrno(t, "rmdir of a missing snapshot", os.Remove(m.path(tg.PID, "one")), unix.ENOENT)
	wantErrno(t, "rm of a control file", os.Remove(m.path(tg.PID, "capture")), unix.EPERM)
	wantErrno(t, "rmdir of a process directory", unix.Rmdir(m.path(tg.PID)), unix.EPERM)
	wantErrno(t, "rm of self", os.Remove(m.path("self")), unix.EPERM)
	if _, err := os.Stat(m.path(tg.PID, "capture")); err != nil {
		t.Errorf("capture after a refused rm: %v", err)
	}
}

func TestRemountListsSnapshots(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	m.mustWrite("1\n", tg.PID, "capture")
	m.mustWrite("kept\n", tg.PID, "capture")
	mapsBefore := m.read(tg.PID, "snap-1", "maps")
	m.unmount()

	m2 := mountStore(t, m.storeDir)
	names := listDir(t, m2.path(tg.PID))
	for _, want := range []string{"capture", "restore", "status", "latest", "snap-1", "kept"} {
		if !slices.Contains(names, want) {
			t.Errorf("after remount %v lacks %s", names, want)
		}
	}
	if got := m2.read(tg.PID, "snap-1", "maps"); got != mapsBefore {
		t.Error("maps differ after remount")
	}

	// Automatic names go on counting after a remount.
	m2.mustWrite("1\n", tg.PID, "capture")
	if got := m2.read(tg.PID, "capture"); got != "snap-2\n" {
		t.Errorf("capture after remount reads %q, want snap-2", got)
	}
}

func TestDaemonRefused(t *testing.T) {
	m := newMount(t)
	err := m.write("1\n", os.Getpid(), "capture")
	wantErrno(t, "capture of the daemon", err, unix.EPERM)
	if status := m.read(os.Getpid(), "status"); !strings.Contains(status, "result: failed: EPERM: ") {
		t.Errorf("status:\n%s", status)
	}
}

func TestSelfCaptureFromBash(t *testing.T) {
	m := newMount(t)
	cmd := exec.Command("bash", "-c", `echo 1 > "$1/self/capture"; echo "done $?"; read x`, "bash", m.dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	sh := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	// testproc's line timeout fails the test if the write deadlocks.
	if got := sh.Expect("done"); got != "0" {
		t.Fatalf("echo > self/capture exited %s", got)
	}
	status := keyValues(m.waitStatus(sh.PID))
	if status["result"] != "ok" || status["snapshot"] != "snap-1" {
		t.Fatalf("status %v", status)
	}

	// The snapshot's point is the return of bash's write(2) of "1\n".
	regs := keyValuesSpace(m.read(sh.PID, "snap-1", "regs"))
	if regs["orig_rax"] != "0x1" || regs["rax"] != "0x2" {
		t.Errorf("orig_rax %s rax %s, want write returning 2", regs["orig_rax"], regs["rax"])
	}
	if link, _ := os.Readlink(m.path(sh.PID, "latest")); link != "snap-1" {
		t.Errorf("latest -> %q", link)
	}
}

func TestRestoreRollsBackCounter(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 1)

	tg.send(t, "iii")
	for range 3 {
		tg.Expect("counter ")
	}
	m.mustWrite("1\n", tg.PID, "capture")
	tg.send(t, "iiii")
	for range 4 {
		tg.Expect("counter ")
	}
	if got := tg.counter(t); got != 7 {
		t.Fatalf("counter %d before restore, want 7", got)
	}

	m.mustWrite("snap-1\n", tg.PID, "restore")
	if got := tg.counter(t); got != 3 {
		t.Errorf("counter %d after restore, want 3", got)
	}
	if got := m.read(tg.PID, "restore"); got != "snap-1\n" {
		t.Errorf("restore reads %q, want snap-1", got)
	}
	status := keyValues(m.read(tg.PID, "status"))
	if status["operation"] != "restore" || status["result"] != "ok" {
		t.Errorf("status %v", status)
	}

	// The process goes on from the restored state.
	tg.send(t, "i")
	if got := tg.Expect("counter "); got != "4" {
		t.Errorf("counter %s after one more increment, want 4", got)
	}
}

func TestSelfRestore(t *testing.T) {
	m := newMount(t)
	bin := testproc.Build(t, "fs_self")
	cmd := exec.Command(bin, m.dir, t.TempDir()+"/passes")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	self := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	// The restore takes the process back to the return of its capture
	// write, so the lines after it run twice and the line after the
	// restore write never runs.
	if got := self.Line(); got != "pass 1" {
		t.Fatalf("first line %q, want pass 1", got)
	}
	if got := self.Line(); got != "pass 2" {
		t.Fatalf("second line %q, want pass 2 after the restore", got)
	}
	status := keyValues(m.waitStatus(self.PID))
	if status["operation"] != "restore" || status["result"] != "ok" {
		t.Errorf("status %v", status)
	}
	if got := m.read(self.PID, "restore"); got != "snap-1\n" {
		t.Errorf("restore reads %q", got)
	}
}

func TestUnmountWhileBusyDetaches(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	f, err := os.Open(m.path(tg.PID, "status"))
	if err != nil {
		t.Fatal(err)
	}
	srv := m.srv

	// The open file keeps the mount busy, so Unmount falls back to a lazy
	// detach: the mount leaves the namespace at once.
	m.unmount()
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+m.dir+" ") {
		t.Errorf("%s still mounted after Unmount", m.dir)
	}

	// The server stops once the last file is closed.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(pollLimit):
		t.Fatalf("server still serving %v after the last file closed", pollLimit)
	}
}
