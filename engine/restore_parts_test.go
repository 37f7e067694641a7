package engine

import (
	"bytes"
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
