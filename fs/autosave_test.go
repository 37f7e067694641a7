package fs

import (
	"cmp"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// quietPeriod is how long a test watches for auto-saves that must not come:
// more than two intervals of the 1 s schedules the tests set.
const quietPeriod = 2500 * time.Millisecond

func TestAutosaveKeepsNewest(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 1)
	id := identify(t, tg.PID)

	m.mustWrite("1s keep=3\n", tg.PID, "autosave")
	waitAutoSave(t, m, id, 2)
	captureNamed(t, m, tg.PID, "kept")
	waitAutoSave(t, m, id, 6)

	m.mustWrite("off\n", tg.PID, "autosave")
	names := settledAutoSaves(t, m, id, 3)
	newest, _ := autoSaveNumber(names[len(names)-1])
	want := []string{autoName(newest - 2), autoName(newest - 1), autoName(newest)}
	if !slices.Equal(names, want) {
		t.Errorf("auto-saves after pruning = %v, want the 3 newest %v", names, want)
	}
	if !slices.Contains(snapshotNames(t, m, id), "kept") {
		t.Errorf("named snapshot removed by pruning; snapshots: %v", snapshotNames(t, m, id))
	}
	for n := uint64(1); n < newest-2; n++ {
		if !strings.Contains(m.log.String(), "msg=\"pruned auto-save\" pid="+strconv.Itoa(tg.PID)+" snapshot="+autoName(n)) {
			t.Errorf("no Info record of pruning %s", autoName(n))
		}
	}
	if !strings.Contains(m.log.String(), "snapshot="+autoName(newest)+" frozen=") {
		t.Errorf("no Info record with frozen, bytes and stored for %s", autoName(newest))
	}

	time.Sleep(quietPeriod)
	if after := autoSaveNames(t, m, id); !slices.Equal(after, names) {
		t.Errorf("auto-saves changed after off: %v, then %v", names, after)
	}
	if got := m.read(tg.PID, "autosave"); got != "interval: off\n" {
		t.Errorf("autosave after off reads %q", got)
	}
}

func TestAutosaveRejectsBadRequests(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)

	cases := []struct {
		request string
		reason  string
	}{
		{"0.5s", "shorter than the minimum of 1s"},
		{"abc", "not a Go duration"},
		{"1s keep=0", "at least 1"},
		{"1s keep=x", "not a decimal number"},
		{"1s keep=3 extra", "too many fields"},
		{"off please", "off takes no arguments"},
	}
	for _, tc := range cases {
		err := m.write(tc.request+"\n", tg.PID, "autosave")
		wantErrno(t, "write "+tc.request, err, unix.EINVAL)

		status := keyValues(m.read(tg.PID, "status"))
		if status["operation"] != "autosave" {
			t.Errorf("%q: status operation %q, want autosave", tc.request, status["operation"])
		}
		if !strings.HasPrefix(status["result"], "failed: EINVAL: ") || !strings.Contains(status["result"], tc.reason) {
			t.Errorf("%q: status result %q, want EINVAL saying %q", tc.request, status["result"], tc.reason)
		}
		if !strings.HasPrefix(status["hint"], "autosave takes") {
			t.Errorf("%q: status hint %q, want the autosave syntax", tc.request, status["hint"])
		}
	}
	if got := m.read(tg.PID, "autosave"); got != "interval: off\n" {
		t.Errorf("autosave after rejected requests reads %q", got)
	}
}

func TestAutosaveFileShowsSetting(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	id := identify(t, tg.PID)

	fi, err := os.Stat(m.path(tg.PID, "autosave"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("autosave mode %v, want -rw-------", fi.Mode())
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != uint32(os.Geteuid()) {
		t.Errorf("autosave owned by uid %d, want the target's %d", uid, os.Geteuid())
	}
	entries, err := os.ReadDir(m.path(tg.PID))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() == "autosave" }) {
		t.Errorf("process directory does not list autosave")
	}

	before := time.Now()
	m.mustWrite("30s keep=7\n", tg.PID, "autosave")
	after := time.Now()

	shown := keyValues(m.read(tg.PID, "autosave"))
	if shown["interval"] != "30s" || shown["keep"] != "7" {
		t.Errorf("autosave shows interval %q keep %q, want 30s and 7", shown["interval"], shown["keep"])
	}
	next, err := time.Parse(time.RFC3339Nano, shown["next"])
	if err != nil {
		t.Errorf("next %q is not an RFC 3339 time: %v", shown["next"], err)
	}
	if next.Before(before.Add(30*time.Second).Truncate(time.Second)) || next.After(after.Add(30*time.Second)) {
		t.Errorf("next due %v, want 30s after the write (%v)", next, before)
	}
	if status := keyValues(m.read(tg.PID, "status")); status["operation"] != "autosave" || status["result"] != "ok" {
		t.Errorf("status after the write: operation %q result %q", status["operation"], status["result"])
	}
	if _, err := m.store.GetSetting(id, autosaveKey); err != nil {
		t.Errorf("setting not in the store: %v", err)
	}

	m.mustWrite("off", tg.PID, "autosave")
	if got := m.read(tg.PID, "autosave"); got != "interval: off\n" {
		t.Errorf("autosave after off reads %q", got)
	}
	if _, err := m.store.GetSetting(id, autosaveKey); !errors.Is(err, unix.ENOENT) {
		t.Errorf("setting after off: %v, want ENOENT", err)
	}
}

func TestAutosaveResumesAfterRemount(t *testing.T) {
	storeDir := t.TempDir()
	first := mountStore(t, storeDir)
	tg := startTarget(t, 0)
	id := identify(t, tg.PID)

	first.mustWrite("1s keep=5", tg.PID, "autosave")
	waitAutoSave(t, first, id, 1)
	first.unmount()
	names := autoSaveNames(t, first, id)
	newest, _ := autoSaveNumber(names[len(names)-1])

	second := mountStore(t, storeDir)
	waitAutoSave(t, second, id, newest+1)
	if !strings.Contains(second.log.String(), `msg="autosave resumed" pid=`+strconv.Itoa(tg.PID)) {
		t.Errorf("no Info record of the resumed schedule:\n%s", second.log)
	}
	if shown := keyValues(second.read(tg.PID, "autosave")); shown["interval"] != "1s" || shown["keep"] != "5" {
		t.Errorf("autosave after remount shows interval %q keep %q", shown["interval"], shown["keep"])
	}
}

func TestAutosaveIgnoresRecycledPID(t *testing.T) {
	storeDir := t.TempDir()
	first := mountStore(t, storeDir)
	old := startTarget(t, 0)
	oldID := identify(t, old.PID)

	first.mustWrite("1s keep=2", old.PID, "autosave")
	waitAutoSave(t, first, oldID, 1)
	first.unmount()
	old.Kill()

	recycled := startWithPID(t, old.PID)
	newID := identify(t, recycled.PID)
	if newID == oldID {
		t.Fatalf("recycled pid %d has the identity of the exited process", recycled.PID)
	}

	second := mountStore(t, storeDir)
	if !strings.Contains(second.log.String(), `msg="autosave setting of an exited process deleted" pid=`+strconv.Itoa(old.PID)) {
		t.Errorf("no Info record of the ignored setting:\n%s", second.log)
	}
	if got := second.read(recycled.PID, "autosave"); got != "interval: off\n" {
		t.Errorf("autosave of the new process reads %q", got)
	}
	time.Sleep(quietPeriod)
	if names := snapshotNames(t, second, newID); len(names) != 0 {
		t.Errorf("new process with the recycled pid got snapshots %v", names)
	}
	settings, err := second.store.Settings(autosaveKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(settings) != 0 {
		t.Errorf("settings left in the store: %v", settings)
	}
}

func TestAutosaveStopsWhenProcessExits(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	id := identify(t, tg.PID)

	m.mustWrite("1s", tg.PID, "autosave")
	waitAutoSave(t, m, id, 1)
	tg.Kill()

	deadline := time.Now().Add(pollLimit)
	for m.srv.state.autosave.lookup(id) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("schedule of exited pid %d still runs after %v", tg.PID, pollLimit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	errorsAtStop := strings.Count(m.log.String(), "level=ERROR")
	time.Sleep(quietPeriod)

	logs := m.log.String()
	if n := strings.Count(logs, `msg="autosave stopped: process exited"`); n != 1 {
		t.Errorf("%d records of the stop, want 1", n)
	}
	if errorsAtStop > 1 {
		t.Errorf("%d Error records until the schedule stopped, want at most one for a capture cut short by the exit", errorsAtStop)
	}
	if n := strings.Count(logs, "level=ERROR"); n != errorsAtStop {
		t.Errorf("%d Error records after the stop, want none", n-errorsAtStop)
	}
	if _, err := m.store.GetSetting(id, autosaveKey); !errors.Is(err, unix.ENOENT) {
		t.Errorf("setting of the exited process: %v, want ENOENT", err)
	}
}

func TestAutosaveSkipsBusyProcess(t *testing.T) {
	m := newMount(t)
	tg := startTarget(t, 0)
	id := identify(t, tg.PID)

	ps := m.srv.state.proc(id)
	if err := ps.acquire(tg.PID, "restore", 1, false); err != nil {
		t.Fatal(err)
	}
	m.mustWrite("1s", tg.PID, "autosave")
	time.Sleep(quietPeriod)
	ps.release()

	if names := autoSaveNames(t, m, id); len(names) != 0 {
		t.Errorf("auto-saves taken while another operation owned the process: %v", names)
	}
	if !strings.Contains(m.log.String(), `level=WARN msg="autosave skipped" pid=`+strconv.Itoa(tg.PID)) {
		t.Errorf("no Warn record of a skipped tick:\n%s", m.log)
	}
	if last := keyValues(m.read(tg.PID, "autosave"))["last"]; !strings.Contains(last, "skipped: ") {
		t.Errorf("autosave last %q, want a skipped tick", last)
	}
	waitAutoSave(t, m, id, 1)
}

// startWithPID starts fs_target as pid: it sets ns_last_pid to pid-1 just
// before each start and tries again while another task takes the pid.
func startWithPID(t *testing.T, pid int) *target {
	t.Helper()
	for range 50 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0o644); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		tg := startTarget(t, 0)
		if tg.PID == pid {
			return tg
		}
		tg.Kill()
	}
	t.Fatalf("no target got pid %d in 50 attempts", pid)
	return nil
}

// waitAutoSave waits until process id has auto-N, or a higher number.
func waitAutoSave(t *testing.T, m *testMount, id snapshot.ProcessID, n uint64) {
	t.Helper()
	deadline := time.Now().Add(pollLimit)
	for {
		names := autoSaveNames(t, m, id)
		if len(names) > 0 {
			if newest, _ := autoSaveNumber(names[len(names)-1]); newest >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s of pid %d after %v; auto-saves %v\n%s", autoName(n), id.PID, pollLimit, names, m.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settledAutoSaves waits until the auto-saves of id are at most keep, as
// they are once a tick still running at "off" has pruned, and returns them.
func settledAutoSaves(t *testing.T, m *testMount, id snapshot.ProcessID, keep int) []string {
	t.Helper()
	deadline := time.Now().Add(pollLimit)
	for {
		names := autoSaveNames(t, m, id)
		if len(names) <= keep && !strings.Contains(m.read(id.PID, "status"), "result: running") {
			return names
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still has auto-saves %v after %v", id.PID, names, pollLimit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// captureNamed captures pid as name, trying again while an auto-save
// owns the process.
func captureNamed(t *testing.T, m *testMount, pid int, name string) {
	t.Helper()
	deadline := time.Now().Add(pollLimit)
	for {
		err := m.write(name, pid, "capture")
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			t.Fatalf("capture %s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// autoSaveNames returns the auto-N snapshots of id, lowest number first.
func autoSaveNames(t *testing.T, m *testMount, id snapshot.ProcessID) []string {
	t.Helper()
	var names []string
	for _, name := range snapshotNames(t, m, id) {
		if _, ok := autoSaveNumber(name); ok {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(x, y string) int {
		nx, _ := autoSaveNumber(x)
		ny, _ := autoSaveNumber(y)
		return cmp.Compare(nx, ny)
	})
	return names
}

func snapshotNames(t *testing.T, m *testMount, id snapshot.ProcessID) []string {
	t.Helper()
	infos, err := m.store.Snapshots(id)
	if err != nil {
		t.Fatalf("list snapshots of pid %d: %v", id.PID, err)
	}
	var names []string
	for _, info := range infos {
		names = append(names, info.Name)
	}
	return names
}

func autoName(n uint64) string {
	return autoPrefix + strconv.FormatUint(n, 10)
}

// TestAutosaveStoredBytes measures what the store keeps per auto-save of a
// process with 64 MiB of incompressible memory that rewrites 1% of its
// pages between ticks. It checks the sizes a user reads in info and logs
// them; run with -v to see the numbers.
func TestAutosaveStoredBytes(t *testing.T) {
	m := newMount(t)
	bin := testproc.Build(t, "auto_touch")
	cmd := exec.Command(bin, "64")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })
	p.Expect("ready")
	id := identify(t, p.PID)

	m.mustWrite("1s keep=5", p.PID, "autosave")
	const ticks = 4
	for n := uint64(1); n <= ticks; n++ {
		waitAutoSave(t, m, id, n)
		if _, err := stdin.Write([]byte("t")); err != nil {
			t.Fatal(err)
		}
		p.Expect("touched ")
	}
	m.mustWrite("off", p.PID, "autosave")
	settledAutoSaves(t, m, id, 5)

	infos, err := m.store.Snapshots(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		t.Logf("%s: bytes %d, stored %d (%.1f%% of bytes), frozen %v",
			info.Name, info.Bytes, info.Stored, 100*float64(info.Stored)/float64(info.Bytes), info.Frozen)
		if info.Bytes < 64<<20 {
			t.Errorf("%s saved %d bytes, less than the 64 MiB the process touched", info.Name, info.Bytes)
		}
		if info.Stored == 0 {
			t.Errorf("%s reports 0 bytes stored", info.Name)
		}
	}
}
