package engine

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

func TestParseMapsLine(t *testing.T) {
	pad := func(header string) string { // the kernel's padding to column 73
		for len(header) < mapsPathColumn {
			header += " "
		}
		return header
	}
	tests := []struct {
		line string
		want snapshot.Region
	}{
		{
			pad("55dbad25b000-55dbad25d000 r--p 00000000 fe:00 247026 ") + "/usr/bin/cat",
			snapshot.Region{Start: 0x55dbad25b000, End: 0x55dbad25d000, Perms: "r--p", Major: 0xfe, Inode: 247026, Path: "/usr/bin/cat"},
		},
		{
			"7fe3119f4000-7fe311b27000 rw-p 00000000 00:00 0 ",
			snapshot.Region{Start: 0x7fe3119f4000, End: 0x7fe311b27000, Perms: "rw-p"},
		},
		{
			pad("7f0000000000-7f0000001000 rw-s 00002000 00:01 42 ") + "/tmp/my file (deleted)",
			snapshot.Region{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "rw-s", Offset: 0x2000, Minor: 1, Inode: 42, Path: "/tmp/my file (deleted)"},
		},
		{
			pad("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ") + "[anon:go heap]",
			snapshot.Region{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "rw-p", Path: "[anon:go heap]"},
		},
		{
			pad("7f0000000000-7f0000001000 r--p 00000000 08:01 7 ") + "  two leading spaces",
			snapshot.Region{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "r--p", Major: 8, Minor: 1, Inode: 7, Path: "  two leading spaces"},
		},
		{
			"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
			snapshot.Region{Start: 0xffffffffff600000, End: 0xffffffffff601000, Perms: "--xp", Path: "[vsyscall]"},
		},
	}
	for _, tt := range tests {
		got, err := parseMapsLine(tt.line)
		if err != nil {
			t.Errorf("parseMapsLine(%q): %v", tt.line, err)
			continue
		}
		if got.Start != tt.want.Start || got.End != tt.want.End || got.Perms != tt.want.Perms ||
			got.Offset != tt.want.Offset || got.Major != tt.want.Major || got.Minor != tt.want.Minor ||
			got.Inode != tt.want.Inode || got.Path != tt.want.Path {
			t.Errorf("parseMapsLine(%q) = %+v, want %+v", tt.line, got, tt.want)
		}
	}
}

func TestParseMapsLineInvalid(t *testing.T) {
	for _, line := range []string{"", "garbage", "1000-0 rw-p 0 00:00 0 ", "zz-1000 rw-p 0 00:00 0 ", "1000-2000 rw 0 00:00 0 "} {
		if _, err := parseMapsLine(line); !errors.Is(err, unix.EINVAL) {
			t.Errorf("parseMapsLine(%q) = %v, want EINVAL", line, err)
		}
	}
}

func TestParseSmapsFlags(t *testing.T) {
	smaps := "00400000-00401000 r-xp 00000000 08:01 12 /bin/x\n" +
		"Size:                  4 kB\n" +
		"AnonHugePages:         0 kB\n" +
		"VmFlags: rd ex mr mw me sd \n" +
		"7f0000000000-7f0000002000 rw-p 00000000 00:00 0 \n" +
		"Size:                  8 kB\n" +
		"VmFlags: rd wr mr mw me ac um \n"
	flags, err := parseSmapsFlags([]byte(smaps))
	if err != nil {
		t.Fatal(err)
	}
	if got := flags[0x400000]; !slices.Equal(got, []string{"rd", "ex", "mr", "mw", "me", "sd"}) {
		t.Errorf("flags of 0x400000 = %q", got)
	}
	if got := flags[0x7f0000000000]; !slices.Contains(got, "um") {
		t.Errorf("flags of 0x7f0000000000 = %q, want um among them", got)
	}
}

func TestParseFdinfo(t *testing.T) {
	info, err := parseFdinfo([]byte("pos:\t1234\nflags:\t02102002\nmnt_id:\t27\nino:\t99\n"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Pos != 1234 || info.Flags != 0o2102002 || info.MntID != 27 {
		t.Errorf("fdinfo = %+v", info)
	}
	if _, err := parseFdinfo([]byte("pos:\t1\n")); !errors.Is(err, unix.EINVAL) {
		t.Errorf("fdinfo without flags: %v, want EINVAL", err)
	}
	if _, err := parseFdinfo([]byte("pos:\tx\nflags:\t0\nmnt_id:\t1\n")); !errors.Is(err, unix.EINVAL) {
		t.Errorf("fdinfo with bad pos: %v, want EINVAL", err)
	}
}

// statLine builds a /proc/PID/stat line with the given comm, state and
// fields 4.. counted from 1, the rest zero.
func statLine(comm string, fields map[int]string) string {
	s := "4242 (" + comm + ") S"
	for n := 4; n <= 52; n++ {
		v, ok := fields[n]
		if !ok {
			v = "0"
		}
		s += " " + v
	}
	return s + "\n"
}

func TestParseStat(t *testing.T) {
	line := statLine("a) (b c)", map[int]string{4: "1", 9: "4194560", 20: "3", 22: "987654", 47: "94558263980032"})
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{PID: 4242, Comm: "a) (b c)", State: 'S', PPid: 1, Flags: 4194560, Threads: 3, StartTime: 987654, StartBrk: 94558263980032}
	if *st != want {
		t.Errorf("parseStat = %+v, want %+v", *st, want)
	}
	for _, bad := range []string{"", "4242 comm S 1", "4242 (x) S 1 2 3", statLine("x", map[int]string{22: "-"})} {
		if _, err := parseStat([]byte(bad)); !errors.Is(err, unix.EINVAL) {
			t.Errorf("parseStat(%q) = %v, want EINVAL", bad, err)
		}
	}
}

func TestParseStatus(t *testing.T) {
	data := "Name:\tmy prog\nUmask:\t0027\nState:\tS (sleeping)\nTgid:\t100\nPPid:\t1\nTracerPid:\t0\n" +
		"Uid:\t1000\t1001\t1002\t1003\nGid:\t10\t11\t12\t13\nThreads:\t4\nSigIgn:\t0000000000001000\n" +
		"SigCgt:\t0000000180000002\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000000000\nKthread:\t0\n"
	st, err := parseStatus([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{Name: "my prog", State: 'S', Tgid: 100, PPid: 1, UID: [3]uint32{1000, 1001, 1002},
		GID: [3]uint32{10, 11, 12}, CapPrm: 0x1ffffffffff, Threads: 4, Umask: 0o027,
		SigIgn: 0x1000, SigCgt: 0x180000002}
	if *st != want {
		t.Errorf("parseStatus = %+v, want %+v", *st, want)
	}
	if _, err := parseStatus([]byte("Tgid:\tx\n")); !errors.Is(err, unix.EINVAL) {
		t.Errorf("bad Tgid: %v, want EINVAL", err)
	}
}

// pagemapEntries encodes pagemap entries.
func pagemapEntries(entries ...uint64) []byte {
	buf := make([]byte, 8*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint64(buf[8*i:], e)
	}
	return buf
}

func TestPageRuns(t *testing.T) {
	const p, s, f = pmPresent, pmSwapped, pmFileShare
	entries := pagemapEntries(p|7, p|8, 0, s|3, p|f|9, p|10, 0, p|f)

	got := pageRuns(nil, entries, 0, false)
	want := []snapshot.Run{{Off: 0, Len: 2 * pageSize}, {Off: 3 * pageSize, Len: 3 * pageSize}, {Off: 7 * pageSize, Len: pageSize}}
	if !slices.EqualFunc(got, want, runEqual) {
		t.Errorf("all present pages: %+v, want %+v", got, want)
	}

	got = pageRuns(nil, entries, 10, true)
	want = []snapshot.Run{{Off: 10 * pageSize, Len: 2 * pageSize}, {Off: 13 * pageSize, Len: pageSize}, {Off: 15 * pageSize, Len: pageSize}}
	if !slices.EqualFunc(got, want, runEqual) {
		t.Errorf("anonymous pages only: %+v, want %+v", got, want)
	}
}

func runEqual(a, b snapshot.Run) bool { return a.Off == b.Off && a.Len == b.Len }

func TestSkipReason(t *testing.T) {
	tests := []struct {
		r    snapshot.Region
		skip bool
	}{
		{snapshot.Region{Path: "[vvar]"}, true},
		{snapshot.Region{Path: "[vvar_vclock]"}, true},
		{snapshot.Region{Path: "[vsyscall]"}, true},
		{snapshot.Region{Path: "[heap]", VmFlags: []string{"rd", "wr", "um"}}, true},
		{snapshot.Region{VmFlags: []string{"rd", "ss"}}, true},
		{snapshot.Region{Path: "/dev/mem", VmFlags: []string{"rd", "io", "pf"}}, true},
		{snapshot.Region{Path: "[heap]", VmFlags: []string{"rd", "wr", "mr", "mw", "me", "ac"}}, false},
		{snapshot.Region{Path: "[vdso]", VmFlags: []string{"rd", "ex"}}, false},
	}
	for _, tt := range tests {
		if got := skipReason(&tt.r); (got != "") != tt.skip {
			t.Errorf("skipReason(%s %v) = %q, want skip %v", tt.r.Path, tt.r.VmFlags, got, tt.skip)
		}
	}
}

func TestRearmSyscall(t *testing.T) {
	tests := []struct {
		name           string
		origRax, rax   uint64
		before         [2]byte
		wantRax        uint64
		wantRipStepped bool
	}{
		{"read ERESTARTSYS", unix.SYS_READ, neg(errRestartSys), syscallInsn, unix.SYS_READ, true},
		{"futex ERESTARTNOINTR", unix.SYS_FUTEX, neg(errRestartNoIntr), syscallInsn, unix.SYS_FUTEX, true},
		{"ppoll ERESTARTNOHAND", unix.SYS_PPOLL, neg(errRestartNoHand), syscallInsn, unix.SYS_PPOLL, true},
		{"nanosleep restart block", unix.SYS_NANOSLEEP, neg(errRestartRestartBlock), syscallInsn, unix.SYS_NANOSLEEP, true},
		{"restart_syscall unknown", unix.SYS_RESTART_SYSCALL, neg(errRestartRestartBlock), syscallInsn, neg(errRestartRestartBlock), false},
		{"finished write", unix.SYS_WRITE, 5, syscallInsn, 5, false},
		{"user space", ^uint64(0), 7, syscallInsn, 7, false},
		{"no syscall insn", unix.SYS_READ, neg(errRestartSys), [2]byte{0x90, 0x90}, neg(errRestartSys), false},
	}
	for _, tt := range tests {
		raw := unix.PtraceRegs{Rip: 0x1002, Rax: tt.rax, Orig_rax: tt.origRax}
		got := rearmSyscall(raw, tt.before)
		wantRip := raw.Rip
		if tt.wantRipStepped {
			wantRip -= 2
		}
		if got.Rax != tt.wantRax || got.Rip != wantRip || got.Orig_rax != tt.origRax {
			t.Errorf("%s: rax %#x rip %#x orig_rax %#x, want rax %#x rip %#x orig_rax kept", tt.name, got.Rax, got.Rip, got.Orig_rax, tt.wantRax, wantRip)
		}
	}
}

func neg(v int64) uint64 { return uint64(-v) }

func TestFdKind(t *testing.T) {
	tests := []struct {
		target string
		mode   uint32
		rdev   uint64
		want   string
	}{
		{"socket:[123]", unix.S_IFSOCK, 0, snapshot.KindSocket},
		{"pipe:[9]", unix.S_IFIFO, 0, snapshot.KindPipe},
		{"anon_inode:[eventfd]", 0, 0, snapshot.KindAnon},
		{"/memfd:buf (deleted)", unix.S_IFREG, 0, snapshot.KindMemfd},
		{"/tmp/x (deleted)", unix.S_IFREG, 0, snapshot.KindDeleted},
		{"/etc", unix.S_IFDIR, 0, snapshot.KindDir},
		{"/dev/pts/3", unix.S_IFCHR, unix.Mkdev(136, 3), snapshot.KindTTY},
		{"/dev/null", unix.S_IFCHR, unix.Mkdev(1, 3), snapshot.KindFile},
		{"/etc/passwd", unix.S_IFREG, 0, snapshot.KindFile},
	}
	for _, tt := range tests {
		if got := fdKind(tt.target, tt.mode, tt.rdev); got != tt.want {
			t.Errorf("fdKind(%q) = %s, want %s", tt.target, got, tt.want)
		}
	}
}
