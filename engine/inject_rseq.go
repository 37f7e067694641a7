package engine

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// rseqFlagUnregister is RSEQ_FLAG_UNREGISTER of rseq(2).
const rseqFlagUnregister = 1

// setRseq ends th's rseq registration cur, if any, and registers want, if
// any, each by an injected rseq(2) that th runs itself: the kernel only
// accepts registrations of the calling thread.
//
// A registration must end before the memory of its area is unmapped:
// on every return to user space after a preemption the kernel writes the
// area and forces SIGSEGV on the thread when it cannot.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) setRseq(th *thread, cur, want snapshot.Rseq) error {
	if cur == want {
		return nil
	}
	if cur.Addr != 0 {
		_, err := op.syscall(th, unix.SYS_RSEQ, uintptr(cur.Addr), uintptr(cur.Size), rseqFlagUnregister, uintptr(cur.Signature))
		if err != nil {
			return fmt.Errorf("unregister rseq area %#x of tid %d: %w", cur.Addr, th.tid, err)
		}
	}
	if want.Addr != 0 {
		_, err := op.syscall(th, unix.SYS_RSEQ, uintptr(want.Addr), uintptr(want.Size), 0, uintptr(want.Signature))
		if err != nil {
			return fmt.Errorf("register rseq area %#x of tid %d: %w", want.Addr, th.tid, err)
		}
	}
	return nil
}

// unregisterChangedRseq ends each rseq registration that differs from the
// snapshot's, before the layout changes may unmap its area. The undo
// registers it again; it must run after the memory undo, which maps the
// area back, so it is recorded before that.
//
// Precondition: called on the op's locked thread; all threads stopped;
// nothing changed yet.
func (r *restorer) unregisterChangedRseq() error {
	for i := range r.threads {
		st := &r.threads[i]
		cur, want := st.rseq, r.imageThread(st.th.tid).Rseq
		if cur.Addr == 0 || cur == want {
			continue
		}
		if err := r.op.setRseq(st.th, cur, snapshot.Rseq{}); err != nil {
			return err
		}
		r.undo(func() error {
			st.rseq = cur
			return r.op.setRseq(st.th, snapshot.Rseq{}, cur)
		})
		st.rseq = snapshot.Rseq{}
	}
	return nil
}

// registerSnapshotRseq registers each thread's rseq area of the snapshot
// where the thread has another registration (or none) now, once memory
// holds the snapshot's contents.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) registerSnapshotRseq() error {
	for i := range r.threads {
		st := &r.threads[i]
		cur, want := st.rseq, r.imageThread(st.th.tid).Rseq
		if cur == want {
			continue
		}
		if err := r.op.setRseq(st.th, cur, want); err != nil {
			return err
		}
		r.undo(func() error {
			st.rseq = cur
			return r.op.setRseq(st.th, want, cur)
		})
		st.rseq = want
	}
	return nil
}

// rseqCSSize is the size of struct rseq_cs: version and flags (u32 each),
// then start_ip, post_commit_offset and abort_ip (u64 each).
const rseqCSSize = 32

// abortRseq moves regs.Rip to the abort handler of the rseq critical
// section recorded in th's rseq area, when rip lies inside it. The kernel
// does the same on th's next return to user space after a preemption, and
// so after any ptrace stop. But an injected call first returns to user
// space at the gadget, outside the section, where the kernel clears the
// record, so without this the thread would resume inside the section
// unaborted. When the registration or the area cannot be read, regs stay
// unchanged.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) abortRseq(th *thread, regs *unix.PtraceRegs) {
	reg, err := th.getRseq()
	if err != nil || reg.Addr == 0 {
		return
	}
	var ptr [8]byte
	if err := op.readMem(reg.Addr+rseqCSOffset, ptr[:]); err != nil {
		return
	}
	csAddr := binary.LittleEndian.Uint64(ptr[:])
	if csAddr == 0 {
		return
	}
	var cs [rseqCSSize]byte
	if err := op.readMem(csAddr, cs[:]); err != nil {
		return
	}

	start := binary.LittleEndian.Uint64(cs[8:])
	length := binary.LittleEndian.Uint64(cs[16:])
	abort := binary.LittleEndian.Uint64(cs[24:])
	if regs.Rip-start < length {
		op.log.Debug("moving a thread stopped in an rseq critical section to its abort handler", "tid", th.tid, "rip", regs.Rip, "abort", abort)
		regs.Rip = abort
	}
}
