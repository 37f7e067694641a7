package engine

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// readMemFast fills p from the target's memory at addr with one
// process_vm_readv, which is faster than /proc/PID/mem, and falls back to
// readMem where that fails (pages without read permission, for example).
// Unlike readMem it may run on any goroutine once /proc/PID/mem is open.
//
// Precondition: all threads stopped; op.openMem succeeded.
func (op *Op) readMemFast(addr uint64, p []byte) error {
	local := []unix.Iovec{{Base: &p[0]}}
	local[0].SetLen(len(p))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	if n, err := unix.ProcessVMReadv(op.pid, local, remote, 0); err == nil && n == len(p) {
		return nil
	}
	return op.readMem(addr, p)
}

// writeChunks writes chunks into the target's memory, up to iovBatch
// chunks per process_vm_writev. That call stops at the first page it may
// not write, such as a read-only page. The rest of that batch then goes
// through /proc/PID/mem, which writes such pages too.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) writeChunks(chunks []memChunk) error {
	local := make([]unix.Iovec, 0, iovBatch)
	remote := make([]unix.RemoteIovec, 0, iovBatch)
	for first := 0; first < len(chunks); first += iovBatch {
		batch := chunks[first:min(first+iovBatch, len(chunks))]
		local, remote = local[:0], remote[:0]
		for _, c := range batch {
			iov := unix.Iovec{Base: &c.data[0]}
			iov.SetLen(len(c.data))
			local = append(local, iov)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(c.addr), Len: len(c.data)})
		}

		n, err := unix.ProcessVMWritev(op.pid, local, remote, 0)
		if err != nil {
			n = 0
		}
		if err := op.writeRest(batch, n); err != nil {
			return err
		}
	}
	return nil
}

// writeRest writes chunks through /proc/PID/mem, skipping their first
// done bytes, which are written already.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) writeRest(chunks []memChunk, done int) error {
	for _, c := range chunks {
		if done >= len(c.data) {
			done -= len(c.data)
			continue
		}
		if err := op.writeMem(c.addr+uint64(done), c.data[done:]); err != nil {
			return err
		}
		done = 0
	}
	return nil
}

// dropPages discards the pages of spans with injected
// madvise(MADV_DONTNEED), so that anonymous pages read as zeros and
// private copies of file pages as the file again.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) dropPages(spans []span) error {
	for _, sp := range spans {
		if _, err := op.syscall(op.threads[0], unix.SYS_MADVISE, uintptr(sp.start), uintptr(sp.end-sp.start), unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("drop pages %x-%x: %w", sp.start, sp.end, err)
		}
	}
	return nil
}
