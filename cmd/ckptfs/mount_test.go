package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountReadyTimeout bounds the wait for the "mounted" log line; it only
// turns a hang into a test failure.
const mountReadyTimeout = 30 * time.Second

// mountProc is a running "ckptfs mount".
type mountProc struct {
	cmd        *exec.Cmd
	mountpoint string
	logs       chan map[string]any // decoded log records; closed at exit
	exited     chan error          // the result of Wait, after logs closes
	badLines   chan string         // stderr lines that are not JSON
}

// startMount runs "ckptfs mount --log-json" on a new mountpoint that does
// not exist yet, waits until it logs "mounted", and registers a cleanup that
// kills it by pid and detaches the mount if either is left.
func startMount(t *testing.T) *mountProc {
	t.Helper()
	mountpoint := filepath.Join(t.TempDir(), "ckpt")
	cmd := exec.Command(binary, "mount", "--log-json", "--store", newStore(t), mountpoint)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("stderr pipe of ckptfs mount: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ckptfs mount: %v", err)
	}

	m := &mountProc{
		cmd: cmd, mountpoint: mountpoint,
		logs: make(chan map[string]any, 1024), exited: make(chan error, 1), badLines: make(chan string, 1024),
	}
	go m.readLogs(stderr)
	t.Cleanup(m.cleanup)

	m.waitLog(t, "mounted")
	return m
}

// readLogs decodes the JSON log lines of the mount, then waits for it to exit.
func (m *mountProc) readLogs(stderr io.Reader) {
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var record map[string]any
		if err := json.Unmarshal(sc.Bytes(), &record); err != nil {
			m.badLines <- sc.Text()
			continue
		}
		m.logs <- record
	}
	close(m.logs)
	close(m.badLines)
	m.exited <- m.cmd.Wait()
}

// waitLog waits for a log record with message msg.
func (m *mountProc) waitLog(t *testing.T, msg string) {
	t.Helper()
	deadline := time.After(mountReadyTimeout)
	for {
		select {
		case record, ok := <-m.logs:
			if !ok {
				t.Fatalf("ckptfs mount exited before logging %q", msg)
			}
			if record["msg"] == msg {
				return
			}
		case <-deadline:
			t.Fatalf("ckptfs mount logged no %q within %v", msg, mountReadyTimeout)
		}
	}
}

// wait waits for the mount process to exit, fails the test for every log
// line that was not JSON, and returns the exit status.
func (m *mountProc) wait(t *testing.T) int {
	t.Helper()
	err := m.reap()
	for line := range m.badLines {
		t.Errorf("ckptfs mount --log-json wrote a line that is not JSON: %s", line)
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("wait for ckptfs mount: %v", err)
	}
	return m.cmd.ProcessState.ExitCode()
}

// reap drains the logs and returns the result of Wait; it may be called
// more than once.
func (m *mountProc) reap() error {
	for range m.logs {
	}
	err := <-m.exited
	m.exited <- err
	return err
}

// cleanup kills the mount process by pid if it still runs, reaps it, and
// detaches the mount if it is left.
func (m *mountProc) cleanup() {
	select {
	case err := <-m.exited:
		m.exited <- err
	default:
		_ = m.cmd.Process.Kill()
	}
	_ = m.reap()
	if mounted(m.mountpoint) {
		_ = unix.Unmount(m.mountpoint, unix.MNT_DETACH)
	}
}

// mounted reports whether /proc/mounts lists mountpoint.
func mounted(mountpoint string) bool {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 1 && fields[1] == mountpoint {
			return true
		}
	}
	return false
}

// checkServing checks that the mount is listed and serves the tree.
func checkServing(t *testing.T, m *mountProc) {
	t.Helper()
	if !mounted(m.mountpoint) {
		t.Fatalf("%s is not in /proc/mounts after ckptfs mount logged mounted", m.mountpoint)
	}
	if _, err := os.Lstat(filepath.Join(m.mountpoint, "self")); err != nil {
		t.Errorf("the mount serves no self link: %v", err)
	}
}

func TestMountStopsOnSIGTERM(t *testing.T) {
	needRoot(t)
	m := startMount(t)
	checkServing(t, m)

	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("send SIGTERM to ckptfs mount: %v", err)
	}
	if code := m.wait(t); code != exitOK {
		t.Errorf("ckptfs mount exited %d after SIGTERM, want 0", code)
	}
	if mounted(m.mountpoint) {
		t.Errorf("%s is still in /proc/mounts after SIGTERM", m.mountpoint)
	}
}

func TestMountStopsOnUmount(t *testing.T) {
	needRoot(t)
	m := startMount(t)
	checkServing(t, m)

	if out, err := exec.Command("umount", m.mountpoint).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v\n%s", m.mountpoint, err, out)
	}
	if code := m.wait(t); code != exitOK {
		t.Errorf("ckptfs mount exited %d after umount, want 0", code)
	}
	if mounted(m.mountpoint) {
		t.Errorf("%s is still in /proc/mounts after umount", m.mountpoint)
	}
}
