package engine

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// rollBackLines bounds how many lines rollBack reads looking for the drop.
const rollBackLines = 2000

// rollBack reads counter lines through next until one is lower than the
// line before it, which is the first line printed after a rollback, and
// returns it and the line before. last is the line read before the
// restore.
func rollBack(t *testing.T, last []uint64, next func() []uint64) (after, before []uint64) {
	t.Helper()
	after, before, dropped := droppedWithin(last, next, rollBackLines)
	if !dropped {
		t.Fatalf("no value dropped in %d lines after the restore; last %v", rollBackLines, before)
	}
	return after, before
}

// droppedWithin reads up to n lines with next and returns the first that
// has a value below the line before it (last for the first line), that
// line before, and whether one dropped.
func droppedWithin(last []uint64, next func() []uint64, n int) (after, before []uint64, dropped bool) {
	prev := last
	for range n {
		cur := next()
		for i := range cur {
			if cur[i] < prev[i] {
				return cur, prev, true
			}
		}
		prev = cur
	}
	return nil, prev, false
}

func TestRestoreCounter(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "rst_counter"))
	next := func() []uint64 { return numbers(t, p.Expect("count ")) }

	atCapture := next()[0]
	img := captureImage(t, p.PID)
	var last []uint64
	for range 50 {
		last = next()
	}
	restoreImage(t, p, img)

	after, before := rollBack(t, last, next)
	if after[0] < atCapture {
		t.Errorf("count after restore %d, below %d printed before the capture", after[0], atCapture)
	}
	if after[0] >= before[0] {
		t.Errorf("count after restore %d, want below %d", after[0], before[0])
	}
	if later := next()[0]; later <= after[0] {
		t.Errorf("count %d after %d: not counting after restore", later, after[0])
	}
	checkRunning(t, p)
}

func TestRestoreFourThreads(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "rst_threads"))
	next := func() []uint64 { return numbers(t, p.Expect("counts ")) }

	atCapture := next()
	img := captureImage(t, p.PID)
	if len(img.Threads) != 5 {
		t.Fatalf("captured %d threads, want 5", len(img.Threads))
	}
	var last []uint64
	for range 50 {
		last = next()
	}
	restoreImage(t, p, img)

	// Every counter drops below its value before the restore at once.
	after, before := rollBack(t, last, next)
	for i := range after {
		if after[i] >= before[i] || after[i] < atCapture[i] {
			t.Errorf("thread %d count %d after restore, want in [%d, %d)", i, after[i], atCapture[i], before[i])
		}
	}
	first := next()
	for range 20 {
		next()
	}
	later := next()
	for i := range later {
		if later[i] <= first[i] {
			t.Errorf("thread %d count %d, 20 lines later %d: not counting after restore", i, first[i], later[i])
		}
	}
	checkRunning(t, p)
}

// startMemory starts rst_memory and returns it with its ready line.
func startMemory(t *testing.T) (*commanded, map[string]string) {
	p := startCommanded(t, "rst_memory")
	return p, fields(p.Expect("ready "))
}

// checkMemoryRestored checks rst_memory after a restore to its ready state.
func checkMemoryRestored(t *testing.T, p *commanded, ready, changed map[string]string) {
	t.Helper()
	n := parseAddr(t, changed["n"])
	if line := mapsLine(t, p.PID, n); line != "" {
		t.Errorf("region mapped since the snapshot still there: %s", line)
	}
	c := parseAddr(t, ready["c"])
	if line := mapsLine(t, p.PID, c); !strings.Contains(line, " rw-p ") {
		t.Errorf("protected region after restore: %q, want rw-p", line)
	}

	check := fields(p.send(t, "check", "check "))
	if check["brk"] != ready["brk"] {
		t.Errorf("brk after restore %s, want %s", check["brk"], ready["brk"])
	}
	if check["a"] != "ok" || check["b"] != "ok" {
		t.Errorf("contents after restore: rewritten region %s, unmapped region %s; want ok", check["a"], check["b"])
	}
	grown := fields(p.Expect("malloc ok "))
	if parseAddr(t, grown["brk"]) <= parseAddr(t, ready["brk"]) {
		t.Errorf("brk after malloc of 4 MiB %s, want above %s", grown["brk"], ready["brk"])
	}
	checkRunning(t, p.Proc)
}

func TestRestoreLayout(t *testing.T) {
	p, ready := startMemory(t)
	img := captureImage(t, p.PID)

	changed := fields(p.send(t, "change", "changed "))
	if changed["brk"] == ready["brk"] {
		t.Fatalf("brk did not grow: %s", changed["brk"])
	}
	restoreImage(t, p.Proc, img)
	checkMemoryRestored(t, p, ready, changed)
}

func TestRestoreSameSnapshotTwice(t *testing.T) {
	p, ready := startMemory(t)
	img := captureImage(t, p.PID)

	for round := range 2 {
		changed := fields(p.send(t, "change", "changed "))
		restoreImage(t, p.Proc, img)
		t.Logf("round %d", round)
		checkMemoryRestored(t, p, ready, changed)
	}
}

// startFiles writes a 64 KiB data file and starts rst_files on it.
func startFiles(t *testing.T) (*commanded, string, []byte, map[string]string) {
	path := filepath.Join(t.TempDir(), "data")
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCommanded(t, "rst_files", path)
	return p, path, data, fields(p.Expect("ready "))
}

// checkFileRead sends check and expects the file to be read from offset
// 100 again, with descriptor other open or closed as wantOther names.
func checkFileRead(t *testing.T, p *commanded, data []byte, other, wantOther string) {
	t.Helper()
	check := fields(p.send(t, "check "+other, "check "))
	if check["pos"] != "200" {
		t.Errorf("offset after reading 100 bytes past the restore %s, want 200", check["pos"])
	}
	if want := hex.EncodeToString(data[100:200]); check["data"] != want {
		t.Errorf("bytes read after restore %s, want %s", check["data"], want)
	}
	if check["newfd"] != wantOther {
		t.Errorf("fd %s is %s after restore, want %s", other, check["newfd"], wantOther)
	}
	checkRunning(t, p.Proc)
}

func TestRestoreFileOffset(t *testing.T) {
	p, _, data, ready := startFiles(t)
	img := captureImage(t, p.PID)

	p.send(t, "read", "read 100")
	restoreImage(t, p.Proc, img)
	checkFileRead(t, p, data, ready["fd"], "open")
}

func TestRestoreClosedFile(t *testing.T) {
	p, path, data, ready := startFiles(t)
	img := captureImage(t, p.PID)

	p.send(t, "read", "read 100")
	p.send(t, "close", "closed")
	restoreImage(t, p.Proc, img)

	info, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.PID, ready["fd"]))
	if err != nil || info != path {
		t.Errorf("fd %s after restore links to %q (%v), want %s", ready["fd"], info, err, path)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != int64(len(data)) {
		t.Errorf("file after restore: %v, %v; want %d bytes, not truncated", st, err, len(data))
	}
	checkFileRead(t, p, data, ready["fd"], "open")
}

func TestRestoreClosesNewFD(t *testing.T) {
	p, _, data, _ := startFiles(t)
	img := captureImage(t, p.PID)

	opened := strings.TrimSpace(p.send(t, "open", "opened "))
	if _, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.PID, opened)); err != nil {
		t.Fatalf("fd %s opened since capture: %v", opened, err)
	}
	restoreImage(t, p.Proc, img)
	checkFileRead(t, p, data, opened, "closed")
}

func TestRestoreRejectsClosedPipe(t *testing.T) {
	p, _, _, ready := startFiles(t)
	img := captureImage(t, p.PID)

	p.send(t, "read", "read 100")
	p.send(t, "closepipe", "pipe closed")
	_, err := Restore(p.PID, img, imageMemory{img}, nil, testLogger(t))

	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("restore after the pipe closed: %v, want an EOPNOTSUPP RejectError", err)
	}
	if want := "fd " + ready["pipe"] + " "; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	checkRunning(t, p.Proc)
	if got := p.send(t, "ping", "pong"); got != "" {
		t.Errorf("ping after rejected restore: %q", got)
	}
	// Untouched: the offset stays where the read after the capture left it.
	check := fields(p.send(t, "check 0", "check "))
	if check["pos"] != "300" {
		t.Errorf("offset after rejected restore and a read %s, want 300", check["pos"])
	}
}

func TestRestoreRejectsChanged(t *testing.T) {
	cases := []struct {
		name   string
		change func(img *snapshot.Image)
		errno  unix.Errno
		names  string
	}{
		{"other start time", func(img *snapshot.Image) { img.Process.StartTime++ }, unix.ESRCH, "not the process of the snapshot"},
		{"exec since", func(img *snapshot.Image) { img.ExeIno++ }, unix.EOPNOTSUPP, "ran another program"},
		{"same program run anew", func(img *snapshot.Image) { img.ExecID = strings.Repeat("0", 32) }, unix.EOPNOTSUPP, "called execve"},
		{"xcr0", func(img *snapshot.Image) { img.XCR0 ^= 1 << 2 }, unix.EOPNOTSUPP, "XCR0"},
		{"thread gone", func(img *snapshot.Image) {
			img.Threads = append(img.Threads, snapshot.Thread{TID: 1 << 30})
		}, unix.EOPNOTSUPP, fmt.Sprintf("threads ended since: [%d]", 1<<30)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := testproc.Start(t, testproc.Build(t, "rst_counter"))
			next := func() uint64 { return numbers(t, p.Expect("count "))[0] }
			next()
			img := captureImage(t, p.PID)
			c.change(img)

			_, err := Restore(p.PID, img, imageMemory{img}, nil, testLogger(t))
			var rej *RejectError
			if !errors.As(err, &rej) || !errors.Is(err, c.errno) || !strings.Contains(err.Error(), c.names) {
				t.Fatalf("restore: %v, want a %v RejectError containing %q", err, c.errno, c.names)
			}
			checkRunning(t, p)
			if first, later := next(), next(); later <= first {
				t.Errorf("count %d then %d after a rejected restore: not counting on", first, later)
			}
		})
	}
}

// syscallOf returns the system call number tid is blocked in, or -1.
func syscallOf(t *testing.T, pid int, tid string) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, tid))
	if err != nil {
		t.Fatal(err)
	}
	nr, err := strconv.Atoi(strings.Fields(string(data))[0])
	if err != nil {
		return -1
	}
	return nr
}

// waitSyscall waits until tid of pid blocks in system call nr.
func waitSyscall(t *testing.T, pid int, tid string, nr int) {
	t.Helper()
	for range 5000 {
		if syscallOf(t, pid, tid) == nr {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatalf("tid %s never blocked in system call %d (now %d)", tid, nr, syscallOf(t, pid, tid))
}

func TestRestoreBlockedCalls(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCommanded(t, "rst_blocked", fifo)
	tids := strings.Fields(p.Expect("ready "))
	waitSyscall(t, p.PID, tids[0], unix.SYS_CLOCK_NANOSLEEP)
	waitSyscall(t, p.PID, tids[1], unix.SYS_READ)

	img := captureImage(t, p.PID)
	restoreImage(t, p.Proc, img)

	if got := p.send(t, "status", "status "); got != "sleeper=sleeping reader=waiting" {
		t.Fatalf("after restore: %s, want sleeper=sleeping reader=waiting", got)
	}
	waitSyscall(t, p.PID, tids[0], unix.SYS_CLOCK_NANOSLEEP)
	waitSyscall(t, p.PID, tids[1], unix.SYS_READ)

	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	if got := p.Expect("fifo "); got != "read 5 hello" {
		t.Errorf("reader after restore: fifo %s, want fifo read 5 hello", got)
	}
	if got := p.send(t, "status", "status "); got != "sleeper=sleeping reader=returned" {
		t.Errorf("after the write: %s, want sleeper=sleeping reader=returned", got)
	}
	checkRunning(t, p.Proc)
}

func TestRestoreXstate(t *testing.T) {
	p := startCommanded(t, "rst_xstate")
	p.Expect("ready")
	img := captureImage(t, p.PID)

	if got := p.send(t, "bump", "gen "); got != "2" {
		t.Fatalf("bump after capture: gen %s, want 2", got)
	}
	restoreImage(t, p.Proc, img)

	if got := p.send(t, "report", "report "); got != "gen=1 mismatch=0 spinning=yes" {
		t.Fatalf("after restore: %s, want gen=1 mismatch=0 spinning=yes", got)
	}
	if got := p.send(t, "bump", "gen "); got != "2" {
		t.Errorf("bump after restore: gen %s, want 2", got)
	}
	if got := p.send(t, "report", "report "); got != "gen=2 mismatch=0 spinning=yes" {
		t.Errorf("after bump: %s, want gen=2 mismatch=0 spinning=yes", got)
	}
	checkRunning(t, p.Proc)
}

func TestRestoreSignals(t *testing.T) {
	p := startCommanded(t, "rst_signals")
	p.Expect("ready")
	img := captureImage(t, p.PID)

	p.send(t, "change", "changed")
	restoreImage(t, p.Proc, img)

	want := "handler=1 usr2=blocked hup=open altstack=set"
	if got := p.send(t, "check", "check "); got != want {
		t.Errorf("signal state after restore: %s, want %s", got, want)
	}
	checkRunning(t, p.Proc)
}

// pythonList appends to a list and prints its length and whether its sum
// is right, every 10 ms.
const pythonList = `
import time
l = []
while True:
    l.append(len(l))
    n = len(l)
    print("len", n, "ok" if sum(l) == n * (n - 1) // 2 else "bad", flush=True)
    time.sleep(0.01)
`

func TestRestorePython(t *testing.T) {
	p := testproc.Start(t, "/usr/bin/python3", "-c", pythonList)
	next := func() []uint64 {
		line := p.Expect("len ")
		n, ok := strings.CutSuffix(line, " ok")
		if !ok {
			t.Fatalf("python reports a wrong list: len %s", line)
		}
		return numbers(t, n)
	}

	atCapture := next()[0]
	img := captureImage(t, p.PID)
	last := next()
	for last[0] < atCapture+30 {
		last = next()
	}
	restoreImage(t, p, img)

	after, before := rollBack(t, last, next)
	if after[0] < atCapture || after[0] >= before[0] {
		t.Errorf("len after restore %d, want in [%d, %d)", after[0], atCapture, before[0])
	}
	for want := after[0] + 1; want < after[0]+5; want++ {
		if got := next()[0]; got != want {
			t.Fatalf("len %d after restore, want %d", got, want)
		}
	}
	checkRunning(t, p)
}

// TestRestoreKeepsSnapshot checks that a restore leaves the image as it
// was, so that it can restore again.
func TestRestoreKeepsSnapshot(t *testing.T) {
	p, _ := startMemory(t)
	img := captureImage(t, p.PID)
	var before bytes.Buffer
	for _, r := range img.Regions {
		for _, run := range r.Runs {
			before.Write(run.Data)
		}
	}

	p.send(t, "change", "changed ")
	restoreImage(t, p.Proc, img)

	var after bytes.Buffer
	for _, r := range img.Regions {
		for _, run := range r.Runs {
			after.Write(run.Data)
		}
	}
	if !bytes.Equal(before.Bytes(), after.Bytes()) {
		t.Errorf("restore changed the saved memory of the image")
	}
}

// failingMemory reads like imageMemory but fails for reads at one offset
// of one region.
type failingMemory struct {
	imageMemory
	region int
	off    uint64
}

var errInjected = errors.New("injected read failure")

func (m failingMemory) ReadRegion(i int, p []byte, off uint64) error {
	if i == m.region && off == m.off {
		return errInjected
	}
	return m.imageMemory.ReadRegion(i, p, off)
}

// TestRestoreUndoesFailure makes the restore fail after the layout,
// descriptors, signal actions and part of the memory changed, and checks
// that the process is back as it was before the restore.
func TestRestoreUndoesFailure(t *testing.T) {
	p, ready := startMemory(t)
	img := captureImage(t, p.PID)
	changed := fields(p.send(t, "change", "changed "))

	a, b := parseAddr(t, ready["a"]), parseAddr(t, ready["b"])
	// B is read only when its re-created pages are filled, after every
	// injected change.
	region, off := -1, uint64(0)
	for i, r := range img.Regions {
		if r.Start <= b && b < r.End {
			region, off = i, b-r.Start
		}
	}
	mapsBefore, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.PID))
	if err != nil {
		t.Fatal(err)
	}

	_, err = Restore(p.PID, img, failingMemory{imageMemory{img}, region, off}, nil, testLogger(t))
	if !errors.Is(err, errInjected) {
		t.Fatalf("restore with a failing reader: %v, want the reader's error", err)
	}
	checkRunning(t, p.Proc)

	if !strings.Contains(err.Error(), "undo") && !strings.Contains(err.Error(), "restore memory contents") {
		t.Errorf("restore failed at %v, want it to fail while writing memory contents", err)
	}
	mapsAfter, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mapsBefore, mapsAfter) {
		t.Errorf("maps after the failed restore:\n%s\nwant as before:\n%s", mapsAfter, mapsBefore)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	buf := make([]byte, 8*4096)
	if _, err := mem.ReadAt(buf, int64(a)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{'Z'}, len(buf))) {
		t.Errorf("region rewritten after capture does not hold its new bytes after the failed restore")
	}
	if got := p.send(t, "ping", "pong"); got != "" {
		t.Errorf("ping after the failed restore: %q", got)
	}

	// The snapshot still restores fully afterwards.
	restoreImage(t, p.Proc, img)
	checkMemoryRestored(t, p, ready, changed)
}

// waitProcState waits until p's state letter is want.
func waitProcState(t *testing.T, p *testproc.Proc, want string) {
	t.Helper()
	for range 5000 {
		if p.State() == want {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatalf("pid %d in state %q, want %q", p.PID, p.State(), want)
}

func TestRestoreJobStop(t *testing.T) {
	t.Run("running at capture", func(t *testing.T) {
		p := testproc.Start(t, testproc.Build(t, "rst_counter"))
		p.Expect("count ")
		img := captureImage(t, p.PID)
		if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		waitProcState(t, p, "T")

		restoreImage(t, p, img)
		p.Drain()
		if first, later := p.Expect("count "), p.Expect("count "); first == later {
			t.Errorf("count %s then %s: not counting after restore", first, later)
		}
	})

	t.Run("stopped at capture", func(t *testing.T) {
		p := testproc.Start(t, testproc.Build(t, "rst_counter"))
		p.Expect("count ")
		if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		waitProcState(t, p, "T")
		img := captureImage(t, p.PID)
		if !img.JobStopped {
			t.Fatalf("image of a stopped process not marked job-stopped")
		}
		if err := unix.Kill(p.PID, unix.SIGCONT); err != nil {
			t.Fatal(err)
		}
		p.Expect("count ")

		if _, err := Restore(p.PID, img, imageMemory{img}, nil, testLogger(t)); err != nil {
			t.Fatalf("restore: %v", err)
		}
		waitProcState(t, p, "T")
		if err := unix.Kill(p.PID, unix.SIGCONT); err != nil {
			t.Fatal(err)
		}
		p.Drain()
		p.Expect("count ")
		checkRunning(t, p)
	})
}

func TestRestoreAfterExecutableReplaced(t *testing.T) {
	for _, parts := range [][]string{nil, {"memory"}} {
		t.Run(fmt.Sprint(parts), func(t *testing.T) {
			// A private copy of the program, replaced on disk as a compiler
			// or package manager replaces it: maps then shows it "(deleted)".
			bin := filepath.Join(t.TempDir(), "cap_counter")
			copyFile(t, testproc.Build(t, "cap_counter"), bin)
			p := testproc.Start(t, bin)
			next := func() []uint64 { return numbers(t, p.Expect("count ")) }

			atCapture := next()[0]
			img := captureImage(t, p.PID)
			var last []uint64
			for range 30 {
				last = next()
			}
			copyFile(t, bin, bin+".new")
			if err := os.Rename(bin+".new", bin); err != nil {
				t.Fatal(err)
			}

			// A memory-only restore leaves the registers, so a thread
			// frozen between loading the counter and storing it back
			// overwrites the restored value. The restore is then tried
			// again.
			var after, before []uint64
			for attempt := 1; ; attempt++ {
				if _, err := Restore(p.PID, img, imageMemory{img}, parts, testLogger(t)); err != nil {
					t.Fatalf("restore %v after the executable was replaced: %v", parts, err)
				}
				var dropped bool
				after, before, dropped = droppedWithin(last, next, 100)
				if dropped || parts == nil || attempt == 3 {
					if !dropped {
						t.Fatalf("restore %v: no value dropped in 100 lines after %d restores; last %v", parts, attempt, before)
					}
					break
				}
				last = before
			}
			if after[0] < atCapture || after[0] >= before[0] {
				t.Errorf("count after restore %d, want between %d and %d", after[0], atCapture, before[0])
			}
			checkRunning(t, p)
		})
	}
}

// copyFile copies the executable src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRejectsOwnUserfaultfd(t *testing.T) {
	p := startCommanded(t, "rst_uffd")
	addr := parseHex(t, strings.TrimPrefix(p.Expect("ready "), "0x"))
	img, mem, err := CaptureCOW(p.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	saved := materialize(t, img, mem)
	p.send(t, "z", "dropped")

	// Writing page 5 back would fault into the process's own handler,
	// which cannot run while the process is frozen.
	_, err = Restore(p.PID, saved, imageMemory{saved}, nil, testLogger(t))
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("restore = %v, want an EOPNOTSUPP RejectError", err)
	}
	if line := mapsLine(t, p.PID, addr); !strings.Contains(err.Error(), strings.Fields(line)[0]) || !strings.Contains(err.Error(), "userfaultfd") {
		t.Errorf("error %q does not name the mapping %s and its userfaultfd", err, strings.Fields(line)[0])
	}
	p.send(t, "p", "pong")
	checkRunning(t, p.Proc)
}

// TestOpenCheckedDoesNotWaitForFIFO opens a FIFO that has no writer in the
// target, as a restore that reopens a path replaced by one since its
// check would: the open must return at once, with the file's own flags.
func TestOpenCheckedDoesNotWaitForFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(fifo, &st); err != nil {
		t.Fatal(err)
	}
	p := testproc.Start(t, testproc.Build(t, "rst_counter"))
	p.Expect("count ")

	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	var flags string
	err = op.do(func() error {
		if err := op.waitStops(); err != nil {
			return err
		}
		fd, err := op.openChecked(fifo, unix.O_RDONLY, st.Dev, st.Ino)
		if err != nil {
			return err
		}
		defer op.closeInTarget(fd)
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", p.PID, fd))
		flags = string(info)
		return err
	})
	if err != nil {
		t.Fatalf("open FIFO without a writer in pid %d: %v", p.PID, err)
	}
	var got uint64
	for _, line := range strings.Split(flags, "\n") {
		if rest, ok := strings.CutPrefix(line, "flags:"); ok {
			got, _ = strconv.ParseUint(strings.TrimSpace(rest), 8, 64)
		}
	}
	if got&unix.O_NONBLOCK != 0 {
		t.Errorf("FIFO opened with flags %#o, want O_NONBLOCK cleared again", got)
	}
}

// expectQuiet sends p to rst_waits and fails on any line before "pong":
// a wait that returned.
func expectQuiet(t *testing.T, p *commanded, when string) {
	t.Helper()
	if _, err := io.WriteString(p.in, "p"); err != nil {
		t.Fatal(err)
	}
	for line := p.Line(); line != "pong"; line = p.Line() {
		t.Errorf("%s: a wait returned: %q", when, line)
	}
}

func TestFreezeKeepsInfiniteWaits(t *testing.T) {
	p := startCommanded(t, "rst_waits")
	p.Expect("ready")
	time.Sleep(50 * time.Millisecond) // both threads reach their waits

	img := captureImage(t, p.PID)
	_, mem, err := CaptureCOW(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("copy-on-write capture: %v", err)
	}
	if err := mem.Close(); err != nil {
		t.Fatalf("end the copy-on-write clone: %v", err)
	}
	expectQuiet(t, p, "after two captures")

	restoreImage(t, p.Proc, img)
	expectQuiet(t, p, "after a restore")

	for _, c := range []struct{ command, reply string }{{"e", "epoll 1"}, {"s", "sigwait 10"}} {
		if _, err := io.WriteString(p.in, c.command); err != nil {
			t.Fatal(err)
		}
		if got := p.Line(); got != c.reply {
			t.Errorf("after %q: %q, want %q", c.command, got, c.reply)
		}
	}
}
