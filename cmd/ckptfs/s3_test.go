package main

import (
	"bytes"
	endian "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/s3test"
	"github.com/ckptfs/ckptfs/internal/testproc"
)

// fleetPollLimit bounds the waits for a daemon or a target to reach a
// state, so that a hang fails the test instead of blocking it.
const fleetPollLimit = 60 * time.Second

// controlNames are the entries of a process directory that are not
// snapshots.
var controlNames = []string{"autosave", "capture", "latest", "restore", "status"}

// fleetCommand prepares a run of the binary against the gateway. When host
// is not empty it runs in a new UTS namespace whose host name is host, so
// that the store files its snapshots under that host in the bucket.
func fleetCommand(srv *s3test.Server, host string, args ...string) *exec.Cmd {
	cmd := exec.Command(binary, args...)
	if host != "" {
		shArgs := append([]string{"-c", `hostname "$0" && exec "$@"`, host, binary}, args...)
		cmd = exec.Command("/bin/sh", shArgs...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	}
	cmd.Env = append(append(os.Environ(), "CKPTFS_STORE="), srv.Env()...)
	return cmd
}

// fleetRun runs the binary against the gateway as host (see fleetCommand)
// and fails the test if the secret key shows in its output.
func fleetRun(t *testing.T, srv *s3test.Server, host string, args ...string) result {
	t.Helper()
	cmd := fleetCommand(srv, host, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run ckptfs %s: %v", strings.Join(args, " "), err)
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	checkNoSecret(t, "ckptfs "+args[0], r.stdout+r.stderr)
	return r
}

// fleetMustRun is fleetRun that fails the test unless the binary exits 0.
func fleetMustRun(t *testing.T, srv *s3test.Server, host string, args ...string) result {
	t.Helper()
	r := fleetRun(t, srv, host, args...)
	if r.code != exitOK {
		t.Fatalf("ckptfs %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// fleetList returns the snapshots that "list --json" shows to host.
func fleetList(t *testing.T, srv *s3test.Server, host, store string) []listEntry {
	t.Helper()
	r := fleetMustRun(t, srv, host, "list", "--json", "--store", store)
	var entries []listEntry
	if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil {
		t.Fatalf("list --json output is not a JSON array of snapshots: %v\n%s", err, r.stdout)
	}
	return entries
}

// listed returns "PID/NAME" for each entry, sorted.
func listed(entries []listEntry) []string {
	var names []string
	for _, e := range entries {
		names = append(names, fmt.Sprintf("%d/%s", e.PID, e.Snapshot))
	}
	slices.Sort(names)
	return names
}

func checkNoSecret(t *testing.T, program, output string) {
	t.Helper()
	if strings.Contains(output, s3test.SecretKey) {
		t.Errorf("the output of %s contains the S3 secret key:\n%s", program, output)
	}
}

// lockedBuffer collects the stderr of a daemon while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fleetDaemon is a running "ckptfs mount" on a bucket of the gateway.
type fleetDaemon struct {
	cmd        *exec.Cmd
	mountpoint string
	stderr     *lockedBuffer
	exited     chan struct{}
}

// startFleetDaemon runs "ckptfs mount --store s3://..." on prefix as host
// (see fleetCommand) and waits until it logs "mounted". A cleanup kills it
// by pid, detaches its mount if left, and checks that its log does not
// contain the secret key.
func startFleetDaemon(t *testing.T, srv *s3test.Server, host, prefix string) *fleetDaemon {
	t.Helper()
	d := &fleetDaemon{mountpoint: filepath.Join(t.TempDir(), "ckpt"), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	d.cmd = fleetCommand(srv, host, "mount", "--log-json", "--log-level", "debug", "--store", srv.StoreURL(prefix), d.mountpoint)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start ckptfs mount: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.kill()
		if mounted(d.mountpoint) {
			_ = unix.Unmount(d.mountpoint, unix.MNT_DETACH)
		}
		checkNoSecret(t, "ckptfs mount", d.stderr.String())
		if t.Failed() {
			t.Logf("log of ckptfs mount on %s:\n%s", d.mountpoint, d.stderr)
		}
	})

	deadline := time.After(fleetPollLimit)
	for !strings.Contains(d.stderr.String(), `"msg":"mounted"`) {
		select {
		case <-d.exited:
			t.Fatalf("ckptfs mount exited before mounting:\n%s", d.stderr)
		case <-deadline:
			t.Fatalf("ckptfs mount did not mount within %v:\n%s", fleetPollLimit, d.stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return d
}

// kill sends SIGKILL to the daemon by pid, if it still runs, and waits
// until it is reaped.
func (d *fleetDaemon) kill() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
}

func (d *fleetDaemon) path(parts ...any) string {
	elems := []string{d.mountpoint}
	for _, part := range parts {
		elems = append(elems, fmt.Sprint(part))
	}
	return filepath.Join(elems...)
}

// capture writes name to the capture file of pid.
func (d *fleetDaemon) capture(pid int, name string) error {
	return os.WriteFile(d.path(pid, "capture"), []byte(name+"\n"), 0o600)
}

func (d *fleetDaemon) mustCapture(t *testing.T, pid int, name string) {
	t.Helper()
	if err := d.capture(pid, name); err != nil {
		t.Fatalf("capture pid %d as %s through %s: %v", pid, name, d.mountpoint, err)
	}
}

func (d *fleetDaemon) mustRestore(t *testing.T, pid int, name string) {
	t.Helper()
	if err := os.WriteFile(d.path(pid, "restore"), []byte(name+"\n"), 0o600); err != nil {
		t.Fatalf("restore pid %d to %s through %s: %v", pid, name, d.mountpoint, err)
	}
}

// snapshotNames returns the snapshots in the process directory of pid.
func (d *fleetDaemon) snapshotNames(t *testing.T, pid int) []string {
	t.Helper()
	entries, err := os.ReadDir(d.path(pid))
	if err != nil {
		t.Fatalf("list %s: %v", d.path(pid), err)
	}
	var names []string
	for _, e := range entries {
		if !slices.Contains(controlNames, e.Name()) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names
}

// savedCounter reads the counter of a fleet_target from the memory files
// of snapshot name.
func (d *fleetDaemon) savedCounter(t *testing.T, tg *fleetProc, name string) uint64 {
	t.Helper()
	maps, err := os.ReadFile(d.path(tg.PID, name, "maps"))
	if err != nil {
		t.Fatalf("read maps of %s: %v", name, err)
	}
	for _, line := range strings.Split(string(maps), "\n") {
		bounds, _, _ := strings.Cut(line, " ")
		lo, hi, ok := strings.Cut(bounds, "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || tg.counterAt < start || tg.counterAt >= end {
			continue
		}
		f, err := os.Open(d.path(tg.PID, name, "memory", bounds))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var word [8]byte
		if _, err := f.ReadAt(word[:], int64(tg.counterAt-start)); err != nil {
			t.Fatalf("read counter from memory/%s of %s: %v", bounds, name, err)
		}
		return endian.LittleEndian.Uint64(word[:])
	}
	t.Fatalf("no mapping of snapshot %s holds the counter at %#x", name, tg.counterAt)
	return 0
}

// fleetProc is a running fleet_target.
type fleetProc struct {
	*testproc.Proc
	stdin     io.WriteCloser
	counterAt uint64
}

// startFleetProc starts fleet_target with mib MiB of filled memory.
func startFleetProc(t *testing.T, mib int) *fleetProc {
	t.Helper()
	cmd := exec.Command(testproc.Build(t, "fleet_target"), strconv.Itoa(mib))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	counterAt, err := strconv.ParseUint(strings.TrimPrefix(p.Expect("counter-at "), "0x"), 16, 64)
	if err != nil {
		t.Fatalf("fleet_target printed a bad counter address: %v", err)
	}
	p.Expect("ready")
	return &fleetProc{Proc: p, stdin: stdin, counterAt: counterAt}
}

// send sends commands to the target and returns the last counter value it
// prints in reply, one per command.
func (tg *fleetProc) send(t *testing.T, commands string) int {
	t.Helper()
	if _, err := io.WriteString(tg.stdin, commands); err != nil {
		t.Fatalf("send %q to pid %d: %v", commands, tg.PID, err)
	}
	value := 0
	for range commands {
		n, err := strconv.Atoi(tg.Expect("value "))
		if err != nil {
			t.Fatalf("pid %d printed a bad counter: %v", tg.PID, err)
		}
		value = n
	}
	return value
}

// checkRunning fails the test unless the target is untraced, out of any
// stop, has no child left by a capture, and replies with counter want.
func (tg *fleetProc) checkRunning(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(fleetPollLimit)
	for {
		st, err := engine.ReadStatus(tg.PID)
		if err != nil || st.State == 'Z' {
			t.Fatalf("pid %d did not survive the capture: %s", tg.PID, tg.exitStatus())
		}
		if st.TracerPid == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is still traced by pid %d", tg.PID, st.TracerPid)
		}
		time.Sleep(time.Millisecond)
	}
	if state := tg.State(); state == "t" || state == "T" {
		t.Errorf("pid %d is left stopped (state %s)", tg.PID, state)
	}
	if got := tg.send(t, "g"); got != want {
		t.Errorf("pid %d replies counter %d, want %d", tg.PID, got, want)
	}
}

// checkNoChildren fails the test when the target has a child. A
// copy-on-write capture forks the target; the fork must not outlive the
// capture, and when the daemon died during it, the next operation on the
// process reaps the zombie it left.
func (tg *fleetProc) checkNoChildren(t *testing.T) {
	t.Helper()
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", tg.PID, tg.PID))
	if err != nil {
		t.Errorf("read children of pid %d: %v", tg.PID, err)
	}
	for _, child := range strings.Fields(string(children)) {
		t.Errorf("pid %d has a child left by the capture: pid %s, state %s", tg.PID, child, settledState(child))
	}
}

// settledState waits until process pid is no longer running (a process
// killed with a large address space shows R while it exits) and returns
// its state letter, or "gone".
func settledState(pid string) string {
	deadline := time.Now().Add(fleetPollLimit)
	for {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return "gone"
		}
		_, rest, _ := strings.Cut(string(stat), ") ")
		if state := rest[:1]; state != "R" || time.Now().After(deadline) {
			return state
		}
		time.Sleep(time.Millisecond)
	}
}

// exitStatus waits until the target is reaped and returns how it ended.
func (tg *fleetProc) exitStatus() string {
	deadline := time.Now().Add(fleetPollLimit)
	for tg.Alive() {
		if time.Now().After(deadline) {
			return "still not reaped"
		}
		time.Sleep(time.Millisecond)
	}
	return tg.Cmd.ProcessState.String()
}

func TestS3CommandsRoundTrip(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)
	store := srv.StoreURL("fleet/cli")
	tg := startFleetProc(t, 0)
	pid := strconv.Itoa(tg.PID)
	tg.send(t, "iii")

	r := fleetMustRun(t, srv, "", "capture", "--log-level", "debug", "--store", store, pid, "before")
	if got := strings.TrimSpace(r.stdout); got != "before" {
		t.Errorf("capture printed %q, want before", got)
	}
	r = fleetMustRun(t, srv, "", "capture", "--log-level", "debug", "--store", store, pid)
	if got := strings.TrimSpace(r.stdout); got != "snap-1" {
		t.Errorf("capture without a name printed %q, want snap-1", got)
	}
	want := []string{pid + "/before", pid + "/snap-1"}
	if got := listed(fleetList(t, srv, "", store)); !slices.Equal(got, want) {
		t.Errorf("list shows %v, want %v", got, want)
	}
	table := fleetMustRun(t, srv, "", "list", "--store", store, pid).stdout
	for _, want := range []string{"before", stateLive} {
		if !strings.Contains(table, want) {
			t.Errorf("list table lacks %q:\n%s", want, table)
		}
	}

	if got := tg.send(t, "iiii"); got != 7 {
		t.Fatalf("counter %d before restore, want 7", got)
	}
	r = fleetMustRun(t, srv, "", "restore", "--log-level", "debug", "--store", store, pid, "before")
	if !strings.Contains(r.stdout, "restored pid "+pid+" to snapshot before") {
		t.Errorf("restore printed %q, want it to confirm the rollback", r.stdout)
	}
	if got := tg.send(t, "g"); got != 3 {
		t.Errorf("counter %d after restore, want 3", got)
	}

	fleetMustRun(t, srv, "", "rm", "--log-level", "debug", "--store", store, pid, "before")
	if got := listed(fleetList(t, srv, "", store)); !slices.Equal(got, []string{pid + "/snap-1"}) {
		t.Errorf("list after rm shows %v, want only snap-1", got)
	}
	r = fleetRun(t, srv, "", "rm", "--store", store, pid, "before")
	if r.code != exitFailed {
		t.Errorf("second rm of before: exit %d, want %d", r.code, exitFailed)
	}
	for _, want := range []string{"pid " + pid, `"before"`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr of the second rm of before lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestS3WrongSecretNotShown(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)
	const wrong = "not-the-secret-8f3e2a71c6"
	cmd := fleetCommand(srv, "", "list", "--log-level", "debug", "--store", srv.StoreURL("fleet/auth"))
	cmd.Env = append(cmd.Env, "AWS_SECRET_ACCESS_KEY="+wrong)
	out, err := cmd.CombinedOutput()

	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitFailed {
		t.Fatalf("list with a wrong secret key: %v, want exit %d; output:\n%s", err, exitFailed, out)
	}
	if !strings.Contains(string(out), srv.Endpoint()) {
		t.Errorf("the error does not name the endpoint %s:\n%s", srv.Endpoint(), out)
	}
	if strings.Contains(string(out), wrong) {
		t.Errorf("the output contains the secret key given:\n%s", out)
	}
}

func TestS3DaemonKilledMidCapture(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)

	t.Run("while frozen", func(t *testing.T) {
		checkDaemonKilled(t, srv, "fleet/killed-frozen", func(d *fleetDaemon, tg *fleetProc, done <-chan error) {
			waitTraced(t, tg.PID, d.cmd.Process.Pid, done)
		})
	})
	t.Run("while uploading", func(t *testing.T) {
		checkDaemonKilled(t, srv, "fleet/killed-uploading", func(*fleetDaemon, *fleetProc, <-chan error) {
			srv.WaitForObject(t, "fleet/killed-uploading/", "/maps")
		})
	})
}

// checkDaemonKilled starts a daemon on prefix, starts a capture of a
// 256 MiB target through it, kills the daemon when killPoint returns, and
// checks that the target runs on and that a new daemon lists no snapshot.
func checkDaemonKilled(t *testing.T, srv *s3test.Server, prefix string, killPoint func(*fleetDaemon, *fleetProc, <-chan error)) {
	d := startFleetDaemon(t, srv, "", prefix)
	var tg *fleetProc
	t.Cleanup(func() {
		// Runs after the target's own cleanup has killed and reaped it.
		if t.Failed() && tg != nil {
			t.Logf("pid %d ended with %v", tg.PID, tg.Cmd.ProcessState)
		}
	})
	tg = startFleetProc(t, 256)
	tg.send(t, "ii")
	mapsBefore, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", tg.PID))
	if err != nil {
		t.Fatal(err)
	}

	result := make(chan error, 1)
	go func() { result <- d.capture(tg.PID, "partial") }()
	killPoint(d, tg, result)
	d.kill()
	if err := <-result; err == nil {
		t.Fatalf("the capture returned success although its daemon was killed during it")
	}

	tg.checkRunning(t, 2)
	if mapsAfter, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", tg.PID)); err != nil || !bytes.Equal(mapsAfter, mapsBefore) {
		t.Errorf("maps of pid %d changed (%v)\nbefore:\n%s\nafter:\n%s", tg.PID, err, mapsBefore, mapsAfter)
	}

	d2 := startFleetDaemon(t, srv, "", prefix)
	if names := d2.snapshotNames(t, tg.PID); len(names) != 0 {
		t.Errorf("a new daemon lists snapshots %v of pid %d, want none", names, tg.PID)
	}
	if entries := fleetList(t, srv, "", srv.StoreURL(prefix)); len(entries) != 0 {
		t.Errorf("list shows %v after the killed capture, want nothing", listed(entries))
	}
	var leftovers []string
	for _, key := range srv.Keys(t) {
		if strings.HasPrefix(key, prefix+"/") {
			leftovers = append(leftovers, key)
		}
	}
	t.Logf("objects left by the killed capture: %v", leftovers)

	d2.mustCapture(t, tg.PID, "partial")
	if names := d2.snapshotNames(t, tg.PID); !slices.Equal(names, []string{"partial"}) {
		t.Errorf("after a new capture the daemon lists %v, want [partial]", names)
	}
	tg.checkNoChildren(t)
}

// waitTraced waits until pid is traced by a thread of process tracer, and
// fails the test when the capture ends first.
func waitTraced(t *testing.T, pid, tracer int, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(fleetPollLimit)
	for time.Now().Before(deadline) {
		st, err := engine.ReadStatus(pid)
		if err != nil {
			t.Fatalf("read status of pid %d: %v", pid, err)
		}
		if st.TracerPid != 0 && threadOf(st.TracerPid, tracer) {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the capture ended (%v) before pid %d was seen traced by the daemon %d", err, pid, tracer)
		default:
		}
	}
	t.Fatalf("pid %d was not traced by the daemon %d within %v", pid, tracer, fleetPollLimit)
}

// threadOf reports whether tid is a thread of process pid. TracerPid in
// /proc/PID/status is the thread id of the tracing thread.
func threadOf(tid, pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid))
	return err == nil
}

func TestS3TwoHostsOneBucket(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)
	a := startFleetDaemon(t, srv, "fleet-a", "fleet")
	b := startFleetDaemon(t, srv, "fleet-b", "fleet")
	t1, t2 := startFleetProc(t, 0), startFleetProc(t, 0)

	t1.send(t, "i")
	a.mustCapture(t, t1.PID, "same")
	t1.send(t, "i")
	t2.send(t, "iiiii")

	// Both hosts write to the bucket at the same time.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() { errs[0] = b.capture(t1.PID, "same") })
	wg.Go(func() { errs[1] = a.capture(t2.PID, "1") })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent captures on two hosts: %v", err)
	}
	t2.send(t, "i")
	b.mustCapture(t, t2.PID, "1")

	for _, c := range []struct {
		d       *fleetDaemon
		tg      *fleetProc
		name    string
		counter uint64
	}{{a, t1, "same", 1}, {b, t1, "same", 2}, {a, t2, "snap-1", 5}, {b, t2, "snap-1", 6}} {
		if names := c.d.snapshotNames(t, c.tg.PID); !slices.Equal(names, []string{c.name}) {
			t.Errorf("%s lists %v for pid %d, want [%s]", c.d.mountpoint, names, c.tg.PID, c.name)
		}
		if got := c.d.savedCounter(t, c.tg, c.name); got != c.counter {
			t.Errorf("%s: snapshot %s of pid %d holds counter %d, want %d", c.d.mountpoint, c.name, c.tg.PID, got, c.counter)
		}
	}

	want := []string{fmt.Sprintf("%d/same", t1.PID), fmt.Sprintf("%d/snap-1", t2.PID)}
	for _, host := range []string{"fleet-a", "fleet-b"} {
		if got := listed(fleetList(t, srv, host, srv.StoreURL("fleet"))); !slices.Equal(got, want) {
			t.Errorf("list on %s shows %v, want %v", host, got, want)
		}
	}
	if got := fleetList(t, srv, "fleet-c", srv.StoreURL("fleet")); len(got) != 0 {
		t.Errorf("list on a third host shows %v, want nothing", listed(got))
	}
	for _, key := range srv.Keys(t) {
		if !strings.HasPrefix(key, "fleet/fleet-a/") && !strings.HasPrefix(key, "fleet/fleet-b/") {
			t.Errorf("object %s is outside the prefixes of the two hosts", key)
		}
	}

	t1.send(t, "iiiiiii")
	a.mustRestore(t, t1.PID, "same")
	if got := t1.send(t, "g"); got != 1 {
		t.Errorf("counter %d after restore from fleet-a, want 1", got)
	}
	b.mustRestore(t, t1.PID, "same")
	if got := t1.send(t, "g"); got != 2 {
		t.Errorf("counter %d after restore from fleet-b, want 2", got)
	}

	if err := os.Remove(a.path(t1.PID, "same")); err != nil {
		t.Fatalf("rmdir same on fleet-a: %v", err)
	}
	if names := b.snapshotNames(t, t1.PID); !slices.Equal(names, []string{"same"}) {
		t.Errorf("fleet-b lists %v after fleet-a removed its own same, want [same]", names)
	}
	if got := b.savedCounter(t, t1, "same"); got != 2 {
		t.Errorf("snapshot same of fleet-b holds counter %d after fleet-a removed its own, want 2", got)
	}
}

func TestS3CaptureServerStops(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)
	store := srv.StoreURL("fleet/outage")
	tg := startFleetProc(t, 64)
	pid := strconv.Itoa(tg.PID)
	tg.send(t, "iiii")

	cmd := fleetCommand(srv, "", "capture", "--store", store, pid, "outage")
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ckptfs capture: %v", err)
	}
	srv.WaitForObject(t, "fleet/outage/", "/maps")
	srv.Stop()

	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitFailed {
		t.Fatalf("capture while the server is down: %v, want exit %d; stderr:\n%s", err, exitFailed, stderr.String())
	}
	t.Logf("stderr of the failed capture:\n%s", stderr.String())
	for _, want := range []string{"process " + pid, `"outage"`, srv.Endpoint()} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr of the failed capture lacks %q:\n%s", want, stderr.String())
		}
	}
	checkNoSecret(t, "ckptfs capture", stdout.String()+stderr.String())
	if stdout.String() != "" {
		t.Errorf("the failed capture printed %q on stdout", stdout.String())
	}
	tg.checkRunning(t, 4)
	tg.checkNoChildren(t)

	srv.Restart(t)
	if entries := fleetList(t, srv, "", store); len(entries) != 0 {
		t.Errorf("list shows %v after the failed capture, want nothing", listed(entries))
	}
}
