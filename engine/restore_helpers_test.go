package engine

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// imageMemory reads the saved memory of an image fresh from capture, whose
// runs still hold their bytes.
type imageMemory struct{ img *snapshot.Image }

func (m imageMemory) ReadRegion(i int, p []byte, off uint64) error {
	runs := m.img.Regions[i].Runs
	end := off + uint64(len(p))
	first, _ := slices.BinarySearchFunc(runs, off, func(run snapshot.Run, o uint64) int {
		if run.Off+run.Len <= o {
			return -1
		}
		return 1
	})
	pos := off // p is filled up to pos
	for _, run := range runs[first:] {
		if run.Off >= end {
			break
		}
		from, to := max(run.Off, off), min(run.Off+run.Len, end)
		clear(p[pos-off : from-off])
		copy(p[from-off:to-off], run.Data[from-run.Off:to-run.Off])
		pos = to
	}
	clear(p[pos-off:])
	return nil
}

// commanded is a target that reads commands from a pipe the test holds.
type commanded struct {
	*testproc.Proc
	in io.WriteCloser
}

// startCommanded starts target name with its stdin on a pipe.
func startCommanded(t testing.TB, name string, args ...string) *commanded {
	t.Helper()
	return startCommandedBin(t, testproc.Build(t, name), args...)
}

// startCommandedBin starts program bin with its stdin on a pipe.
func startCommandedBin(t testing.TB, bin string, args ...string) *commanded {
	t.Helper()
	cmd := exec.Command(bin, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("stdin pipe: %v", err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { in.Close() })
	return &commanded{Proc: p, in: in}
}

// send writes one command line and returns the rest of the first line the
// target prints that starts with reply.
func (c *commanded) send(t testing.TB, command, reply string) string {
	t.Helper()
	if _, err := io.WriteString(c.in, command+"\n"); err != nil {
		t.Fatalf("send %q to pid %d: %v", command, c.PID, err)
	}
	return c.Expect(reply)
}

// captureImage captures p, failing the test on error.
func captureImage(t *testing.T, pid int) *snapshot.Image {
	t.Helper()
	img, err := Capture(pid, testLogger(t))
	if err != nil {
		t.Fatalf("capture pid %d: %v", pid, err)
	}
	return img
}

// restoreImage restores p to img from the image's own memory, failing the
// test on error, and checks that p runs afterwards.
func restoreImage(t *testing.T, p *testproc.Proc, img *snapshot.Image) *RestoreReport {
	t.Helper()
	report, err := Restore(p.PID, img, imageMemory{img}, nil, testLogger(t))
	if err != nil {
		t.Fatalf("restore pid %d: %v", p.PID, err)
	}
	checkRunning(t, p)
	return report
}

// checkRunning fails the test when p exited or is left stopped.
func checkRunning(t *testing.T, p *testproc.Proc) {
	t.Helper()
	if !p.Alive() {
		t.Fatalf("pid %d exited", p.PID)
	}
	if s := p.State(); s == "t" || s == "T" || s == "" {
		t.Fatalf("pid %d is in state %q after the operation, want running or sleeping", p.PID, s)
	}
}

// fields parses "key=value" words.
func fields(line string) map[string]string {
	out := map[string]string{}
	for _, w := range strings.Fields(line) {
		if k, v, ok := strings.Cut(w, "="); ok {
			out[k] = v
		}
	}
	return out
}

// numbers parses the space-separated unsigned integers of a line.
func numbers(t *testing.T, line string) []uint64 {
	t.Helper()
	var out []uint64
	for _, w := range strings.Fields(line) {
		v, err := strconv.ParseUint(w, 10, 64)
		if err != nil {
			t.Fatalf("parse %q in line %q: %v", w, line, err)
		}
		out = append(out, v)
	}
	return out
}

// mapsLine returns the line of /proc/PID/maps that contains addr, or "".
func mapsLine(t *testing.T, pid int, addr uint64) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		var start, end uint64
		if _, err := fmt.Sscanf(line, "%x-%x", &start, &end); err == nil && start <= addr && addr < end {
			return line
		}
	}
	return ""
}

// materialize reads into Run.Data every run of img that mem serves (those
// not marked Base and without bytes yet), then closes mem. It returns img.
func materialize(t *testing.T, img *snapshot.Image, mem *COWMemory) *snapshot.Image {
	t.Helper()
	defer mem.Close()
	for i := range img.Regions {
		for k := range img.Regions[i].Runs {
			run := &img.Regions[i].Runs[k]
			if run.Data != nil || run.Base {
				continue
			}
			data := make([]byte, run.Len)
			if err := mem.ReadRegion(i, data, run.Off); err != nil {
				t.Fatalf("read region %d: %v", i, err)
			}
			run.Data = data
		}
	}
	return img
}
