package fs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/s3test"
	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// fleetMarker holds the strings that fleet_target puts in its heap and in a
// global.
var fleetMarker = map[string]string{
	"heap":   "CKPTFS-FLEET-HEAP-c09d",
	"global": "CKPTFS-FLEET-GLOBAL-5e1a",
}

// mountS3 mounts a tree whose store is prefix in the bucket of srv, opened
// by URL as "ckptfs mount --store s3://..." opens it.
func mountS3(t *testing.T, srv *s3test.Server, prefix string) *testMount {
	t.Helper()
	srv.Setenv(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := snapshot.OpenURL(srv.StoreURL(prefix), log)
	if err != nil {
		t.Fatalf("open store %s at %s: %v", srv.StoreURL(prefix), srv.Endpoint(), err)
	}

	dir, err := os.MkdirTemp("", "ckptfs-mnt-s3-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove mountpoint: %v", err)
		}
	})

	fuseSrv, err := Mount(dir, Config{Store: store, Logger: log})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	m := &testMount{t: t, dir: dir, storeDir: srv.StoreURL(prefix), store: store, srv: fuseSrv, log: logs}
	t.Cleanup(func() {
		m.unmount()
		if strings.Contains(logs.String(), s3test.SecretKey) {
			t.Errorf("the mount log contains the S3 secret key")
		}
		if t.Failed() {
			t.Logf("mount log:\n%s", logs)
		}
	})
	return m
}

// fleetTarget is a running fleet_target.
type fleetTarget struct {
	*testproc.Proc
	bin       string
	stdin     io.WriteCloser
	heap      uint64
	global    uint64
	counterAt uint64
}

// startFleetTarget starts fleet_target with mib MiB of filled memory and
// reads the addresses it prints.
func startFleetTarget(t *testing.T, mib int) *fleetTarget {
	t.Helper()
	bin := testproc.Build(t, "fleet_target")
	cmd := exec.Command(bin, strconv.Itoa(mib))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	tg := &fleetTarget{Proc: p, bin: bin, stdin: stdin}
	tg.heap = parseHex(t, p.Expect("heap "))
	tg.global = parseHex(t, p.Expect("global "))
	tg.counterAt = parseHex(t, p.Expect("counter-at "))
	p.Expect("ready")
	return tg
}

// increment increments the counter n times and returns its new value.
func (tg *fleetTarget) increment(t *testing.T, n int) int {
	t.Helper()
	if _, err := io.WriteString(tg.stdin, strings.Repeat("i", n)); err != nil {
		t.Fatalf("send to pid %d: %v", tg.PID, err)
	}
	value := 0
	for range n {
		value = tg.value(t)
	}
	return value
}

// counter returns the counter, which the target prints on request.
func (tg *fleetTarget) counter(t *testing.T) int {
	t.Helper()
	if _, err := io.WriteString(tg.stdin, "g"); err != nil {
		t.Fatalf("send to pid %d: %v", tg.PID, err)
	}
	return tg.value(t)
}

func (tg *fleetTarget) value(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(tg.Expect("value "))
	if err != nil {
		t.Fatalf("pid %d printed a bad counter: %v", tg.PID, err)
	}
	return n
}

// checkRunning fails the test unless the target is untraced, out of any
// stop, has no child left by a capture, and replies to a command with
// counter want.
func (tg *fleetTarget) checkRunning(t *testing.T, want int) {
	t.Helper()
	st, err := engine.ReadStatus(tg.PID)
	if err != nil {
		t.Fatalf("read status of pid %d: %v", tg.PID, err)
	}
	if st.TracerPid != 0 {
		t.Errorf("pid %d is still traced by pid %d", tg.PID, st.TracerPid)
	}
	if state := tg.State(); state == "t" || state == "T" {
		t.Errorf("pid %d is left stopped (state %s)", tg.PID, state)
	}
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", tg.PID, tg.PID))
	if err != nil {
		t.Errorf("read children of pid %d: %v", tg.PID, err)
	}
	if len(strings.Fields(string(children))) != 0 {
		t.Errorf("pid %d has children %s left by the capture, want none", tg.PID, children)
	}
	if got := tg.counter(t); got != want {
		t.Errorf("pid %d replies counter %d, want %d", tg.PID, got, want)
	}
}

func TestS3MountCaptureBrowseRestore(t *testing.T) {
	srv := s3test.Start(t)
	m := mountS3(t, srv, "fleet/browse")
	tg := startFleetTarget(t, 0)
	liveMaps, err := os.ReadFile("/proc/" + strconv.Itoa(tg.PID) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	if got := tg.increment(t, 3); got != 3 {
		t.Fatalf("counter %d after three increments, want 3", got)
	}

	m.mustWrite("before\n", tg.PID, "capture")
	if got := m.read(tg.PID, "capture"); got != "before\n" {
		t.Errorf("capture reads %q, want before", got)
	}
	snapMaps := m.read(tg.PID, "before", "maps")
	if snapMaps != string(liveMaps) {
		t.Errorf("maps differ from /proc/%d/maps\n got:\n%s\nwant:\n%s", tg.PID, snapMaps, liveMaps)
	}
	maps := parseMaps(t, snapMaps)

	info := keyValues(m.read(tg.PID, "before", "info"))
	for key, want := range map[string]string{"pid": strconv.Itoa(tg.PID), "comm": "fleet_target", "exe": tg.bin, "threads": "1"} {
		if info[key] != want {
			t.Errorf("info %s: %q, want %q", key, info[key], want)
		}
	}
	checkRegs(t, m.read(tg.PID, "before", "regs"), maps)
	checkFleetMemory(t, m, tg, maps, "before", 3)

	if got := tg.increment(t, 4); got != 7 {
		t.Fatalf("counter %d before restore, want 7", got)
	}
	m.mustWrite("before\n", tg.PID, "restore")
	if got := tg.counter(t); got != 3 {
		t.Errorf("counter %d after restore, want 3", got)
	}
	status := keyValues(m.read(tg.PID, "status"))
	if status["operation"] != "restore" {
		t.Errorf("status names operation %q after restore, want restore", status["operation"])
	}
	if status["result"] != "ok" {
		t.Errorf("status of the restore has result %q, want ok", status["result"])
	}

	if err := os.Remove(m.path(tg.PID, "before")); err != nil {
		t.Fatalf("rmdir before: %v", err)
	}
	if _, err := os.Stat(m.path(tg.PID, "before")); !os.IsNotExist(err) {
		t.Errorf("stat after rmdir: %v, want not exist", err)
	}
	if infos, err := m.store.Snapshots(identify(t, tg.PID)); err != nil || len(infos) != 0 {
		t.Errorf("store lists %v (%v) after rmdir, want nothing", infos, err)
	}
	for _, file := range srv.Keys(t) {
		if strings.Contains(file, "/before/") || strings.Contains(file, "/.data/") {
			t.Errorf("object %s is left in the bucket after rmdir", file)
		}
	}
}

// checkFleetMemory reads the markers and the counter back from the memory
// files of snapshot name.
func checkFleetMemory(t *testing.T, m *testMount, tg *fleetTarget, maps []mapping, name string, counter uint64) {
	t.Helper()
	want := map[uint64][]byte{
		tg.heap:      []byte(fleetMarker["heap"]),
		tg.global:    []byte(fleetMarker["global"]),
		tg.counterAt: binary.LittleEndian.AppendUint64(nil, counter),
	}
	for addr, expected := range want {
		mp := containing(t, maps, addr)
		f, err := os.Open(m.path(tg.PID, name, "memory", mp.bounds))
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(expected))
		_, err = f.ReadAt(got, int64(addr-mp.start))
		f.Close()
		if err != nil || !bytes.Equal(got, expected) {
			t.Errorf("memory/%s at offset %#x: %q (%v), want %q", mp.bounds, addr-mp.start, got, err, expected)
		}
	}
}

func TestS3MountServerStopsMidSave(t *testing.T) {
	srv := s3test.Start(t)
	m := mountS3(t, srv, "fleet/outage")
	tg := startFleetTarget(t, 64)
	tg.increment(t, 2)

	result := make(chan error, 1)
	go func() { result <- m.write("outage\n", tg.PID, "capture") }()
	srv.WaitForObject(t, "fleet/outage/", "/maps")
	srv.Stop()

	err := <-result
	wantErrno(t, "capture while the server is down", err, unix.EIO)
	status := m.read(tg.PID, "status")
	t.Logf("status after the outage:\n%s", status)
	if !strings.Contains(status, "result: failed: EIO: ") {
		t.Errorf("status does not report the failure with EIO:\n%s", status)
	}
	if !strings.Contains(status, srv.Endpoint()) {
		t.Errorf("status does not name the endpoint %s:\n%s", srv.Endpoint(), status)
	}
	if strings.Contains(status, s3test.SecretKey) {
		t.Errorf("status contains the S3 secret key:\n%s", status)
	}
	tg.checkRunning(t, 2)

	srv.Restart(t)
	if names := listDir(t, m.path(tg.PID)); slices.Contains(names, "outage") {
		t.Errorf("the failed snapshot is listed after the server is back: %v", names)
	}
	m.mustWrite("after\n", tg.PID, "capture")
	if names := listDir(t, m.path(tg.PID)); !slices.Contains(names, "after") {
		t.Errorf("the capture after the outage is not listed: %v", names)
	}
}
