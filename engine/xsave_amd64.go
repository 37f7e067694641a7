package engine

import (
	"encoding/binary"
	"sync"

	"github.com/ckptfs/ckptfs/internal/cpuid"
)

const (
	// xstateBVOffset is the offset of XSTATE_BV in the XSAVE header: the
	// components not in their initial state.
	xstateBVOffset = 512
	// xsaveMinSize is the legacy area and the XSAVE header.
	xsaveMinSize = 512 + 64
	// xfeatureTileData is AMX tile data, XSAVE component 18. Linux enables
	// it only for a process that requests it (arch_prctl
	// ARCH_REQ_XCOMP_PERM), and the XSAVE area of any other process ends
	// before it.
	xfeatureTileData = 18
)

// xsaveEnds returns, for each XSAVE component, where it ends in the
// standard (non-compacted) format that ptrace and signal frames use: CPUID
// leaf 0xD, subleaf N, reports the size of component N in EAX and its
// offset in EBX. Components the CPU lacks end at 0.
var xsaveEnds = sync.OnceValue(func() [64]int {
	var ends [64]int
	if maxLeaf, _, _, _ := cpuid.CPUID(0, 0); maxLeaf < 0xd {
		return ends
	}
	for component := 2; component < len(ends); component++ {
		size, offset, _, _ := cpuid.CPUID(0xd, uint32(component))
		if size != 0 {
			ends[component] = int(offset + size)
		}
	}
	return ends
})

// frameXstate returns how many bytes of the NT_X86_XSTATE buffer xstate a
// signal frame carries and the features it claims. ptrace returns the
// XSAVE area at the largest size the CPU supports, but rt_sigreturn falls
// back to restoring only x87 and SSE when a frame claims more than the
// thread's own area holds. On a CPU with AMX that is the case for every
// process that never requested AMX, so the frame leaves tile data out
// unless the thread uses it, which it can only with AMX enabled.
func frameXstate(xstate []byte) (size int, features uint64) {
	features = xstateXCR0(xstate)
	if len(xstate) >= xstateBVOffset+8 {
		inUse := binary.LittleEndian.Uint64(xstate[xstateBVOffset:])
		if inUse&(1<<xfeatureTileData) == 0 {
			features &^= 1 << xfeatureTileData
		}
	}

	size = xsaveMinSize
	ends := xsaveEnds()
	for component := 2; component < len(ends); component++ {
		if features&(1<<component) != 0 {
			size = max(size, ends[component])
		}
	}
	return min(size, len(xstate)), features
}
