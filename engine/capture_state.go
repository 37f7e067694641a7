package engine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// captureThreads reads the registers, xstate, signal mask and rseq
// registration of every thread, main thread first, and the XCR0 of the
// main thread's xstate. Regs are re-armed to re-enter an interrupted
// system call (see rearmSyscall); RawRegs are as the kernel reported them.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) captureThreads(img *snapshot.Image) error {
	img.Threads = make([]snapshot.Thread, len(op.threads))
	for i, th := range op.threads {
		if err := op.captureThread(th, &img.Threads[i]); err != nil {
			return err
		}
	}

	img.XCR0 = xstateXCR0(img.Threads[0].Xstate)
	if img.XCR0 == 0 {
		return fmt.Errorf("xstate of pid %d is %d bytes, too short for XCR0: %w", op.pid, len(img.Threads[0].Xstate), unix.EINVAL)
	}
	return nil
}

// captureThread reads the state of one thread.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) captureThread(th *thread, out *snapshot.Thread) error {
	raw, err := th.getRegs()
	if err != nil {
		return err
	}
	if !is64bitMode(&raw) {
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("tid %d of pid %d runs 32-bit code (cs %#x), which is not supported", th.tid, op.pid, raw.Cs))
	}
	var before [2]byte
	if raw.Rip >= 2 {
		// An unreadable rip-2 only means there is no syscall to re-arm.
		_ = op.readMem(raw.Rip-2, before[:])
	}

	out.TID = th.tid
	out.RawRegs = raw
	out.Regs = rearmSyscall(raw, before)
	if out.Xstate, err = th.getXstate(); err != nil {
		return err
	}
	if out.SigMask, err = th.getSigmask(); err != nil {
		return err
	}
	// The status read that rules out a pending signal happens only for a
	// thread in such a wait, since it lengthens the freeze.
	if interruptedWait(&raw) && !signalWaiting(op.pid, th.tid) {
		out.Regs = rearmWait(out.Regs, before)
	}
	if out.Rseq, err = th.getRseq(); err != nil {
		return err
	}
	return nil
}

// captureMemory decides which regions may be read and copies their saved
// pages into Run.Data.
//
// NOTE: the pages are copied into the daemon while the process is frozen,
// so the freeze grows with the memory saved. A copy-on-write clone of the
// process, read after the thaw, is the planned improvement.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) captureMemory(img *snapshot.Image) error {
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", op.pid))
	if err != nil {
		return fmt.Errorf("open pagemap of pid %d: %w", op.pid, err)
	}
	defer pagemap.Close()

	for i := range img.Regions {
		r := &img.Regions[i]
		if r.SkipReason = skipReason(r); r.SkipReason != "" {
			continue
		}
		if r.Runs, err = regionRuns(pagemap, r); err != nil {
			return fmt.Errorf("pid %d: %w", op.pid, err)
		}
		if err := op.copyRuns(r); err != nil {
			return fmt.Errorf("region %#x-%#x %s: %w", r.Start, r.End, r.Path, err)
		}
		r.Saved = true
	}
	return nil
}
