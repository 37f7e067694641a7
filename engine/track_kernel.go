package engine

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Userfaultfd and PAGEMAP_SCAN definitions from the kernel's uapi headers
// (linux/userfaultfd.h, linux/fs.h), which x/sys/unix lacks.
const (
	uffdUserModeOnly = 1 // userfaultfd(2) flag: handle user-mode faults only

	uffdAPI              = 0xaa
	uffdioAPI            = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	uffdioRegister       = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	uffdRegisterModeWP   = 1 << 1
	uffdFeatureWPUnpop   = 1 << 13 // unpopulated pages count as write-protected
	uffdFeatureWPAsync   = 1 << 15 // the kernel resolves write faults itself
	uffdTrackingFeatures = uffdFeatureWPUnpop | uffdFeatureWPAsync

	pagemapScanIoctl = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)

	pmScanWPMatching    = 1 << 0 // write-protect the pages that match
	pmScanCheckWPAsync  = 1 << 1 // fail with EPERM on a range not registered async
	pageIsWritten       = 1 << 1
	pmScanArgSize       = 96
	pageRegionEntrySize = 24
)

// uffdioAPIArg is struct uffdio_api.
type uffdioAPIArg struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// uffdioRegisterArg is struct uffdio_register.
type uffdioRegisterArg struct {
	Start  uint64
	Len    uint64
	Mode   uint64
	Ioctls uint64
}

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// pageRegion is struct page_region: a range of pages that share the
// categories of the return mask.
type pageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}

var (
	_ [pmScanArgSize]byte       = [unsafe.Sizeof(pmScanArg{})]byte{}
	_ [pageRegionEntrySize]byte = [unsafe.Sizeof(pageRegion{})]byte{}
)

func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return r, nil
	}
}

// uffdEnableWPAsync sets up a new userfaultfd for asynchronous write
// protection with unpopulated pages counted as protected.
func uffdEnableWPAsync(fd int) error {
	arg := uffdioAPIArg{API: uffdAPI, Features: uffdTrackingFeatures}
	if _, err := ioctlPtr(fd, uffdioAPI, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("UFFDIO_API with asynchronous write protection: %w", err)
	}
	return nil
}

// uffdRegisterWP registers start..end of the userfaultfd's address space
// for write protection.
func uffdRegisterWP(fd int, start, end uint64) error {
	arg := uffdioRegisterArg{Start: start, Len: end - start, Mode: uffdRegisterModeWP}
	if _, err := ioctlPtr(fd, uffdioRegister, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER %#x-%#x: %w", start, end, err)
	}
	return nil
}

// scanRequest is one PAGEMAP_SCAN over start..end.
type scanRequest struct {
	start, end uint64
	flags      uint64 // pmScan*
	mask       uint64 // a page matches when it has all of these categories
	ret        uint64 // categories reported in each range
}

// pagemapScan runs req on the pagemap file fd and calls found for every
// range of matching pages, in address order, reusing vec as the buffer.
// found may be nil for a scan that only write-protects.
func pagemapScan(fd int, req scanRequest, vec []pageRegion, found func(pageRegion)) error {
	for start := req.start; start < req.end; {
		arg := pmScanArg{
			Size: pmScanArgSize, Flags: req.flags, Start: start, End: req.end,
			CategoryMask: req.mask, ReturnMask: req.ret,
		}
		if found != nil {
			arg.Vec, arg.VecLen = uint64(uintptr(unsafe.Pointer(&vec[0]))), uint64(len(vec))
		}
		n, err := ioctlPtr(fd, pagemapScanIoctl, unsafe.Pointer(&arg))
		if err != nil {
			return fmt.Errorf("PAGEMAP_SCAN %#x-%#x: %w", start, req.end, err)
		}
		if arg.WalkEnd <= start || arg.WalkEnd > req.end {
			return fmt.Errorf("PAGEMAP_SCAN %#x-%#x stopped at %#x: %w", start, req.end, arg.WalkEnd, unix.EIO)
		}
		// A scan that stops early may report its last range past the
		// point it stopped at; the next call reports those pages again.
		for _, r := range vec[:n] {
			if r.Start < arg.WalkEnd {
				r.End = min(r.End, arg.WalkEnd)
				found(r)
			}
		}
		start = arg.WalkEnd
	}
	return nil
}
