package engine

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfoSize is the size of the kernel's siginfo_t.
const siginfoSize = 128

// describeSiginfo returns the code and fault address of the signal that
// tid is stopped for, for error messages, or why they cannot be read.
//
// Precondition: called on the op's locked thread; tid is in a
// signal-delivery stop.
func describeSiginfo(tid int) string {
	var si [siginfoSize]byte
	if _, err := ptracePtr(unix.PTRACE_GETSIGINFO, tid, 0, unsafe.Pointer(&si[0])); err != nil {
		return fmt.Sprintf("siginfo unreadable: %v", err)
	}
	code := int32(binary.LittleEndian.Uint32(si[8:]))
	addr := binary.LittleEndian.Uint64(si[16:])
	return fmt.Sprintf("si_code %d, address %#x", code, addr)
}
