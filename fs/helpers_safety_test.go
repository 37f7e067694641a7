package fs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/testproc"
)

// publicBin copies the C target name, built by testproc, into a directory
// that every user may enter, so that processes running as nobody can run
// it. testproc builds into a directory only root may enter.
func publicBin(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ckptfs-public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(testproc.Build(t, name))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// asUser makes cmd run with uid and gid; 0 leaves it running as root.
func asUser(cmd *exec.Cmd, uid uint32) *exec.Cmd {
	cmd.Dir = "/"
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	return cmd
}

// prober runs safe_try as one user: one file operation, its outcome as
// text.
type prober struct {
	t   *testing.T
	bin string
	uid uint32
}

func newProber(t *testing.T, uid uint32) *prober {
	t.Helper()
	return &prober{t: t, bin: publicBin(t, "safe_try"), uid: uid}
}

// run returns the lines safe_try printed for op on path.
func (p *prober) run(op, path string, data ...string) []string {
	p.t.Helper()
	cmd := asUser(exec.Command(p.bin, append([]string{op, path}, data...)...), p.uid)
	out, err := cmd.Output()
	if err != nil {
		p.t.Fatalf("safe_try %s %s as uid %d: %v", op, path, p.uid, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// result returns the last line: "ok ..." or "err ENAME".
func (p *prober) result(op, path string, data ...string) string {
	p.t.Helper()
	lines := p.run(op, path, data...)
	return lines[len(lines)-1]
}

// list returns the entries of dir as the user sees them, or nil and the
// error line.
func (p *prober) list(dir string) ([]string, string) {
	p.t.Helper()
	lines := p.run("list", dir)
	if last := lines[len(lines)-1]; last != "ok" {
		return nil, last
	}
	var names []string
	for _, line := range lines[:len(lines)-1] {
		names = append(names, strings.TrimPrefix(line, "entry "))
	}
	return names, "ok"
}

// wantResult fails unless got starts with want ("ok" or "err EACCES").
func wantResult(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if got == w || strings.HasPrefix(got, w+" ") {
			return
		}
	}
	t.Errorf("%s: %s, want %s", what, got, strings.Join(want, " or "))
}

// safeTarget is a running safe_target.
type safeTarget struct {
	*testproc.Proc
	stdin io.WriteCloser
}

// startSafeTarget starts safe_target as uid (0: root) and waits for
// "ready".
func startSafeTarget(t *testing.T, uid uint32) *safeTarget {
	t.Helper()
	cmd := asUser(exec.Command(publicBin(t, "safe_target")), uid)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })
	p.Expect("ready")
	return &safeTarget{Proc: p, stdin: stdin}
}

// send sends commands to the target.
func (st *safeTarget) send(t *testing.T, commands string) {
	t.Helper()
	if _, err := io.WriteString(st.stdin, commands); err != nil {
		t.Fatalf("send %q to pid %d: %v", commands, st.PID, err)
	}
}

// command sends one command and returns the rest of the line that starts
// with reply.
func (st *safeTarget) command(t *testing.T, c, reply string) string {
	t.Helper()
	st.send(t, c)
	return st.Expect(reply)
}

// waitComm waits until pid's command name is comm, as after an execve.
func waitComm(t *testing.T, pid int, comm string) {
	t.Helper()
	deadline := time.Now().Add(pollLimit)
	for {
		st, err := engine.ReadStatus(pid)
		if err == nil && st.Name == comm {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not become %s: %v", pid, comm, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// counter returns the target's counter.
func (st *safeTarget) counter(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(st.command(t, "g", "counter "))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tracerOf returns the TracerPid of pid, or -1 once it is gone.
func tracerOf(pid int) int {
	st, err := engine.ReadStatus(pid)
	if err != nil {
		return -1
	}
	return st.TracerPid
}

// waitRunning waits until pid is neither traced nor stopped, for at most
// limit, and returns its last state letter and tracer.
func waitRunning(pid int, limit time.Duration) (string, int) {
	deadline := time.Now().Add(limit)
	for {
		st, err := engine.ReadStatus(pid)
		if err != nil {
			return "gone", -1
		}
		state := string(st.State)
		if (state != "T" && state != "t") && st.TracerPid == 0 || time.Now().After(deadline) {
			return state, st.TracerPid
		}
		time.Sleep(time.Millisecond)
	}
}

// tmpEntries returns the names of the .tmp-* work directories in a store.
func tmpEntries(t *testing.T, storeDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	var tmp []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			tmp = append(tmp, e.Name())
		}
	}
	return tmp
}

// lineLog collects the lines of a child process's stream.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
	}
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// mounted reports whether dir is a mountpoint in this mount namespace.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// pidDir returns the mount path of pid's directory.
func pidDir(mnt string, pid int, rest ...string) string {
	return filepath.Join(append([]string{mnt, strconv.Itoa(pid)}, rest...)...)
}

// fmtPhases formats a phase count for the test log.
func fmtPhases(counts map[string]int, order []string) string {
	var parts []string
	for _, phase := range order {
		parts = append(parts, fmt.Sprintf("%s=%d", phase, counts[phase]))
	}
	return strings.Join(parts, " ")
}

// writeOrAbort is m.write for a write that must return soon. When it has
// not returned after pollLimit, it aborts the mount's FUSE connection and
// fails the test: a request stuck in a mount served by the test process
// itself would otherwise keep the test binary from ever exiting.
func (m *testMount) writeOrAbort(data string, parts ...any) error {
	m.t.Helper()
	done := make(chan error, 1)
	go func() { done <- m.write(data, parts...) }()
	return m.awaitOrAbort("write "+strconv.Quote(data)+" to "+m.path(parts...), done)
}

// awaitOrAbort waits for done like writeOrAbort.
func (m *testMount) awaitOrAbort(what string, done <-chan error) error {
	m.t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(pollLimit):
	}
	m.abortConnection()
	m.t.Fatalf("%s did not return within %v; FUSE connection aborted", what, pollLimit)
	return nil
}

// abortConnection aborts the FUSE connection of the mount through the
// fusectl file system, mounting it at its usual place if needed.
func (m *testMount) abortConnection() {
	m.t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		m.t.Errorf("read mountinfo: %v", err)
		return
	}
	device := ""
	for _, line := range strings.Split(string(data), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == m.dir {
			device = fields[2]
		}
	}
	_, minor, ok := strings.Cut(device, ":")
	if !ok {
		m.t.Errorf("no mount at %s to abort", m.dir)
		return
	}

	const connections = "/sys/fs/fuse/connections"
	abort := filepath.Join(connections, minor, "abort")
	if _, err := os.Stat(abort); err != nil {
		if err := unix.Mount("fusectl", connections, "fusectl", 0, ""); err != nil {
			m.t.Errorf("mount fusectl: %v", err)
		}
	}
	if err := os.WriteFile(abort, []byte("1"), 0o200); err != nil {
		m.t.Errorf("abort FUSE connection %s: %v", minor, err)
	}
}
