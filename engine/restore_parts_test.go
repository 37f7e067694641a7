package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// restorePartsOf restores the named parts of img into p, failing the test on
// error.
func restorePartsOf(t *testing.T, p *commanded, img *snapshot.Image, parts ...string) *RestoreReport {
	t.Helper()
	report, err := Restore(p.PID, img, imageMemory{img}, parts, testLogger(t))
	if err != nil {
		t.Fatalf("restore %v of pid %d: %v", parts, p.PID, err)
	}
	checkRunning(t, p.Proc)
	return report
}

// readTarget reads n bytes of p's memory at addr.
func readTarget(t *testing.T, pid int, addr uint64, n int) []byte {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		t.Fatalf("read memory of pid %d at %#x: %v", pid, addr, err)
	}
	return buf
}

// filledPages returns the contents rst_memory gives a region filled with
// fill: each page holds fill plus its index.
func filledPages(fill byte) []byte {
	var out []byte
	for i := range 8 {
		out = append(out, bytes.Repeat([]byte{fill + byte(i)}, 4096)...)
	}
	return out
}

// checkLayoutKept checks that the layout changes rst_memory made after the
// capture are still there.
func checkLayoutKept(t *testing.T, p *commanded, ready, changed map[string]string) {
	t.Helper()
	if line := mapsLine(t, p.PID, parseAddr(t, changed["n"])); line == "" {
		t.Errorf("region mapped since the snapshot is gone after a restore without layout")
	}
	if line := mapsLine(t, p.PID, parseAddr(t, ready["b"])); line != "" {
		t.Errorf("region unmapped since the snapshot is back after a restore without layout: %s", line)
	}
	if line := mapsLine(t, p.PID, parseAddr(t, ready["c"])); !strings.Contains(line, " r--p ") {
		t.Errorf("protected region after a restore without layout: %q, want r--p", line)
	}
}

// startSteadyMemory starts rst_memory and waits until it has read one
// command and blocks reading the next. Restoring memory alone leaves the
// thread's stack and registers as they are, so it is consistent only when
// the thread is at the same point of its stdio calls at capture and at
// restore: blocked in read(2) with stdin's buffer allocated and empty.
func startSteadyMemory(t *testing.T) (*commanded, map[string]string) {
	p, ready := startMemory(t)
	p.send(t, "ping", "pong")
	waitSyscall(t, p.PID, strconv.Itoa(p.PID), unix.SYS_READ)
	return p, ready
}

// changeSteadyMemory sends change and waits until rst_memory blocks
// reading the next command.
func changeSteadyMemory(t *testing.T, p *commanded) map[string]string {
	changed := fields(p.send(t, "change", "changed "))
	waitSyscall(t, p.PID, strconv.Itoa(p.PID), unix.SYS_READ)
	return changed
}

func TestRestorePartMemory(t *testing.T) {
	p, ready := startSteadyMemory(t)
	img := captureImage(t, p.PID)
	changed := changeSteadyMemory(t, p)

	report := restorePartsOf(t, p, img, "memory")
	a := parseAddr(t, ready["a"])
	if !bytes.Equal(readTarget(t, p.PID, a, 8*4096), filledPages('A')) {
		t.Errorf("region rewritten after capture does not hold its saved bytes after restoring memory")
	}
	checkLayoutKept(t, p, ready, changed)
	if !strings.Contains(strings.Join(report.LeftAlone, "\n"), "layout") {
		t.Errorf("report left alone %q, want the layout listed", report.LeftAlone)
	}
	if got := p.send(t, "ping", "pong"); got != "" {
		t.Errorf("ping after restoring memory: %q", got)
	}
}

func TestRestorePartRegion(t *testing.T) {
	p, ready := startSteadyMemory(t)
	img := captureImage(t, p.PID)
	changed := changeSteadyMemory(t, p)

	a := parseAddr(t, ready["a"])
	restorePartsOf(t, p, img, fmt.Sprintf("%x-%x", a, a+8*4096))
	if !bytes.Equal(readTarget(t, p.PID, a, 8*4096), filledPages('A')) {
		t.Errorf("named region does not hold its saved bytes after restoring it")
	}
	checkLayoutKept(t, p, ready, changed)
}

func TestRestorePartFDs(t *testing.T) {
	p, _, data, ready := startFiles(t)
	img := captureImage(t, p.PID)

	p.send(t, "read", "read 100")
	opened := strings.TrimSpace(p.send(t, "open", "opened "))
	restorePartsOf(t, p, img, "fds")
	checkFileRead(t, p, data, opened, "closed")
	if ready["fd"] == opened {
		t.Fatalf("new fd %s reuses the file's number", opened)
	}
}

func TestRestorePartUnknown(t *testing.T) {
	p, _ := startMemory(t)
	img := captureImage(t, p.PID)

	_, err := Restore(p.PID, img, imageMemory{img}, []string{"bogus"}, testLogger(t))
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("restore of part bogus: %v, want an EINVAL RejectError naming it", err)
	}
	checkRunning(t, p.Proc)
	if got := p.send(t, "ping", "pong"); got != "" {
		t.Errorf("ping after a rejected restore: %q", got)
	}
}

// counters are the three counters of part_counters.
type counters struct{ heap, global, loop uint64 }

// counterTarget is a running part_counters with the addresses it printed.
type counterTarget struct {
	*commanded
	heap, global, loop, r uint64
}

// startCounters starts part_counters and waits for its first tick.
func startCounters(t *testing.T) *counterTarget {
	t.Helper()
	p := startCommanded(t, "part_counters")
	ready := fields(p.Expect("ready "))
	c := &counterTarget{commanded: p, heap: parseAddr(t, ready["heap"]), global: parseAddr(t, ready["global"]),
		loop: parseAddr(t, ready["loop"]), r: parseAddr(t, ready["r"])}
	if line := mapsLine(t, p.PID, c.heap); !strings.HasSuffix(line, "[heap]") {
		t.Fatalf("heap counter at %#x lies in %q, want [heap]", c.heap, line)
	}
	p.Expect("tick ")
	return c
}

// read reads the counters from the memory of the process.
func (c *counterTarget) read(t *testing.T) counters {
	t.Helper()
	word := func(addr uint64) uint64 { return binary.LittleEndian.Uint64(readTarget(t, c.PID, addr, 8)) }
	return counters{heap: word(c.heap), global: word(c.global), loop: word(c.loop)}
}

// saved returns the counters saved in img.
func (c *counterTarget) saved(t *testing.T, img *snapshot.Image) counters {
	t.Helper()
	word := func(addr uint64) uint64 { return binary.LittleEndian.Uint64(savedBytes(t, img, addr, 8)) }
	return counters{heap: word(c.heap), global: word(c.global), loop: word(c.loop)}
}

// tick reads tick lines until one shows a loop count above loop, and
// returns its counters: a line printed after the counters showed loop.
func (c *counterTarget) tick(t *testing.T, loop uint64) counters {
	t.Helper()
	for {
		f := fields(c.Expect("tick "))
		got := counters{heap: parseUint(t, f["heap"]), global: parseUint(t, f["global"]), loop: parseUint(t, f["loop"])}
		if got.loop > loop {
			return got
		}
	}
}

// riseAndSettle waits until the heap counter is 100 ticks past saved, then
// until the thread blocks in poll between two ticks, and returns the
// counters then.
func (c *counterTarget) riseAndSettle(t *testing.T, saved counters) counters {
	t.Helper()
	for c.tick(t, 0).heap < saved.heap+100 {
	}
	waitSyscall(t, c.PID, strconv.Itoa(c.PID), unix.SYS_POLL)
	return c.read(t)
}

// checkRolledBack checks that a counter read after a restore is back near
// its saved value: not below it, and below its value just before.
func checkRolledBack(t *testing.T, name string, saved, before, after uint64) {
	t.Helper()
	if after < saved || after >= before {
		t.Errorf("%s counter after restore is %d, want rolled back to about %d (it was %d before)", name, after, saved, before)
	}
}

// checkKept checks that a counter a restore leaves alone did not drop.
func checkKept(t *testing.T, name string, before, after uint64) {
	t.Helper()
	if after < before {
		t.Errorf("%s counter dropped from %d to %d, want it left alone", name, before, after)
	}
}

// checkRising checks that the counters go on rising after a restore that
// left them at after.
func (c *counterTarget) checkRising(t *testing.T, after counters) {
	t.Helper()
	next := c.tick(t, after.loop)
	if next.heap <= after.heap || next.global <= after.global {
		t.Errorf("counters after restore %+v, next tick %+v: want them rising", after, next)
	}
}

// parseUint parses a decimal counter a target printed.
func parseUint(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("parse counter %q: %v", s, err)
	}
	return v
}

func TestRestorePartHeapOnly(t *testing.T) {
	c := startCounters(t)
	img := captureImage(t, c.PID)
	saved := c.saved(t, img)
	before := c.riseAndSettle(t, saved)

	restorePartsOf(t, c.commanded, img, "[heap]")
	after := c.read(t)
	checkRolledBack(t, "heap", saved.heap, before.heap, after.heap)
	checkKept(t, "global", before.global, after.global)
	checkKept(t, "loop", before.loop, after.loop)
	c.checkRising(t, after)
}

func TestRestorePartMemoryNoJump(t *testing.T) {
	c := startCounters(t)
	img := captureImage(t, c.PID)
	saved := c.saved(t, img)
	before := c.riseAndSettle(t, saved)

	restorePartsOf(t, c.commanded, img, "memory")
	after := c.read(t)
	checkRolledBack(t, "heap", saved.heap, before.heap, after.heap)
	checkRolledBack(t, "global", saved.global, before.global, after.global)
	checkKept(t, "loop (on the stack)", before.loop, after.loop)
	c.checkRising(t, after)
}

func TestRestorePartHeapAndFDs(t *testing.T) {
	c := startCounters(t)
	img := captureImage(t, c.PID)
	saved := c.saved(t, img)
	fd := c.send(t, "open", "opened ")
	before := c.riseAndSettle(t, saved)

	restorePartsOf(t, c.commanded, img, "[heap]", "fds")
	after := c.read(t)
	checkRolledBack(t, "heap", saved.heap, before.heap, after.heap)
	checkKept(t, "global", before.global, after.global)
	if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", c.PID, fd)); err == nil {
		t.Errorf("fd %s opened after the snapshot is still open (%s) after restoring fds", fd, target)
	}
	c.checkRising(t, after)
}

func TestRestorePartLayoutAndMemory(t *testing.T) {
	c := startCounters(t)
	img := captureImage(t, c.PID)
	saved := c.saved(t, img)
	n := parseAddr(t, fields(c.send(t, "map", "mapped "))["n"])
	c.send(t, "unmap", "unmapped")
	before := c.riseAndSettle(t, saved)

	restorePartsOf(t, c.commanded, img, "layout", "memory")
	after := c.read(t)
	checkRolledBack(t, "heap", saved.heap, before.heap, after.heap)
	checkRolledBack(t, "global", saved.global, before.global, after.global)
	checkKept(t, "loop (on the stack)", before.loop, after.loop)
	if line := mapsLine(t, c.PID, n); line != "" {
		t.Errorf("region mapped after the snapshot is still there after restoring layout: %s", line)
	}
	if !bytes.Equal(readTarget(t, c.PID, c.r, 8*4096), filledPages('R')) {
		t.Errorf("region unmapped after the snapshot does not hold its saved bytes after restoring layout and memory")
	}
	c.checkRising(t, after)
}

// checkRejected checks that restoring parts of img into c is a RejectError
// with errno, and that c runs on untouched: counters not rolled back, fd
// still open, n still mapped and R still unmapped.
func (c *counterTarget) checkRejected(t *testing.T, img *snapshot.Image, parts []string, errno unix.Errno, before counters, fd string, n uint64) {
	t.Helper()
	_, err := Restore(c.PID, img, imageMemory{img}, parts, testLogger(t))
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, errno) {
		t.Errorf("restore of %v: %v, want a RejectError with %v", parts, err, errno)
	}
	checkRunning(t, c.Proc)
	after := c.read(t)
	checkKept(t, "heap", before.heap, after.heap)
	checkKept(t, "global", before.global, after.global)
	if _, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", c.PID, fd)); err != nil {
		t.Errorf("fd %s is gone after a rejected restore: %v", fd, err)
	}
	if mapsLine(t, c.PID, n) == "" || mapsLine(t, c.PID, c.r) != "" {
		t.Errorf("layout changed by a rejected restore")
	}
	c.checkRising(t, after)
}

// startChanged starts part_counters, captures it, then opens a file, maps
// region N and unmaps R, and lets the counters rise.
func startChanged(t *testing.T) (c *counterTarget, img *snapshot.Image, before counters, fd string, n uint64) {
	t.Helper()
	c = startCounters(t)
	img = captureImage(t, c.PID)
	saved := c.saved(t, img)
	fd = c.send(t, "open", "opened ")
	n = parseAddr(t, fields(c.send(t, "map", "mapped "))["n"])
	c.send(t, "unmap", "unmapped")
	return c, img, c.riseAndSettle(t, saved), fd, n
}

func TestRestorePartRegionNotInSnapshot(t *testing.T) {
	c, img, before, fd, n := startChanged(t)
	parts := []string{"[heap]", "fds", fmt.Sprintf("%x-%x", n, n+8*4096)}
	c.checkRejected(t, img, parts, unix.EINVAL, before, fd, n)
}

func TestRestorePartRegionUnmapped(t *testing.T) {
	c, img, before, fd, n := startChanged(t)
	parts := []string{"[heap]", "fds", fmt.Sprintf("%x-%x", c.r, c.r+8*4096)}
	c.checkRejected(t, img, parts, unix.EOPNOTSUPP, before, fd, n)
}
