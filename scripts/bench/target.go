package main

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
	"syscall"
	"time"
)

// pageSize is the page size of x86-64, the unit the targets dirty memory in.
const pageSize = 4096

// replyTimeout bounds how long the bench waits for a target's reply. Filling
// 1 GiB on a cold VM takes a few seconds.
const replyTimeout = 60 * time.Second

// targetSource returns the path of testdata/targets/NAME.c, found from this
// file's location so `go run ./scripts/bench` works from any directory of
// the repository.
func targetSource(name string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		src := filepath.Join(filepath.Dir(file), "..", "..", "testdata", "targets", name+".c")
		if _, err := os.Stat(src); err == nil {
			return src, nil
		}
	}
	src := filepath.Join("testdata", "targets", name+".c")
	if _, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("find source of target %s (run from the repository root): %w", name, err)
	}
	return src, nil
}

// buildTarget compiles testdata/targets/NAME.c into dir and returns the
// executable's path.
func buildTarget(dir, name string) (string, error) {
	src, err := targetSource(name)
	if err != nil {
		return "", err
	}

	bin := filepath.Join(dir, name)
	out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("gcc %s: %w\n%s", src, err, out)
	}
	return bin, nil
}

// memTarget is a running bench_mem process, driven over its stdin.
type memTarget struct {
	cmd   *exec.Cmd
	pid   int
	addr  uint64 // start of the filled buffer in the target
	len   uint64 // its length in bytes
	stdin io.WriteCloser
	lines chan string
	kill  func()
}

// dirtied is the set of pages one dirty command rewrote: page indexes
// first, first+stride, ... (count of them) inside the buffer.
type dirtied struct {
	count, first, stride uint64
}

// startMemTarget starts bin with a buffer of sizeMiB, registers its kill,
// and waits until the buffer is filled.
func startMemTarget(bin string, sizeMiB int) (*memTarget, error) {
	cmd := exec.Command(bin, strconv.Itoa(sizeMiB))
	// The target gets a pipe, not the bench's stderr. A rollback restores
	// the offset of every open file, and an inherited stderr shares its
	// offset with the bench, whose later lines would overwrite earlier ones.
	cmd.Stderr = stderrForwarder{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe of %s: %w", bin, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe of %s: %w", bin, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}

	t := &memTarget{cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, lines: make(chan string, 16)}
	t.kill = cleanup.add(func() { killChild(cmd) })
	go readLines(stdout, t.lines)

	if err := t.parseReady(); err != nil {
		t.kill()
		return nil, err
	}
	return t, nil
}

func (t *memTarget) parseReady() error {
	line, err := t.reply("ready ")
	if err != nil {
		return err
	}

	var addr, length uint64
	if _, err := fmt.Sscanf(line, "%x %d", &addr, &length); err != nil {
		return fmt.Errorf("parse ready line %q of pid %d: %w", line, t.pid, err)
	}
	t.addr, t.len = addr, length
	return nil
}

// stderrForwarder copies a target's stderr to the bench's. It is not an
// *os.File, so exec gives the target a pipe.
type stderrForwarder struct{}

func (stderrForwarder) Write(p []byte) (int, error) { return os.Stderr.Write(p) }

// killChild sends SIGKILL to a child the bench started and reaps it.
func killChild(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

func readLines(r io.Reader, lines chan<- string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		lines <- sc.Text()
	}
	close(lines)
}

// reply waits for the next line, which must start with prefix, and returns
// the rest of it.
func (t *memTarget) reply(prefix string) (string, error) {
	select {
	case line, ok := <-t.lines:
		if !ok {
			return "", fmt.Errorf("target pid %d closed its output", t.pid)
		}
		rest, found := strings.CutPrefix(line, prefix)
		if !found {
			return "", fmt.Errorf("target pid %d replied %q, expected %q", t.pid, line, prefix)
		}
		return rest, nil
	case <-time.After(replyTimeout):
		return "", fmt.Errorf("target pid %d: no reply within %v", t.pid, replyTimeout)
	}
}

func (t *memTarget) send(cmd string) error {
	if _, err := io.WriteString(t.stdin, cmd+"\n"); err != nil {
		return fmt.Errorf("send %q to pid %d: %w", cmd, t.pid, err)
	}
	return nil
}

// dirty rewrites 1% of the pages (all=false) or every page.
func (t *memTarget) dirty(all bool) (dirtied, error) {
	cmd := "d1"
	if all {
		cmd = "da"
	}
	if err := t.send(cmd); err != nil {
		return dirtied{}, err
	}

	line, err := t.reply("dirtied ")
	if err != nil {
		return dirtied{}, err
	}
	var d dirtied
	if _, err := fmt.Sscanf(line, "%d %d %d", &d.count, &d.first, &d.stride); err != nil {
		return dirtied{}, fmt.Errorf("parse dirtied line %q of pid %d: %w", line, t.pid, err)
	}
	return d, nil
}

// sum returns the target's hash of its whole buffer.
func (t *memTarget) sum() (string, error) {
	if err := t.send("sum"); err != nil {
		return "", err
	}
	return t.reply("sum ")
}

// pages returns the remote ranges of the dirtied pages.
func (t *memTarget) pages(d dirtied) []span {
	spans := make([]span, 0, d.count)
	for i := uint64(0); i < d.count; i++ {
		spans = append(spans, span{addr: t.addr + (d.first+i*d.stride)*pageSize, len: pageSize})
	}
	return spans
}

// whole returns the buffer as one remote range.
func (t *memTarget) whole() []span {
	return []span{{addr: t.addr, len: t.len}}
}

// startSleep starts `sleep 1000` as the idle target and registers its kill.
// It returns the pid and a function that kills it.
func startSleep() (int, func(), error) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start sleep: %w", err)
	}
	kill := cleanup.add(func() { killChild(cmd) })

	// Wait until sleep blocks in clock_nanosleep (230) or nanosleep (35).
	// The comm changes in the middle of execve, so a capture started when
	// it reads "sleep" can still see the exec.
	deadline := time.Now().Add(replyTimeout)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", cmd.Process.Pid))
		nr, _, _ := strings.Cut(string(data), " ")
		if err == nil && (nr == "230" || nr == "35") {
			return cmd.Process.Pid, kill, nil
		}
		time.Sleep(time.Millisecond)
	}
	kill()
	return 0, nil, errors.New("sleep 1000 did not start")
}
