package engine

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// startBlocked starts target name with a stdin pipe the test holds open,
// so the target can block in read(0) until the test ends.
func startBlocked(t *testing.T, name string, args ...string) *testproc.Proc {
	t.Helper()
	p, _ := startWithStdin(t, name, args...)
	return p
}

// startWithStdin is startBlocked that also returns the write end of the
// target's stdin.
func startWithStdin(t *testing.T, name string, args ...string) (*testproc.Proc, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatalf("pipe: %v", err)
	}
	t.Cleanup(func() { w.Close() })

	cmd := exec.Command(testproc.Build(t, name), args...)
	cmd.Stdin = r
	p := testproc.StartCmd(t, cmd)
	r.Close()
	return p, w
}

// waitInRead waits until the target's main thread sleeps in read(2), the
// call it blocks in after printing "ready".
func waitInRead(t *testing.T, p *testproc.Proc) {
	t.Helper()
	path := "/proc/" + strconv.Itoa(p.PID) + "/syscall"
	for range 5000 {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(string(data), strconv.Itoa(unix.SYS_READ)+" ") && p.State() == "S" {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("pid %d never blocked in read", p.PID)
}

// parseAddr parses a %p address a target printed.
func parseAddr(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("parse address %q: %v", s, err)
	}
	return v
}

// savedBytes returns n saved bytes at addr from img, failing when addr is
// in no region or no run.
func savedBytes(t *testing.T, img *snapshot.Image, addr uint64, n int) []byte {
	t.Helper()
	for _, r := range img.Regions {
		if addr < r.Start || addr >= r.End {
			continue
		}
		off := addr - r.Start
		for _, run := range r.Runs {
			if off >= run.Off && off+uint64(n) <= run.Off+run.Len {
				return run.Data[off-run.Off : off-run.Off+uint64(n)]
			}
		}
		t.Fatalf("address %#x in region %#x-%#x %s is in no saved run", addr, r.Start, r.End, r.Path)
	}
	t.Fatalf("address %#x is in no region", addr)
	return nil
}

// regionOf returns the region that contains addr, or nil.
func regionOf(img *snapshot.Image, addr uint64) *snapshot.Region {
	for i := range img.Regions {
		if r := &img.Regions[i]; addr >= r.Start && addr < r.End {
			return r
		}
	}
	return nil
}

func TestCaptureMarkers(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	heap := parseAddr(t, p.Expect("heap "))
	global := parseAddr(t, p.Expect("global "))
	p.Expect("ready")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}

	if got := savedBytes(t, img, heap, 23); string(got) != "CKPTFS-HEAP-MARKER-93c7" {
		t.Errorf("heap marker = %q", got)
	}
	if got := savedBytes(t, img, global, 25); string(got) != "CKPTFS-GLOBAL-MARKER-5b1e" {
		t.Errorf("global marker = %q", got)
	}
	for _, r := range img.Regions {
		for _, run := range r.Runs {
			if run.Off%pageSize != 0 || run.Len%pageSize != 0 || uint64(len(run.Data)) != run.Len {
				t.Errorf("region %#x: run %d+%d with %d bytes is not page-aligned and full", r.Start, run.Off, run.Len, len(run.Data))
			}
		}
	}
}

func TestCaptureMapsByteIdentical(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	p.Expect("ready")

	before, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	after, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/maps")
	if err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(img.Maps, before) {
		t.Errorf("captured maps differ from maps before capture:\n%s\nwant:\n%s", img.Maps, before)
	}
	if !bytes.Equal(after, before) {
		t.Errorf("maps after capture differ (scratch page left behind?):\n%s\nbefore:\n%s", after, before)
	}
	if n := bytes.Count(img.Maps, []byte("\n")); n != len(img.Regions) {
		t.Errorf("%d regions for %d maps lines", len(img.Regions), n)
	}
}

func TestCaptureRegisters(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	p.Expect("ready")
	bin := testproc.Build(t, "cap_marker")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if len(img.Threads) != 1 || img.Threads[0].TID != p.PID {
		t.Fatalf("threads = %+v, want only the main thread %d", len(img.Threads), p.PID)
	}
	th := img.Threads[0]

	rip := regionOf(img, th.Regs.Rip)
	if rip == nil || rip.Perms[2] != 'x' || (rip.Path != bin && !strings.Contains(rip.Path, "libc")) {
		t.Errorf("rip %#x is not in an executable mapping of the binary or libc: %+v", th.Regs.Rip, rip)
	}
	if stack := regionOf(img, th.Regs.Rsp); stack == nil || stack.Path != "[stack]" {
		t.Errorf("rsp %#x is not in [stack]: %+v", th.Regs.Rsp, stack)
	}
	if img.Exe != bin {
		t.Errorf("exe = %q, want %q", img.Exe, bin)
	}
	if img.Comm != "cap_marker" {
		t.Errorf("comm = %q", img.Comm)
	}
	if img.Brk < img.StartBrk || img.StartBrk == 0 {
		t.Errorf("brk %#x before start_brk %#x", img.Brk, img.StartBrk)
	}
}

func TestCaptureBlockedReadRearmed(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	p.Expect("ready")
	waitInRead(t, p)

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	th := img.Threads[0]

	if th.RawRegs.Orig_rax != unix.SYS_READ {
		t.Errorf("raw orig_rax = %d, want SYS_read", th.RawRegs.Orig_rax)
	}
	if int64(th.RawRegs.Rax) != -errRestartSys {
		t.Errorf("raw rax = %d, want -ERESTARTSYS", int64(th.RawRegs.Rax))
	}
	if th.Regs.Rip != th.RawRegs.Rip-2 {
		t.Errorf("rip = %#x, want raw rip %#x - 2", th.Regs.Rip, th.RawRegs.Rip)
	}
	if th.Regs.Rax != unix.SYS_READ {
		t.Errorf("rearmed rax = %d, want SYS_read (0)", th.Regs.Rax)
	}
	if th.Regs.Orig_rax != unix.SYS_READ {
		t.Errorf("orig_rax = %d, want kept as the kernel reported it", th.Regs.Orig_rax)
	}
}

func TestCaptureXstate(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	p.Expect("ready")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}

	// The kernel's size for NT_X86_XSTATE is CPUID(0xD, 0).EBX, which
	// /proc/cpuinfo does not show; the same regset read again must agree.
	want := xstateLenOfSelf(t)
	if got := len(img.Threads[0].Xstate); got != want {
		t.Errorf("xstate is %d bytes, the kernel returns %d", got, want)
	}
	if img.XCR0&0xe0 != 0xe0 {
		t.Errorf("XCR0 = %#x lacks the AVX-512 bits 0xe0", img.XCR0)
	}
	if img.XCR0&0x7 != 0x7 {
		t.Errorf("XCR0 = %#x lacks x87, SSE and AVX", img.XCR0)
	}
}

func TestCaptureFourThreads(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_threads"))
	want := map[int]bool{}
	for range 4 {
		tid, err := strconv.Atoi(p.Expect("tid "))
		if err != nil {
			t.Fatal(err)
		}
		want[tid] = true
	}
	p.Expect("ready")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if len(img.Threads) != 4 {
		t.Fatalf("%d threads, want 4", len(img.Threads))
	}
	if img.Threads[0].TID != p.PID {
		t.Errorf("first thread %d, want the main thread %d", img.Threads[0].TID, p.PID)
	}
	for _, th := range img.Threads {
		if !want[th.TID] {
			t.Errorf("unexpected tid %d", th.TID)
		}
		if th.Regs.Rip == 0 || th.Regs.Rsp == 0 || len(th.Xstate) == 0 {
			t.Errorf("tid %d: rip %#x rsp %#x xstate %d bytes", th.TID, th.Regs.Rip, th.Regs.Rsp, len(th.Xstate))
		}
		if th.Rseq.Addr == 0 {
			t.Errorf("tid %d has no rseq registration (glibc registers one)", th.TID)
		}
		delete(want, th.TID)
	}
	if len(want) != 0 {
		t.Errorf("threads missing from the image: %v", want)
	}
}

func TestCaptureFileDescriptor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBlocked(t, "cap_file", path)
	num, err := strconv.Atoi(p.Expect("fd "))
	if err != nil {
		t.Fatal(err)
	}
	p.Expect("ready")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	var fd *snapshot.FD
	for i := range img.FDs {
		if img.FDs[i].Num == num {
			fd = &img.FDs[i]
		}
	}
	if fd == nil {
		t.Fatalf("fd %d missing from %+v", num, img.FDs)
	}

	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if fd.Kind != snapshot.KindFile || fd.Target != path {
		t.Errorf("fd %d = %s %q, want file %q", num, fd.Kind, fd.Target, path)
	}
	if fd.Pos != 1234 {
		t.Errorf("pos = %d, want 1234", fd.Pos)
	}
	// The kernel sets O_LARGEFILE (0100000 on x86-64; x/sys/unix defines
	// it as 0 there) on every open of a 64-bit process.
	if want := uint32(unix.O_RDWR | unix.O_APPEND | 0o100000); fd.Flags != want {
		t.Errorf("flags = %#o, want %#o", fd.Flags, want)
	}
	if fd.Dev != st.Dev || fd.Ino != st.Ino || fd.Mode != st.Mode {
		t.Errorf("dev/ino/mode = %d/%d/%o, want %d/%d/%o", fd.Dev, fd.Ino, fd.Mode, st.Dev, st.Ino, st.Mode)
	}
	if img.Cwd == "" || img.Creds.UID != [3]uint32{0, 0, 0} {
		t.Errorf("cwd %q creds %+v", img.Cwd, img.Creds)
	}
}

// testLogger returns a logger that writes every level to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
