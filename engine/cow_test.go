package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// perfTarget is a target started with its stdin on a pipe the test holds.
type perfTarget struct {
	*testproc.Proc
	in io.WriteCloser
}

func startPerfTarget(t testing.TB, name string, args ...string) *perfTarget {
	t.Helper()
	cmd := exec.Command(testproc.Build(t, name), args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("stdin pipe: %v", err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { in.Close() })
	return &perfTarget{Proc: p, in: in}
}

// command sends one line and returns the fields after reply of the first
// line that starts with reply.
func (p *perfTarget) command(t testing.TB, line, reply string) []string {
	t.Helper()
	if _, err := io.WriteString(p.in, line+"\n"); err != nil {
		t.Fatalf("send %q to pid %d: %v", line, p.PID, err)
	}
	return strings.Fields(p.Expect(reply))
}

func parseHex(t testing.TB, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		t.Fatalf("parse hex %q: %v", s, err)
	}
	return v
}

// openPerfStore opens a store in a new temporary directory.
func openPerfStore(t testing.TB) *snapshot.Store {
	t.Helper()
	st, err := snapshot.Open(filepath.Join(t.TempDir(), "store"), nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return st
}

// regionIndex returns the index of the region of img that contains addr.
func regionIndex(t testing.TB, img *snapshot.Image, addr uint64) int {
	t.Helper()
	for i, r := range img.Regions {
		if addr >= r.Start && addr < r.End {
			return i
		}
	}
	t.Fatalf("address %#x is in no region", addr)
	return -1
}

// readWord reads the 64-bit word at addr from a saved image.
func readWord(t testing.TB, img *snapshot.Image, mem snapshot.MemoryReader, addr uint64) uint64 {
	t.Helper()
	i := regionIndex(t, img, addr)
	var b [8]byte
	if err := mem.ReadRegion(i, b[:], addr-img.Regions[i].Start); err != nil {
		t.Fatalf("read word at %#x: %v", addr, err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// checkNoChildren fails when process pid has a child, a zombie included.
func checkNoChildren(t testing.TB, pid int) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatalf("list threads of pid %d: %v", pid, err)
	}
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			t.Fatalf("read children of tid %s: %v", task.Name(), err)
		}
		if s := strings.TrimSpace(string(data)); s != "" {
			t.Errorf("tid %s of pid %d has children %s after the capture", task.Name(), pid, s)
		}
	}
}

// checkRunningUntraced fails when process pid is stopped (by a signal or a tracer)
// or traced.
func checkRunningUntraced(t testing.TB, p *testproc.Proc) {
	t.Helper()
	if state := p.State(); state == "T" || state == "t" || state == "Z" || state == "" {
		t.Errorf("pid %d is in state %q after the capture", p.PID, state)
	}
	st, err := ReadStatus(p.PID)
	if err != nil {
		t.Fatalf("read status of pid %d: %v", p.PID, err)
	}
	if st.TracerPid != 0 {
		t.Errorf("pid %d is still traced by %d", p.PID, st.TracerPid)
	}
}

func TestCaptureCOWConsistentWhileWriting(t *testing.T) {
	p := startPerfTarget(t, "perf_gen", "64")
	ready := strings.Fields(p.Expect("ready "))
	buf, size := parseHex(t, ready[0]), mustAtoi(t, ready[1])
	genAddr, cursorAddr := parseHex(t, ready[2]), parseHex(t, ready[3])

	img, mem, err := CaptureCOW(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("CaptureCOW: %v", err)
	}
	t.Cleanup(func() { mem.Close() })
	clone := mem.clonePID
	if clone == 0 {
		t.Fatalf("CaptureCOW made no clone")
	}
	if r := img.Regions[regionIndex(t, img, buf)]; len(r.Runs) == 0 || r.Runs[0].Data != nil {
		t.Errorf("buffer region has runs %d, first with data: copied while frozen instead of read from the clone", len(r.Runs))
	}
	checkRunningUntraced(t, p.Proc)

	st := openPerfStore(t)
	info, err := st.SaveFrom(img, "", mem)
	if err != nil {
		t.Fatalf("SaveFrom: %v", err)
	}
	if err := mem.Close(); err != nil {
		t.Fatalf("close memory: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", clone)); !os.IsNotExist(err) {
		t.Errorf("clone %d still exists after Close (stat: %v)", clone, err)
	}
	checkNoChildren(t, p.PID)
	checkRunningUntraced(t, p.Proc)

	snap, err := st.Load(img.Process, info.Name)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	defer snap.Close()
	gen, cursor := readWord(t, snap.Image, snap, genAddr), readWord(t, snap.Image, snap, cursorAddr)
	if gen < 2 {
		t.Fatalf("saved generation %d, the writer had finished two passes", gen)
	}
	checkGenerations(t, snap, buf, uint64(size), gen, cursor)

	now := mustAtoi(t, p.command(t, "gen", "gen ")[0])
	if uint64(now) <= gen {
		t.Errorf("generation %d after the capture, %d at it: the writer stopped", now, gen)
	}
}

// checkGenerations checks that the saved buffer holds generation gen before
// cursor and gen-1 after it, with either at cursor, and page indexes right.
func checkGenerations(t *testing.T, snap *snapshot.Snapshot, buf, size, gen, cursor uint64) {
	t.Helper()
	i := regionIndex(t, snap.Image, buf)
	data := make([]byte, size)
	if err := snap.ReadRegion(i, data, buf-snap.Image.Regions[i].Start); err != nil {
		t.Fatalf("read buffer: %v", err)
	}
	bad := 0
	for page := uint64(0); page < size/pageSize; page++ {
		got := binary.LittleEndian.Uint64(data[page*pageSize:])
		idx := binary.LittleEndian.Uint64(data[page*pageSize+8:])
		want := gen - 1
		if page < cursor {
			want = gen
		}
		if idx != page || got != want && !(page == cursor && got == gen) {
			if bad++; bad <= 5 {
				t.Errorf("page %d: generation %d index %d, want generation %d (saved gen %d cursor %d)", page, got, idx, want, gen, cursor)
			}
		}
	}
	if bad > 5 {
		t.Errorf("%d pages wrong in all", bad)
	}
}

func mustAtoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("parse number %q: %v", s, err)
	}
	return n
}

func TestCaptureCOWRegionsCopiedWhileFrozen(t *testing.T) {
	p := startPerfTarget(t, "perf_regions")
	addrs := map[string]uint64{}
	for _, name := range []string{"shared", "dontfork", "wipeonfork", "private"} {
		addrs[name] = parseHex(t, strings.Fields(p.Expect(name + " "))[0])
	}
	p.Expect("ready")

	img, mem, err := CaptureCOW(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("CaptureCOW: %v", err)
	}
	defer mem.Close()

	for name, addr := range addrs {
		i := regionIndex(t, img, addr)
		r := img.Regions[i]
		if name == "wipeonfork" {
			if r.Saved || !strings.Contains(r.SkipReason, "MADV_WIPEONFORK") {
				t.Errorf("wipe-on-fork region saved %v with skip reason %q, want unsaved naming MADV_WIPEONFORK", r.Saved, r.SkipReason)
			}
			continue
		}
		copied := len(r.Runs) > 0 && r.Runs[0].Data != nil
		if wantCopied := name != "private"; copied != wantCopied {
			t.Errorf("%s region copied while frozen = %v, want %v", name, copied, wantCopied)
		}
		for page := uint64(0); page < 64; page += 21 {
			got := make([]byte, 32)
			if err := mem.ReadRegion(i, got, addr+page*pageSize-r.Start); err != nil {
				t.Fatalf("read %s page %d: %v", name, page, err)
			}
			want := fmt.Sprintf("CKPTFS-%s-%d", name, page)
			if string(got[:len(want)]) != want {
				t.Errorf("%s page %d = %q, want %q", name, page, got[:len(want)], want)
			}
		}
	}
	if !slices.Contains(img.Regions[regionIndex(t, img, addrs["private"])].VmFlags, "wr") {
		t.Errorf("private region has VmFlags %v, want them read from the clone (with wr)", img.Regions[regionIndex(t, img, addrs["private"])].VmFlags)
	}
}

func TestCaptureCOWKeepsJobStop(t *testing.T) {
	p := startPerfTarget(t, "perf_regions")
	p.Expect("ready")
	if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.Proc, "T")

	img, mem, err := CaptureCOW(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("CaptureCOW: %v", err)
	}
	if !img.JobStopped {
		t.Errorf("image of a stopped process has JobStopped false")
	}
	if err := mem.Close(); err != nil {
		t.Fatalf("close memory: %v", err)
	}
	waitState(t, p.Proc, "T")
	checkNoChildren(t, p.PID)
	if err := unix.Kill(p.PID, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

func TestThawReapsOrphanedClone(t *testing.T) {
	p := startPerfTarget(t, "perf_orphan")
	zombie := mustAtoi(t, p.Expect("zombie "))
	p.Expect("ready")
	for range 1000 {
		if state := stateOf(zombie); state == "Z" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if state := stateOf(zombie); state != "Z" {
		t.Fatalf("child %d of pid %d in state %q, want a zombie", zombie, p.PID, state)
	}

	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if _, err := op.Capture(); err != nil {
		t.Fatalf("Capture: %v", err)
	}
	op.Close()

	checkNoChildren(t, p.PID)
	if state := stateOf(zombie); state != "" {
		t.Errorf("zombie %d still exists in state %q after the op", zombie, state)
	}
}

// stateOf returns the state letter of /proc/PID/stat, or "" when pid is gone.
func stateOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
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
