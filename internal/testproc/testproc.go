// Package testproc builds the C test targets under testdata/targets and runs
// them as child processes of the test, so that every test acts only on
// processes it started itself. Each started process is killed by pid and
// reaped when the test ends, whether it passed or not.
package testproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// LineTimeout bounds how long Line waits for a target to print.
const LineTimeout = 20 * time.Second

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// Root returns the repository's top directory.
func Root() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("testproc: cannot find own source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Build compiles testdata/targets/NAME.c with gcc once per test binary and
// returns the path of the executable.
func Build(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()

	if bin, ok := built[name]; ok {
		return bin
	}
	if buildDir == "" {
		dir, err := os.MkdirTemp("", "ckptfs-targets-")
		if err != nil {
			t.Fatalf("create build directory: %v", err)
		}
		buildDir = dir
	}

	src := filepath.Join(Root(), "testdata", "targets", name+".c")
	bin := filepath.Join(buildDir, name)
	cmd := exec.Command("gcc", "-O1", "-g", "-pthread", "-o", bin, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, out)
	}
	built[name] = bin
	return bin
}

// Proc is a running test target.
type Proc struct {
	Cmd *exec.Cmd
	PID int

	t     testing.TB
	lines chan string
	done  chan struct{}
	err   error // set once done is closed
}

// Start runs bin with args, its stdout read line by line through Line, and
// registers a cleanup that kills and reaps it.
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartCmd(t, exec.Command(bin, args...))
}

// StartCmd is Start for a prepared command; its Stdout must be unset.
func StartCmd(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe for %s: %v", cmd.Path, err)
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}

	p := &Proc{Cmd: cmd, PID: cmd.Process.Pid, t: t, lines: make(chan string, 1024), done: make(chan struct{})}
	go p.readLines(stdout)
	t.Cleanup(p.Kill)
	return p
}

func (p *Proc) readLines(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		p.lines <- sc.Text()
	}
	close(p.lines)
	p.err = p.Cmd.Wait()
	close(p.done)
}

// Line returns the next line the process printed, failing the test when
// none comes within LineTimeout.
func (p *Proc) Line() string {
	p.t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("pid %d closed its output", p.PID)
		}
		return line
	case <-time.After(LineTimeout):
		p.t.Fatalf("pid %d printed nothing for %v", p.PID, LineTimeout)
	}
	return ""
}

// Expect reads lines until one starts with prefix and returns the rest of it.
func (p *Proc) Expect(prefix string) string {
	p.t.Helper()
	for {
		line := p.Line()
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
}

// Drain discards every line printed so far.
func (p *Proc) Drain() {
	for {
		select {
		case _, ok := <-p.lines:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// State returns the state letter of /proc/PID/stat (R, S, T, t, Z, ...).
func (p *Proc) State() string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// Kill sends SIGKILL to the process and waits until it is reaped. Once it
// was reaped, Kill sends nothing, because its pid may belong to another
// process by then.
func (p *Proc) Kill() {
	if !p.Alive() {
		return
	}
	_ = p.Cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("pid %d did not exit after SIGKILL", p.PID)
	}
}

// Children returns the children of every thread of process pid: a child
// belongs to the thread that forked it, or that adopted it as a
// subreaper.
func Children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var children []int
	for _, task := range tasks {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return nil, err
		}
		for _, field := range strings.Fields(string(raw)) {
			child, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("parse children of pid %d: %w", pid, err)
			}
			children = append(children, child)
		}
	}
	return children, nil
}
