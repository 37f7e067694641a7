package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// kernelReadAheadKiB is the read-ahead window of a mount's backing device:
// how far the kernel reads ahead of a sequential reader of a memory file,
// in requests of up to maxWrite. A window of several requests keeps several
// READs in flight, so frames decode on several cores at once, and large
// requests cost less CPU time per byte. FUSE lets a server only lower the
// kernel's default of 128 KiB at init, so Mount raises it through sysfs
// afterwards. With BenchmarkReadMemoryCold on a 2-core VM, 4 MiB read 1.4
// to 1.6 times as fast as 128 KiB, and 1 MiB, 2 MiB or 8 MiB no faster.
//
// NOTE: a page fault in a mapped memory file may read this much around the
// page, which decodes up to 65 frames of 64 KiB for one page.
const kernelReadAheadKiB = 4096

// setKernelReadAhead sets the read-ahead window of the ckptfs mount at
// mountpoint to kib KiB. It needs root, the owner of the sysfs file.
func setKernelReadAhead(mountpoint string, kib int) error {
	dev, err := mountDevice(mountpoint)
	if err != nil {
		return err
	}

	path := filepath.Join("/sys/class/bdi", dev, "read_ahead_kb")
	if err := os.WriteFile(path, []byte(strconv.Itoa(kib)), 0o644); err != nil {
		return fmt.Errorf("set read-ahead of %s: %w", mountpoint, err)
	}
	return nil
}

// mountDevice returns the device number, "MAJOR:MINOR", of the newest
// ckptfs mount at mountpoint.
func mountDevice(mountpoint string) (string, error) {
	_, dev, err := ckptfsMount(mountpoint)
	if err != nil {
		return "", fmt.Errorf("find device of %s: %w", mountpoint, err)
	}
	if dev == "" {
		return "", fmt.Errorf("find device of %s: no ckptfs mount there in /proc/self/mountinfo", mountpoint)
	}
	return dev, nil
}
