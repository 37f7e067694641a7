package fs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// pollLimit bounds the waits for an operation that finishes in the
// background, so that a deadlock fails the test instead of hanging it.
const pollLimit = 30 * time.Second

// syncBuffer is a log sink safe for the goroutines of a mount.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testMount is a ckptfs mount with its own store, both in temporary
// directories, unmounted when the test ends.
type testMount struct {
	t        *testing.T
	dir      string
	storeDir string
	store    *snapshot.Store
	srv      *Server
	log      *syncBuffer
}

// mountStore mounts a tree on a fresh mountpoint that every user can reach,
// serving the store in storeDir.
func mountStore(t *testing.T, storeDir string) *testMount {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the fs tests need root: they ptrace processes and mount FUSE")
	}

	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := snapshot.Open(storeDir, log)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}

	dir, err := os.MkdirTemp("", "ckptfs-mnt-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove mountpoint: %v", err)
		}
	})

	srv, err := Mount(dir, Config{Store: store, Logger: log})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	m := &testMount{t: t, dir: dir, storeDir: storeDir, store: store, srv: srv, log: logs}
	t.Cleanup(func() {
		m.unmount()
		if t.Failed() {
			t.Logf("mount log:\n%s", logs)
		}
	})
	return m
}

func newMount(t *testing.T) *testMount {
	t.Helper()
	return mountStore(t, t.TempDir())
}

// unmount unmounts once; later calls do nothing.
func (m *testMount) unmount() {
	if m.srv == nil {
		return
	}
	if err := m.srv.Unmount(); err != nil {
		m.t.Errorf("unmount %s: %v", m.dir, err)
	}
	m.srv = nil
}

func (m *testMount) path(parts ...any) string {
	elems := []string{m.dir}
	for _, part := range parts {
		elems = append(elems, fmt.Sprint(part))
	}
	return filepath.Join(elems...)
}

func (m *testMount) read(parts ...any) string {
	m.t.Helper()
	data, err := os.ReadFile(m.path(parts...))
	if err != nil {
		m.t.Fatalf("read: %v", err)
	}
	return string(data)
}

// write writes data to a control file and returns the error.
func (m *testMount) write(data string, parts ...any) error {
	return os.WriteFile(m.path(parts...), []byte(data), 0o600)
}

// mustWrite writes data to a control file and fails the test on error.
func (m *testMount) mustWrite(data string, parts ...any) {
	m.t.Helper()
	if err := m.write(data, parts...); err != nil {
		m.t.Fatalf("write %q: %v", data, err)
	}
}

// waitStatus polls the status file of pid until its result is no longer
// "running" and returns it.
func (m *testMount) waitStatus(pid int) string {
	m.t.Helper()
	deadline := time.Now().Add(pollLimit)
	for {
		status := m.read(pid, "status")
		if status != "" && !strings.Contains(status, "result: running") {
			return status
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("pid %d: operation still running after %v:\n%s", pid, pollLimit, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// target is a running fs_target.
type target struct {
	*testproc.Proc
	bin    string
	stdin  io.WriteCloser
	heap   uint64
	global uint64
	tids   []int
}

// startTarget starts fs_target with threads extra threads and reads what
// it prints until "ready".
func startTarget(t *testing.T, threads int) *target {
	t.Helper()
	bin := testproc.Build(t, "fs_target")
	cmd := exec.Command(bin, strconv.Itoa(threads))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	tg := &target{Proc: p, bin: bin, stdin: stdin}
	tg.heap = parseHex(t, p.Expect("heap "))
	tg.global = parseHex(t, p.Expect("global "))
	for {
		line := p.Line()
		if line == "ready" {
			break
		}
		if rest, ok := strings.CutPrefix(line, "thread "); ok {
			tid, err := strconv.Atoi(rest)
			if err != nil {
				t.Fatalf("bad thread line %q", line)
			}
			tg.tids = append(tg.tids, tid)
		}
	}
	return tg
}

// send writes one-letter commands to the target.
func (tg *target) send(t *testing.T, commands string) {
	t.Helper()
	if _, err := io.WriteString(tg.stdin, commands); err != nil {
		t.Fatalf("send %q to pid %d: %v", commands, tg.PID, err)
	}
}

// counter returns the target's counter, which it prints on request.
func (tg *target) counter(t *testing.T) int {
	t.Helper()
	tg.send(t, "g")
	n, err := strconv.Atoi(tg.Expect("counter "))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func parseHex(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("parse address %q: %v", s, err)
	}
	return v
}

// mapping is one line of a maps file.
type mapping struct {
	start, end uint64
	perms      string
	path       string
	bounds     string // "start-end" as printed
}

func parseMaps(t *testing.T, maps string) []mapping {
	t.Helper()
	var out []mapping
	for _, line := range strings.Split(strings.TrimSpace(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			t.Fatalf("bad maps line %q", line)
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		mp := mapping{start: parseHex(t, lo), end: parseHex(t, hi), perms: fields[1], bounds: fields[0]}
		if len(fields) > 5 {
			mp.path = fields[5]
		}
		out = append(out, mp)
	}
	return out
}

// containing returns the mapping that holds addr.
func containing(t *testing.T, maps []mapping, addr uint64) mapping {
	t.Helper()
	for _, mp := range maps {
		if addr >= mp.start && addr < mp.end {
			return mp
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return mapping{}
}

func identify(t *testing.T, pid int) snapshot.ProcessID {
	t.Helper()
	id, err := engine.Identify(pid)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// wantErrno fails unless err wraps errno.
func wantErrno(t *testing.T, what string, err error, errno unix.Errno) {
	t.Helper()
	if !errors.Is(err, errno) {
		t.Errorf("%s: %v, want %s", what, err, unix.ErrnoName(errno))
	}
}

// keyValues parses "key: value" lines.
func keyValues(text string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if key, value, ok := strings.Cut(line, ": "); ok {
			m[key] = value
		}
	}
	return m
}
