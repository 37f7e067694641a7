package engine

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// anon returns a saved private anonymous region.
func anon(start, end uint64, perms string) snapshot.Region {
	return snapshot.Region{Start: start, End: end, Perms: perms, Saved: true}
}

// file returns a saved private mapping of inode ino at offset off.
func file(start, end uint64, perms string, off, ino uint64) snapshot.Region {
	return snapshot.Region{Start: start, End: end, Perms: perms, Offset: off, Major: 8, Minor: 1, Inode: ino, Path: fmt.Sprintf("/lib/f%d.so", ino), Saved: true}
}

// named returns a region with a pseudo-path such as [heap].
func named(start, end uint64, perms, path string) snapshot.Region {
	r := anon(start, end, perms)
	r.Path = path
	return r
}

func spans(ops []layoutOp) []string {
	var out []string
	for _, op := range ops {
		out = append(out, fmt.Sprintf("%x-%x", op.start, op.end))
	}
	return out
}

func TestMergeLayout(t *testing.T) {
	regions := []snapshot.Region{
		file(0x1000, 0x2000, "r--p", 0, 7),
		file(0x2000, 0x3000, "r--p", 0x1000, 7), // continues the file: merged
		file(0x3000, 0x4000, "r--p", 0x5000, 7), // jumps in the file: kept apart
		anon(0x4000, 0x5000, "rw-p"),
		anon(0x5000, 0x6000, "rw-p"), // split by the kernel: merged
		anon(0x6000, 0x7000, "r--p"), // other protection
	}
	got := mergeLayout(regions)
	var bounds []string
	for _, e := range got {
		bounds = append(bounds, fmt.Sprintf("%x-%x", e.start, e.end))
	}
	want := []string{"1000-3000", "3000-4000", "4000-6000", "6000-7000"}
	if !reflect.DeepEqual(bounds, want) {
		t.Errorf("merged %v, want %v", bounds, want)
	}
}

func TestPlanLayout(t *testing.T) {
	vdso := named(0xf000, 0xf100, "r-xp", "[vdso]")
	snap := []snapshot.Region{
		file(0x1000, 0x3000, "r--p", 0, 7),
		named(0x3000, 0x5000, "rw-p", "[heap]"),
		anon(0x10000, 0x14000, "rw-p"), // unmapped since
		anon(0x20000, 0x24000, "rw-p"), // protected since
		file(0x30000, 0x32000, "r--p", 0, 9),
		vdso,
		named(0x40000, 0x42000, "rw-p", "[stack]"),
	}
	cur := []snapshot.Region{
		file(0x1000, 0x3000, "r--p", 0, 7),
		named(0x3000, 0x8000, "rw-p", "[heap]"), // grown
		anon(0x20000, 0x22000, "rw-p"),
		anon(0x22000, 0x24000, "r--p"),
		anon(0x30000, 0x32000, "rw-p"), // replaced a file mapping
		anon(0x50000, 0x51000, "rw-p"), // new
		vdso,
		named(0x3e000, 0x42000, "rw-p", "[stack]"), // grown down
	}
	plan, err := planLayout(mergeLayout(cur), mergeLayout(snap))
	if err != nil {
		t.Fatal(err)
	}

	if got, want := spans(plan.unmaps), []string{"30000-32000", "50000-51000"}; !reflect.DeepEqual(got, want) {
		t.Errorf("unmaps %v, want %v", got, want)
	}
	if got, want := spans(plan.creates), []string{"10000-14000", "30000-32000"}; !reflect.DeepEqual(got, want) {
		t.Errorf("creates %v, want %v", got, want)
	}
	if plan.creates[1].entry.inode != 9 || plan.creates[1].entry.fileOffset(0x30000) != 0 {
		t.Errorf("re-created file mapping %+v, want inode 9 at offset 0", plan.creates[1].entry)
	}
	if got, want := spans(plan.protects), []string{"22000-24000"}; !reflect.DeepEqual(got, want) {
		t.Errorf("protects %v, want %v", got, want)
	}
	wantRemoved := []span{{0x5000, 0x8000}, {0x30000, 0x32000}, {0x50000, 0x51000}}
	if !reflect.DeepEqual(plan.removed, wantRemoved) {
		t.Errorf("removed %x, want %x", plan.removed, wantRemoved)
	}
	wantFresh := []span{{0x10000, 0x14000}, {0x30000, 0x32000}}
	if !reflect.DeepEqual(plan.fresh, wantFresh) {
		t.Errorf("fresh %x, want %x", plan.fresh, wantFresh)
	}
	wantKept := []span{{0x1000, 0x5000}, {0x20000, 0x24000}, {0x40000, 0x42000}}
	if !reflect.DeepEqual(plan.kept, wantKept) {
		t.Errorf("kept %x, want %x", plan.kept, wantKept)
	}
}

func TestPlanLayoutShared(t *testing.T) {
	shared := file(0x1000, 0x2000, "rw-s", 0, 5)
	plan, err := planLayout(mergeLayout([]snapshot.Region{shared}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.unmaps) != 0 || len(plan.leftAlone) != 1 {
		t.Errorf("new shared mapping: unmaps %v, left alone %v; want it left mapped and listed", spans(plan.unmaps), plan.leftAlone)
	}

	anonShared := snapshot.Region{Start: 0x1000, End: 0x2000, Perms: "rw-s", Inode: 42, Path: "/dev/zero (deleted)", Saved: true}
	_, err = planLayout(nil, mergeLayout([]snapshot.Region{anonShared}))
	if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "1000-2000") {
		t.Errorf("re-creating shared anonymous memory: %v, want EOPNOTSUPP naming the mapping", err)
	}
}

func TestPlanLayoutRejectsDeletedFile(t *testing.T) {
	gone := file(0x1000, 0x2000, "r--p", 0, 5)
	gone.Path = "/tmp/lib.so (deleted)"
	_, err := planLayout(nil, mergeLayout([]snapshot.Region{gone}))
	if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "/tmp/lib.so") {
		t.Errorf("re-creating a deleted file mapping: %v, want EOPNOTSUPP naming it", err)
	}
}

func TestCheckCreates(t *testing.T) {
	snap := []snapshot.Region{file(0x1000, 0x2000, "r--p", 0, 9)}
	plan, err := planLayout(nil, mergeLayout(snap))
	if err != nil {
		t.Fatal(err)
	}
	dev := unix.Mkdev(8, 1)
	same := func(string) (fileIdentity, error) { return fileIdentity{dev: dev, ino: 9}, nil }
	if err := checkCreates(plan, same); err != nil {
		t.Errorf("same inode: %v", err)
	}
	other := func(string) (fileIdentity, error) { return fileIdentity{dev: dev, ino: 10}, nil }
	if err := checkCreates(plan, other); !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "/lib/f9.so") {
		t.Errorf("replaced file: %v, want EOPNOTSUPP naming the path", err)
	}
}

// fakeProbe stats from a table of paths and descriptors.
func fakeProbe(paths map[string]fileIdentity, fds map[int]fileIdentity) fdProbe {
	return fdProbe{
		statPath: func(p string) (fileIdentity, error) {
			if id, ok := paths[p]; ok {
				return id, nil
			}
			return fileIdentity{}, unix.ENOENT
		},
		statFD: func(n int) (fileIdentity, error) {
			if id, ok := fds[n]; ok {
				return id, nil
			}
			return fileIdentity{}, unix.EBADF
		},
	}
}

func regularFD(num int, path string, ino uint64, pos int64, flags uint32) snapshot.FD {
	return snapshot.FD{Num: num, Kind: snapshot.KindFile, Target: path, Pos: pos, Flags: flags, Dev: 3, Ino: ino, Mode: unix.S_IFREG | 0o644}
}

func TestPlanFDs(t *testing.T) {
	pipe := snapshot.FD{Num: 1, Kind: snapshot.KindPipe, Target: "pipe:[77]", Dev: 12, Ino: 77, Mode: unix.S_IFIFO}
	saved := []snapshot.FD{
		pipe,
		regularFD(3, "/data/a", 10, 100, unix.O_RDONLY),
		regularFD(4, "/data/b", 11, 50, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC),
		regularFD(5, "/data/c", 12, 9999, unix.O_RDWR),
		regularFD(7, "/data/d", 14, 900, unix.O_RDONLY),
	}
	cur := []snapshot.FD{
		pipe,
		regularFD(3, "/data/a", 10, 200, unix.O_RDONLY|unix.O_NONBLOCK),
		regularFD(5, "/data/c", 12, 9999, unix.O_RDWR),
		regularFD(6, "/data/new", 13, 0, unix.O_RDONLY),
		regularFD(7, "/data/d", 14, 10, unix.O_RDONLY),
	}
	probe := fakeProbe(
		map[string]fileIdentity{"/data/b": {dev: 3, ino: 11, size: 80, mode: unix.S_IFREG | 0o644}},
		map[int]fileIdentity{3: {dev: 3, ino: 10, size: 500}, 5: {dev: 3, ino: 12, size: 10}, 7: {dev: 3, ino: 14, size: 20}},
	)
	steps, warnings, err := planFDs(saved, cur, probe)
	if err != nil {
		t.Fatal(err)
	}

	got := map[int]string{}
	for _, st := range steps {
		got[st.num] = fmt.Sprintf("reopen=%v seek=%v setfl=%v setfd=%v close=%v", st.reopen, st.seek, st.setFlags, st.setFD, st.close)
		if st.num != 7 && st.warning != "" {
			t.Errorf("fd %d step warns %q, want no warning", st.num, st.warning)
		}
		if st.num == 7 && !strings.Contains(st.warning, "fd 7") {
			t.Errorf("fd 7 step warns %q, want its offset 900 past the end of a 20-byte file", st.warning)
		}
	}
	want := map[int]string{
		3: "reopen=false seek=true setfl=true setfd=false close=false",
		4: "reopen=true seek=true setfl=false setfd=false close=false",
		6: "reopen=false seek=false setfl=false setfd=false close=true",
		7: "reopen=false seek=true setfl=false setfd=false close=false",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("steps\n%v\nwant\n%v", got, want)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "fd 5") {
		t.Errorf("warnings %q, want one naming fd 5 past the end of its file", warnings)
	}
	if flags := reopenFlags(&saved[2]); flags&(unix.O_CREAT|unix.O_TRUNC|unix.O_EXCL) != 0 || flags&unix.O_APPEND == 0 {
		t.Errorf("reopen flags %#o, want O_APPEND kept and no O_CREAT, O_TRUNC, O_EXCL", flags)
	}
}

func TestPlanFDsRejects(t *testing.T) {
	cases := []struct {
		name  string
		saved snapshot.FD
		cur   []snapshot.FD
		paths map[string]fileIdentity
		want  string
	}{
		{"pipe closed", snapshot.FD{Num: 4, Kind: snapshot.KindPipe, Target: "pipe:[9]", Ino: 9, Mode: unix.S_IFIFO}, nil, nil, "fd 4 (pipe pipe:[9])"},
		{"socket replaced", snapshot.FD{Num: 5, Kind: snapshot.KindSocket, Target: "socket:[9]", Ino: 9, Mode: unix.S_IFSOCK},
			[]snapshot.FD{{Num: 5, Kind: snapshot.KindSocket, Target: "socket:[10]", Ino: 10, Mode: unix.S_IFSOCK}}, nil, "fd 5 (socket socket:[9])"},
		{"deleted file closed", snapshot.FD{Num: 6, Kind: snapshot.KindDeleted, Target: "/tmp/x (deleted)", Ino: 9, Mode: unix.S_IFREG}, nil, nil, "fd 6 (deleted"},
		{"file gone", regularFD(7, "/data/gone", 9, 0, 0), nil, nil, "fd 7 "},
		{"file replaced", regularFD(8, "/data/f", 9, 0, 0), nil, map[string]fileIdentity{"/data/f": {dev: 3, ino: 99}}, "fd 8 "},
		{"FIFO with the file's inode", regularFD(9, "/data/g", 9, 0, 0), nil,
			map[string]fileIdentity{"/data/g": {dev: 3, ino: 9, mode: unix.S_IFIFO | 0o644}}, "now another file (FIFO inode 9, was regular file inode 9)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := planFDs([]snapshot.FD{c.saved}, c.cur, fakeProbe(c.paths, nil))
			var rej *RejectError
			if !errors.As(err, &rej) || rej.Errno != unix.EOPNOTSUPP || !strings.Contains(err.Error(), c.want) {
				t.Errorf("planFDs: %v, want EOPNOTSUPP RejectError containing %q", err, c.want)
			}
		})
	}
}

func TestCheckThreads(t *testing.T) {
	img := &snapshot.Image{Threads: []snapshot.Thread{{TID: 10}, {TID: 11}, {TID: 12}}}
	if err := checkThreads([]int{10, 11, 12}, img); err != nil {
		t.Errorf("same threads: %v", err)
	}
	err := checkThreads([]int{10, 12, 13}, img)
	if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "created since: [13]") || !strings.Contains(err.Error(), "ended since: [11]") {
		t.Errorf("changed threads: %v, want EOPNOTSUPP naming 13 created and 11 ended", err)
	}
}

// negErrno returns -errno as rax holds it.
func negErrno(errno int) uint64 { return uint64(-int64(errno)) }

func TestResumeRegs(t *testing.T) {
	th := &snapshot.Thread{}
	th.Regs.Rip, th.Regs.Rax, th.Regs.Orig_rax = 0x1000, unix.SYS_READ, unix.SYS_READ
	regs, err := resumeRegs(th, liveStop{})
	if err != nil {
		t.Fatalf("resume registers: %v", err)
	}
	if regs.Orig_rax != ^uint64(0) || regs.Rip != 0x1000 || regs.Rax != unix.SYS_READ {
		t.Errorf("resume registers rip %#x rax %d orig_rax %#x, want rip 0x1000 rax 0 orig_rax -1", regs.Rip, regs.Rax, regs.Orig_rax)
	}
	if th.Regs.Orig_rax != unix.SYS_READ {
		t.Errorf("resumeRegs changed the image's registers")
	}
}

// TestResumeRegsRestartSyscall covers a thread captured inside
// restart_syscall at rip 0x1002, and where it may be stopped at restore.
func TestResumeRegsRestartSyscall(t *testing.T) {
	th := &snapshot.Thread{TID: 10}
	th.RawRegs.Rip, th.RawRegs.Rax, th.RawRegs.Orig_rax = 0x1002, negErrno(errRestartRestartBlock), unix.SYS_RESTART_SYSCALL
	th.Regs = th.RawRegs

	live := func(rip, rax, origRax uint64, before [2]byte) liveStop {
		var l liveStop
		l.regs.Rip, l.regs.Rax, l.regs.Orig_rax, l.before = rip, rax, origRax, before
		return l
	}
	cases := []struct {
		name string
		live liveStop
		want string // "" when restart_syscall is entered again, else part of the reason
	}{
		{"inside restart_syscall", live(0x1002, negErrno(errRestartRestartBlock), unix.SYS_RESTART_SYSCALL, syscallInsn), ""},
		{"inside the original call", live(0x1002, negErrno(errRestartRestartBlock), unix.SYS_CLOCK_NANOSLEEP, syscallInsn), ""},
		{"other call site", live(0x2002, negErrno(errRestartRestartBlock), unix.SYS_CLOCK_NANOSLEEP, syscallInsn), "stopped at 0x2002"},
		{"no syscall instruction", live(0x1002, negErrno(errRestartRestartBlock), unix.SYS_CLOCK_NANOSLEEP, [2]byte{}), "stopped at 0x1002"},
		{"other restart", live(0x1002, negErrno(errRestartNoHand), unix.SYS_PAUSE, syscallInsn), "no restart"},
		{"call returned", live(0x1002, 0, unix.SYS_CLOCK_NANOSLEEP, syscallInsn), "no restart"},
		{"outside a call", live(0x1002, negErrno(errRestartRestartBlock), ^uint64(0), syscallInsn), "no restart"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			regs, err := resumeRegs(th, c.live)
			if c.want != "" {
				if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "thread 10") || !strings.Contains(err.Error(), c.want) {
					t.Errorf("resume registers: %v, want EOPNOTSUPP naming thread 10 and %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("resume registers: %v", err)
			}
			if regs.Rax != unix.SYS_RESTART_SYSCALL || regs.Rip != 0x1000 || regs.Orig_rax != ^uint64(0) {
				t.Errorf("resume registers rip %#x rax %d orig_rax %#x, want rip 0x1000 rax %d orig_rax -1",
					regs.Rip, regs.Rax, regs.Orig_rax, unix.SYS_RESTART_SYSCALL)
			}
		})
	}
}

// TestResumeRegsReissues covers a thread captured inside nanosleep with a
// restart through restart_syscall pending: capture already moved it onto
// its `syscall` instruction, and it resumes there wherever it is now.
func TestResumeRegsReissues(t *testing.T) {
	th := &snapshot.Thread{TID: 10}
	th.RawRegs.Rip, th.RawRegs.Rax, th.RawRegs.Orig_rax = 0x1002, negErrno(errRestartRestartBlock), unix.SYS_NANOSLEEP
	th.Regs = rearmSyscall(th.RawRegs, syscallInsn)

	var live liveStop
	live.regs.Rip, live.regs.Rax, live.regs.Orig_rax = 0x1002, negErrno(errRestartRestartBlock), unix.SYS_RESTART_SYSCALL
	regs, err := resumeRegs(th, live)
	if err != nil {
		t.Fatalf("resume registers: %v", err)
	}
	if regs.Rax != unix.SYS_NANOSLEEP || regs.Rip != 0x1000 || regs.Orig_rax != ^uint64(0) {
		t.Errorf("resume registers rip %#x rax %d orig_rax %#x, want rip 0x1000 rax %d orig_rax -1",
			regs.Rip, regs.Rax, regs.Orig_rax, unix.SYS_NANOSLEEP)
	}
}

func TestMarkRuns(t *testing.T) {
	runs := []snapshot.Run{{Off: 0, Len: pageSize}, {Off: 3 * pageSize, Len: 2 * pageSize}, {Off: 9 * pageSize, Len: pageSize}}
	inRun := make([]bool, 6)
	markRuns(inRun, runs, 2*pageSize) // pages 2..7
	want := []bool{false, true, true, false, false, false}
	if !reflect.DeepEqual(inRun, want) {
		t.Errorf("pages 2-7 in runs %v, want %v", inRun, want)
	}
}

func TestCheckXCR0(t *testing.T) {
	xstate := make([]byte, 1024)
	xstate[xcr0Offset] = 0xe7
	img := &snapshot.Image{XCR0: 0xe7}
	if err := checkXCR0(img, xstate); err != nil {
		t.Errorf("same XCR0: %v", err)
	}
	img.XCR0 = 0x7
	if err := checkXCR0(img, xstate); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("different XCR0: %v, want EOPNOTSUPP", err)
	}
}

func TestPlanFDsFileDeletedSinceCapture(t *testing.T) {
	saved := []snapshot.FD{regularFD(3, "/data/log", 10, 100, unix.O_WRONLY)}
	deleted := regularFD(3, "/data/log (deleted)", 10, 400, unix.O_WRONLY)
	deleted.Kind = snapshot.KindDeleted
	probe := fakeProbe(nil, map[int]fileIdentity{3: {dev: 3, ino: 10, size: 400}})

	steps, _, err := planFDs(saved, []snapshot.FD{deleted}, probe)
	if err != nil {
		t.Fatalf("planFDs: %v, want the unlinked but open file kept", err)
	}
	if len(steps) != 1 || steps[0].reopen || !steps[0].seek {
		t.Errorf("steps %+v, want one seek of fd 3 and no reopen", steps)
	}
}
