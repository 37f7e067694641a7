package fs

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// lines parses "name value" lines into a map, failing on duplicates.
func lines(t *testing.T, text []byte, sep string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(text), "\n"), "\n") {
		key, value, ok := strings.Cut(line, sep)
		if !ok {
			t.Fatalf("line %q has no %q", line, sep)
		}
		if _, dup := m[key]; dup {
			t.Fatalf("duplicate key %q", key)
		}
		m[key] = value
	}
	return m
}

func TestRenderRegs(t *testing.T) {
	regs := unix.PtraceRegs{Rip: 0x401136, Rsp: 0x7ffc0000, Orig_rax: ^uint64(0), Fs_base: 0x7f00deadbeef}
	out := renderRegs(&regs)

	var names []string
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		names = append(names, strings.Fields(line)[0])
	}
	want := "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs"
	if strings.Join(names, " ") != want {
		t.Errorf("register order\n got %s\nwant %s", strings.Join(names, " "), want)
	}

	m := lines(t, out, " ")
	for name, value := range map[string]string{
		"rip": "0x401136", "rsp": "0x7ffc0000", "orig_rax": "0xffffffffffffffff",
		"fs_base": "0x7f00deadbeef", "rax": "0x0",
	} {
		if m[name] != value {
			t.Errorf("%s = %s, want %s", name, m[name], value)
		}
	}
}

// XSAVE layouts of the standard format on two CPUs, from CPUID leaf 0xD:
// an Intel one with MPX space reserved, and an AMD EPYC without it.
var (
	intelLayout = xsaveLayout{offset: [8]int{2: 576, 5: 1088, 6: 1152, 7: 1664}}
	amdLayout   = xsaveLayout{offset: [8]int{2: 576, 5: 832, 6: 896, 7: 1408}}
)

// testXsave returns an XSAVE buffer in layout with AVX-512 enabled in XCR0
// and a recognisable byte pattern in every register.
func testXsave(layout xsaveLayout, xstateBV uint64) []byte {
	buf := make([]byte, layout.offset[componentHi16ZMM]+sizeHi16ZMM)
	le := binary.LittleEndian
	le.PutUint16(buf[0:], 0x037f)
	le.PutUint32(buf[24:], 0x1f80)
	le.PutUint32(buf[28:], 0xffff)
	le.PutUint64(buf[xsaveXCR0:], 0xe7)
	le.PutUint64(buf[xsaveXstateBV:], xstateBV)

	fill := func(off, n int, v byte) {
		for j := range n {
			buf[off+j] = v
		}
	}
	for i := range 16 {
		fill(xsaveXMM+16*i, 16, byte(0x10+i))
		fill(layout.offset[componentYMMHi128]+16*i, 16, byte(0x20+i))
		fill(layout.offset[componentZMMHi256]+32*i, 32, byte(0x30+i))
		fill(layout.offset[componentHi16ZMM]+64*i, 64, byte(0x40+i))
	}
	for i := range 8 {
		le.PutUint64(buf[layout.offset[componentOpmask]+8*i:], uint64(i+1))
	}
	buf[xsaveST] = 0x01 // lowest byte of st0
	buf[xsaveST+9] = 0x3f
	return buf
}

func TestRenderFPRegsAVX512(t *testing.T) {
	for name, layout := range map[string]xsaveLayout{"intel": intelLayout, "amd": amdLayout} {
		t.Run(name, func(t *testing.T) {
			m := lines(t, renderFPRegsLayout(testXsave(layout, 0xe7), layout), " ")

			want := map[string]string{
				"fcw":        "0x037f",
				"mxcsr":      "0x00001f80",
				"mxcsr_mask": "0x0000ffff",
				"xcr0":       "0x00000000000000e7",
				"st0":        "0x3f" + strings.Repeat("00", 8) + "01",
				"xmm1":       "0x" + strings.Repeat("11", 16),
				"ymm1":       "0x" + strings.Repeat("21", 16) + strings.Repeat("11", 16),
				"zmm1":       "0x" + strings.Repeat("31", 32) + strings.Repeat("21", 16) + strings.Repeat("11", 16),
				"zmm17":      "0x" + strings.Repeat("41", 64),
				"k7":         "0x0000000000000008",
			}
			for name, value := range want {
				if m[name] != value {
					t.Errorf("%s = %s, want %s", name, m[name], value)
				}
			}
			for _, name := range []string{"fsw", "ftw", "fop", "fip", "fdp", "st7", "xmm15", "ymm15", "zmm31", "k0"} {
				if _, ok := m[name]; !ok {
					t.Errorf("%s missing", name)
				}
			}
		})
	}
}

func TestRenderFPRegsInitialComponents(t *testing.T) {
	// XSTATE_BV marks only x87 and SSE as modified, so the AVX and AVX-512
	// parts are in their initial state and print as zeros whatever the
	// buffer contains.
	m := lines(t, renderFPRegsLayout(testXsave(intelLayout, 0x3), intelLayout), " ")

	if want := "0x" + strings.Repeat("00", 16) + strings.Repeat("12", 16); m["ymm2"] != want {
		t.Errorf("ymm2 = %s, want %s", m["ymm2"], want)
	}
	if want := "0x" + strings.Repeat("00", 64); m["zmm20"] != want {
		t.Errorf("zmm20 = %s, want %s", m["zmm20"], want)
	}
	if m["k1"] != "0x0000000000000000" {
		t.Errorf("k1 = %s, want zero", m["k1"])
	}
}

func TestRenderFPRegsWithoutAVX512(t *testing.T) {
	buf := testXsave(intelLayout, 0x7)[:intelLayout.offset[componentOpmask]]
	binary.LittleEndian.PutUint64(buf[xsaveXCR0:], 0x7)
	m := lines(t, renderFPRegsLayout(buf, intelLayout), " ")

	if _, ok := m["ymm0"]; !ok {
		t.Error("ymm0 missing with AVX in XCR0")
	}
	for _, name := range []string{"zmm0", "k0"} {
		if _, ok := m[name]; ok {
			t.Errorf("%s shown without AVX-512 in XCR0", name)
		}
	}
}

func TestHostXsaveLayout(t *testing.T) {
	// Every x86-64 CPU this runs on has AVX; its upper ymm halves sit
	// right after the XSAVE header in the standard format.
	if got := hostXsaveLayout().offset[componentYMMHi128]; got != 576 {
		t.Errorf("YMM_Hi128 offset %d, want 576", got)
	}
}

func TestRenderFDs(t *testing.T) {
	fds := []snapshot.FD{
		{Num: 0, Kind: snapshot.KindPipe, Target: "pipe:[1234]", Flags: 0},
		{Num: 3, Kind: snapshot.KindFile, Target: "/tmp/a file\nx", Pos: 42, Flags: 0o2002, Dev: unix.Mkdev(8, 1), Ino: 77, Mode: 0o100644},
	}
	got := strings.Split(strings.TrimSuffix(string(renderFDs(fds)), "\n"), "\n")
	want := []string{
		"0 pipe pipe:[1234] flags=00 mnt_id=0 dev=0:0 ino=0 mode=00",
		`3 file /tmp/a\040file\012x pos=42 flags=02002 mnt_id=0 dev=8:1 ino=77 mode=0100644`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d: %q", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

func TestRenderInfo(t *testing.T) {
	captured := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	info := snapshot.Info{
		Name: "snap-1", Process: snapshot.ProcessID{PID: 42, StartTime: 99, BootID: "b"}, UID: 1000,
		Comm: "target", Exe: "/bin/target", Captured: captured, Frozen: 3200 * time.Microsecond,
		Threads: 2, Regions: 20, Bytes: 4096, Stored: 1234,
	}
	m := lines(t, renderInfo(info, &snapshot.Image{}), ": ")
	want := map[string]string{
		"pid": "42", "comm": "target", "exe": "/bin/target", "captured": "2026-12-04T21:00:00Z",
		"threads": "2", "regions": "20", "bytes": "4096", "stored": "1234", "frozen": "3.2ms",
	}
	for key, value := range want {
		if m[key] != value {
			t.Errorf("%s: %q, want %q", key, m[key], value)
		}
	}
}

func TestRenderInfoSignalQueues(t *testing.T) {
	siginfo := func(signo byte) []byte {
		info := make([]byte, snapshot.SiginfoSize)
		info[0] = signo
		return info
	}
	img := &snapshot.Image{Signals: snapshot.Signals{
		QueuesSaved: true,
		Pending:     []snapshot.PendingSignal{{TID: 7, Info: siginfo(12)}, {Info: siginfo(35)}, {Info: siginfo(35)}},
		Timers:      []snapshot.PosixTimer{{ID: 0}, {ID: 3}},
	}}
	m := lines(t, renderInfo(snapshot.Info{}, img), ": ")
	if m["pending_signals"] != "12 35 35" {
		t.Errorf("pending_signals: %q, want %q", m["pending_signals"], "12 35 35")
	}
	if m["timers"] != "2" {
		t.Errorf("timers: %q, want 2", m["timers"])
	}

	empty := lines(t, renderInfo(snapshot.Info{}, &snapshot.Image{Signals: snapshot.Signals{QueuesSaved: true}}), ": ")
	if empty["pending_signals"] != "none" {
		t.Errorf("pending_signals without signals: %q, want none", empty["pending_signals"])
	}
}

func TestRegionName(t *testing.T) {
	r := snapshot.Region{Start: 0x400000, End: 0x401000}
	if got := regionName(&r); got != "00400000-00401000" {
		t.Errorf("regionName = %s", got)
	}
	r = snapshot.Region{Start: 0x7ffd1234a000, End: 0x7ffd1236b000}
	if got := regionName(&r); got != "7ffd1234a000-7ffd1236b000" {
		t.Errorf("regionName = %s", got)
	}
}
