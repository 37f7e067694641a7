package engine

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// iovBatch is the number of ranges passed to one process_vm_readv, the
// kernel's IOV_MAX.
const iovBatch = 1024

// copyRuns reads the bytes of every run of region r into Run.Data, with
// process_vm_readv in batches and, for a batch it cannot read whole (a
// page without read permission, for example), through /proc/PID/mem.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) copyRuns(r *snapshot.Region) error {
	var total uint64
	for _, run := range r.Runs {
		total += run.Len
	}
	buf := make([]byte, total)

	for i, pos := 0, uint64(0); i < len(r.Runs); i++ {
		r.Runs[i].Data = buf[pos : pos+r.Runs[i].Len : pos+r.Runs[i].Len]
		pos += r.Runs[i].Len
	}
	for first := 0; first < len(r.Runs); first += iovBatch {
		if err := op.copyBatch(r.Start, r.Runs[first:min(first+iovBatch, len(r.Runs))]); err != nil {
			return err
		}
	}
	return nil
}

// copyBatch fills the Data of up to iovBatch runs of a region at base.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) copyBatch(base uint64, runs []snapshot.Run) error {
	local := make([]unix.Iovec, len(runs))
	remote := make([]unix.RemoteIovec, len(runs))
	var want int
	for i, run := range runs {
		local[i].Base = &run.Data[0]
		local[i].SetLen(len(run.Data))
		remote[i] = unix.RemoteIovec{Base: uintptr(base + run.Off), Len: len(run.Data)}
		want += len(run.Data)
	}

	n, err := unix.ProcessVMReadv(op.pid, local, remote, 0)
	if err == nil && n == want {
		return nil
	}
	for _, run := range runs {
		if err := op.readMem(base+run.Off, run.Data); err != nil {
			return fmt.Errorf("copy memory of pid %d: %w", op.pid, err)
		}
	}
	return nil
}
