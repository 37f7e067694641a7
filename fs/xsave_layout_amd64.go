package fs

import (
	"sync"

	"github.com/ckptfs/ckptfs/internal/cpuid"
)

// hostXsaveLayout returns where this CPU puts each XSAVE component in the
// standard (non-compacted) format: CPUID leaf 0xD, subleaf N, reports the
// size of component N in EAX and its offset in EBX. The offsets differ
// between vendors: AMD processors without MPX put the AVX-512 opmask at
// byte 832, Intel ones at byte 1088.
var hostXsaveLayout = sync.OnceValue(func() xsaveLayout {
	var layout xsaveLayout
	if maxLeaf, _, _, _ := cpuid.CPUID(0, 0); maxLeaf < 0xd {
		return layout
	}
	for component := range layout.offset {
		if component < 2 {
			continue // x87 and SSE live in the legacy area
		}
		size, offset, _, _ := cpuid.CPUID(0xd, uint32(component))
		if size != 0 {
			layout.offset[component] = int(offset)
		}
	}
	return layout
})
