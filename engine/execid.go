package engine

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// atRandom is the auxiliary vector key of the 16 random bytes the kernel
// places on the stack of every new program image.
const atRandom = 25

// readExecID returns the 16 bytes at AT_RANDOM of process pid, in hex. The
// kernel draws them anew at every execve, so they tell a process that ran
// the same executable again apart from the one captured, even with address
// randomization off, where the executable, heap and stack addresses repeat.
// A process could overwrite the bytes, but the C library only reads them.
func readExecID(pid int) (string, error) {
	auxv, err := os.ReadFile(fmt.Sprintf("/proc/%d/auxv", pid))
	if err != nil {
		return "", fmt.Errorf("read auxv of pid %d: %w", pid, errnoOrESRCH(err))
	}
	addr, ok := auxvValue(auxv, atRandom)
	if !ok {
		return "", nil
	}

	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return "", fmt.Errorf("open memory of pid %d: %w", pid, errnoOrESRCH(err))
	}
	defer mem.Close()
	var random [16]byte
	if _, err := mem.ReadAt(random[:], int64(addr)); err != nil {
		return "", fmt.Errorf("read AT_RANDOM bytes of pid %d at %#x: %w", pid, addr, unix.EIO)
	}
	return hex.EncodeToString(random[:]), nil
}

// auxvValue returns the value of key in an x86-64 auxiliary vector: pairs of
// little-endian 64-bit words ending with AT_NULL.
func auxvValue(auxv []byte, key uint64) (uint64, bool) {
	for i := 0; i+16 <= len(auxv); i += 16 {
		k := binary.LittleEndian.Uint64(auxv[i:])
		if k == 0 {
			break
		}
		if k == key {
			return binary.LittleEndian.Uint64(auxv[i+8:]), true
		}
	}
	return 0, false
}

// exitedDuring turns the error of an operation on pid into one wrapping
// ESRCH when the process exited or began to exit meanwhile, because
// then the failure (an EIO from reading its memory, an ENOENT from /proc)
// only reflects the exit. The original error stays in the text.
func exitedDuring(pid int, err error) error {
	if err == nil || errors.Is(err, unix.ESRCH) || !Exiting(pid) {
		return err
	}
	return fmt.Errorf("pid %d exited during the operation (%v): %w", pid, err, unix.ESRCH)
}
