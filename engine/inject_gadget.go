package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Machine code an injection runs in the target. Any bytes will do, even
// the middle of another instruction, because execution jumps to them.
var (
	// syscallRetCode is `syscall; ret`, as in glibc's getpid and in the
	// dynamic loader.
	syscallRetCode = []byte{0x0f, 0x05, 0xc3}

	// restorerCodes are `mov $15,%rax; syscall` and `mov $15,%eax;
	// syscall`, the rt_sigreturn trampoline that sigaction installs as
	// sa_restorer (glibc's __restore_rt, Go's runtime.sigreturn).
	restorerCodes = [][]byte{
		{0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05},
		{0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05},
	}
)

// atBase is AT_BASE, the auxiliary vector entry with the address the
// dynamic loader is mapped at.
const atBase = 7

// maxGadgetScan bounds the bytes read from one executable mapping.
const maxGadgetScan = 16 << 20

// gadgets are the code addresses an injection runs in the target.
type gadgets struct {
	syscallRet uint64 // syscallRetCode, or a bare `syscall` when safe is false
	restorer   uint64 // a restorerCodes sequence, 0 when safe is false
	safe       bool   // the injection can leave a frame to return through
}

// addrRange is a page-aligned address range [start, end).
type addrRange struct{ start, end uint64 }

// overlaps reports whether the n bytes at addr lie partly in r.
func (r addrRange) overlaps(addr, n uint64) bool {
	return addr < r.end && r.start < addr+n
}

// findGadgets returns the gadgets, found once per freeze and searched
// again when the injected call would unmap or change the code they are
// in (avoid). Code the kernel mapped at exec comes first: the dynamic
// loader, then the executable, which a restore never unmaps; then libc,
// other executable files and the vDSO. Without `syscall; ret` and a
// restorer, any `syscall` instruction is used and the injection is not
// safe against the daemon's death.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) findGadgets(avoid addrRange) (gadgets, error) {
	g := gadgets{syscallRet: op.syscallIP, restorer: op.restorerIP}
	g.safe = g.restorer != 0
	if g.syscallRet != 0 && !avoid.overlaps(g.syscallRet, 3) && !avoid.overlaps(g.restorer, 9) {
		return g, nil
	}

	regions, err := op.gadgetRegions(avoid)
	if err != nil {
		return gadgets{}, err
	}
	g = op.scanGadgets(regions)
	if g.syscallRet == 0 {
		return gadgets{}, fmt.Errorf("find a syscall instruction in pid %d: %w", op.pid, unix.ENOEXEC)
	}
	if !g.safe {
		op.log.Warn("no `syscall; ret` and rt_sigreturn code found: injected system calls would crash the process if the daemon died during one")
	}
	op.syscallIP, op.restorerIP = g.syscallRet, g.restorer
	return g, nil
}

// scanGadgets searches regions in order for the gadgets.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) scanGadgets(regions []snapshot.Region) gadgets {
	var g gadgets
	var bare uint64
	for _, r := range regions {
		buf := make([]byte, min(r.End-r.Start, maxGadgetScan))
		if err := op.readMem(r.Start, buf); err != nil {
			continue
		}
		if i := bytes.Index(buf, syscallRetCode); i >= 0 && g.syscallRet == 0 {
			g.syscallRet = r.Start + uint64(i)
		}
		if i := bytes.Index(buf, syscallRetCode[:2]); i >= 0 && bare == 0 {
			bare = r.Start + uint64(i)
		}
		for _, code := range restorerCodes {
			if i := bytes.Index(buf, code); i >= 0 && g.restorer == 0 {
				g.restorer = r.Start + uint64(i)
			}
		}
		if g.syscallRet != 0 && g.restorer != 0 {
			g.safe = true
			return g
		}
	}
	return gadgets{syscallRet: bare}
}

// gadgetRegions returns the executable mappings outside avoid in the
// order findGadgets searches them.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) gadgetRegions(avoid addrRange) ([]snapshot.Region, error) {
	raw, err := readProcFile(op.pid, "maps")
	if err != nil {
		return nil, err
	}
	regions, err := parseMaps(raw)
	if err != nil {
		return nil, fmt.Errorf("parse maps of pid %d: %w", op.pid, err)
	}
	interp := op.interpreterPath(regions)
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", op.pid))

	rank := func(r *snapshot.Region) int {
		switch {
		case interp != "" && r.Path == interp:
			return 0
		case exe != "" && r.Path == exe:
			return 1
		case strings.Contains(r.Path, "/libc"):
			return 2
		case strings.HasPrefix(r.Path, "/"):
			return 3
		case r.Path == "[vdso]":
			return 4
		}
		return 5
	}
	var out []snapshot.Region
	for _, r := range regions {
		if len(r.Perms) < 3 || r.Perms[2] != 'x' || rank(&r) == 5 || avoid.overlaps(r.Start, r.End-r.Start) {
			continue
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b snapshot.Region) int { return rank(&a) - rank(&b) })
	return out, nil
}

// interpreterPath returns the path of the dynamic loader, the mapping at
// the AT_BASE address of the process's auxiliary vector, or "" for a
// static executable.
func (op *Op) interpreterPath(regions []snapshot.Region) string {
	auxv, err := readProcFile(op.pid, "auxv")
	if err != nil {
		return ""
	}
	var base uint64
	for i := 0; i+16 <= len(auxv); i += 16 {
		if binary.LittleEndian.Uint64(auxv[i:]) == atBase {
			base = binary.LittleEndian.Uint64(auxv[i+8:])
		}
	}
	for _, r := range regions {
		if base != 0 && r.Start == base {
			return r.Path
		}
	}
	return ""
}

// changedRange returns the range whose code an injected call nr with args
// unmaps or makes non-executable, if any.
func changedRange(nr uintptr, args []uintptr) addrRange {
	arg := func(i int) uint64 {
		if i < len(args) {
			return uint64(args[i])
		}
		return 0
	}
	changes := false
	switch nr {
	case unix.SYS_MUNMAP, unix.SYS_MREMAP:
		changes = true
	case unix.SYS_MMAP:
		changes = arg(3)&unix.MAP_FIXED != 0
	case unix.SYS_MPROTECT:
		changes = arg(2)&unix.PROT_EXEC == 0
	}
	if !changes {
		return addrRange{}
	}
	start := arg(0) &^ (pageSize - 1)
	end := (arg(0) + arg(1) + pageSize - 1) &^ (pageSize - 1)
	return addrRange{start: start, end: end}
}
