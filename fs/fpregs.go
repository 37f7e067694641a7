package fs

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Offsets into the XSAVE buffer that PTRACE_GETREGSET NT_X86_XSTATE
// returns on x86-64: the legacy FXSAVE area and the XSAVE header. The
// extended components follow at offsets that the CPU reports (see
// xsaveLayout).
const (
	xsaveLegacySize = 512
	xsaveST         = 32  // st0-st7 (mm0-mm7), 16 bytes apart, 10 used
	xsaveXMM        = 160 // xmm0-xmm15, 16 bytes each
	xsaveXCR0       = 464 // Linux stores XCR0 here in its ptrace and core dump copies
	xsaveXstateBV   = 512 // XSTATE_BV: components not in their initial state
	xsaveXcompBV    = 520 // XCOMP_BV: bit 63 set means the compacted format
)

// XSAVE components, numbered as XCR0 bits, and their sizes in bytes.
const (
	componentYMMHi128 = 2 // upper halves of ymm0-ymm15
	componentOpmask   = 5 // k0-k7
	componentZMMHi256 = 6 // upper halves of zmm0-zmm15
	componentHi16ZMM  = 7 // zmm16-zmm31

	sizeYMMHi128 = 16 * 16
	sizeOpmask   = 8 * 8
	sizeZMMHi256 = 16 * 32
	sizeHi16ZMM  = 16 * 64
)

// xsaveLayout is the offset of each extended component in the standard
// XSAVE format, indexed by component number, 0 for a component the CPU
// lacks.
type xsaveLayout struct {
	offset [8]int
}

// renderFPRegs formats a thread's XSAVE buffer as one "name 0xHEX" line a
// register, with the component offsets of this CPU.
//
// NOTE: a snapshot taken on a CPU whose XSAVE layout differs from this
// one's shows wrong ymm, zmm and k values. Restore rejects such a snapshot
// when its XCR0 differs, but two CPUs may share XCR0 and differ in layout.
func renderFPRegs(xsave []byte) []byte {
	return renderFPRegsLayout(xsave, hostXsaveLayout())
}

// renderFPRegsLayout formats the x87 control words, mxcsr, st0-st7 and
// xmm0-xmm15, then ymm0-ymm15 when XCR0 enables AVX, and zmm0-zmm31 and
// k0-k7 when it enables AVX-512. Vector registers print as one number,
// most significant byte first; a component that XSTATE_BV marks as in its
// initial state prints as zeros.
func renderFPRegsLayout(xsave []byte, layout xsaveLayout) []byte {
	if len(xsave) < xsaveLegacySize {
		return []byte(fmt.Sprintf("# no FPU state: the XSAVE buffer has %d bytes\n", len(xsave)))
	}
	var b strings.Builder
	le := binary.LittleEndian

	fmt.Fprintf(&b, "fcw 0x%04x\n", le.Uint16(xsave[0:]))
	fmt.Fprintf(&b, "fsw 0x%04x\n", le.Uint16(xsave[2:]))
	fmt.Fprintf(&b, "ftw 0x%02x\n", xsave[4])
	fmt.Fprintf(&b, "fop 0x%04x\n", le.Uint16(xsave[6:]))
	fmt.Fprintf(&b, "fip 0x%016x\n", le.Uint64(xsave[8:]))
	fmt.Fprintf(&b, "fdp 0x%016x\n", le.Uint64(xsave[16:]))
	fmt.Fprintf(&b, "mxcsr 0x%08x\n", le.Uint32(xsave[24:]))
	fmt.Fprintf(&b, "mxcsr_mask 0x%08x\n", le.Uint32(xsave[28:]))
	for i := range 8 {
		writeVector(&b, fmt.Sprintf("st%d", i), xsave[xsaveST+16*i:][:10])
	}
	for i := range 16 {
		writeVector(&b, fmt.Sprintf("xmm%d", i), xmm(xsave, i))
	}

	if len(xsave) < xsaveXcompBV+8 {
		return []byte(b.String())
	}
	xcr0 := le.Uint64(xsave[xsaveXCR0:])
	fmt.Fprintf(&b, "xcr0 0x%016x\n", xcr0)
	if le.Uint64(xsave[xsaveXcompBV:])&(1<<63) != 0 {
		b.WriteString("# extended state is in the compacted format, not shown\n")
		return []byte(b.String())
	}

	x := extendedState{buf: xsave, layout: layout, present: le.Uint64(xsave[xsaveXstateBV:]) & xcr0}
	if x.has(componentYMMHi128, sizeYMMHi128) {
		for i := range 16 {
			writeVector(&b, fmt.Sprintf("ymm%d", i), x.ymm(i))
		}
	}
	if x.has(componentYMMHi128, sizeYMMHi128) && x.has(componentOpmask, sizeOpmask) &&
		x.has(componentZMMHi256, sizeZMMHi256) && x.has(componentHi16ZMM, sizeHi16ZMM) {
		for i := range 32 {
			writeVector(&b, fmt.Sprintf("zmm%d", i), x.zmm(i))
		}
		for i := range 8 {
			writeVector(&b, fmt.Sprintf("k%d", i), x.component(componentOpmask, 8*i, 8))
		}
	}
	return []byte(b.String())
}

func xmm(xsave []byte, i int) []byte {
	return xsave[xsaveXMM+16*i:][:16]
}

// extendedState reads registers from the extended components of an XSAVE
// buffer in the standard format, little-endian byte order.
type extendedState struct {
	buf     []byte
	layout  xsaveLayout
	present uint64 // XSTATE_BV, limited to the components XCR0 enables
}

// has reports whether XCR0 enables component and the buffer holds it.
func (x extendedState) has(component, size int) bool {
	xcr0 := binary.LittleEndian.Uint64(x.buf[xsaveXCR0:])
	off := x.layout.offset[component]
	return xcr0&(1<<component) != 0 && off >= xsaveXcompBV+8 && off+size <= len(x.buf)
}

// component returns n bytes at off inside component, or zeros when the
// component is in its initial state.
func (x extendedState) component(component, off, n int) []byte {
	if x.present&(1<<component) == 0 {
		return make([]byte, n)
	}
	return x.buf[x.layout.offset[component]+off:][:n]
}

// ymm assembles ymm i from xmm i (low half) and its YMM_Hi128 part.
func (x extendedState) ymm(i int) []byte {
	return append(slices.Clone(xmm(x.buf, i)), x.component(componentYMMHi128, 16*i, 16)...)
}

// zmm assembles zmm i: for i < 16 from ymm i and its ZMM_Hi256 part, for
// i >= 16 from the Hi16_ZMM component.
func (x extendedState) zmm(i int) []byte {
	if i >= 16 {
		return x.component(componentHi16ZMM, 64*(i-16), 64)
	}
	return append(x.ymm(i), x.component(componentZMMHi256, 32*i, 32)...)
}

// writeVector writes a little-endian register as one hexadecimal number,
// most significant byte first, with every digit.
func writeVector(b *strings.Builder, name string, little []byte) {
	big := make([]byte, len(little))
	for i, v := range little {
		big[len(little)-1-i] = v
	}
	fmt.Fprintf(b, "%s 0x%s\n", name, hex.EncodeToString(big))
}
