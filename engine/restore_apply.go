package engine

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// applyLayout changes the layout to the snapshot's.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyLayout() error {
	return r.op.applyLayout(r.layout, r.img.Brk, r.curBrk)
}

// undoMemory brings back the layout and the memory contents the process
// had before the restore began.
//
// NOTE: a mapping of a deleted file, a memfd or a SysV segment that the
// restore unmapped cannot be mapped again, so its undo fails and is
// reported in the error.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) undoMemory() error {
	op := r.op
	now, _, err := readMaps(op.pid)
	if err != nil {
		return err
	}
	plan, err := planLayout(mergeLayout(op.withoutScratch(now)), mergeLayout(safetyLayout(r.curRegions)))
	if err != nil {
		return fmt.Errorf("plan undo of the layout: %w", err)
	}
	areas, err := op.readRseqAreas(r.threads)
	if err != nil {
		return err
	}

	if err := op.applyLayout(plan, r.curBrk, 0); err != nil {
		return fmt.Errorf("undo layout: %w", err)
	}
	if err := op.writeChunks(r.memory.safety); err != nil {
		return fmt.Errorf("undo memory contents: %w", err)
	}
	return op.writeRseqAreas(areas)
}

// safetyLayout returns the layout read before the restore as the target
// of an undo: every region counts as saved unless capture would skip it,
// since the safety copy holds every page the undo must write back.
func safetyLayout(regions []snapshot.Region) []snapshot.Region {
	out := slices.Clone(regions)
	for i := range out {
		out[i].SkipReason = skipReason(&out[i])
		out[i].Saved = out[i].SkipReason == ""
	}
	return out
}

// applyActions sets every signal action that differs from the snapshot's.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyActions() error {
	for sig := 1; sig <= 64; sig++ {
		old, want := r.actions[sig-1], r.img.Signals.Actions[sig-1]
		if !settableSignal(sig) || old == want {
			continue
		}
		r.undo(func() error { return r.op.setAction(sig, old) })
		if err := r.op.setAction(sig, want); err != nil {
			return err
		}
	}
	return nil
}

// applyAltStacks sets each thread's alternate signal stack, run by that
// thread, where it differs from the snapshot's.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyAltStacks() error {
	for _, st := range r.threads {
		t := r.imageThread(st.th.tid)
		if sameAltStack(st.altStack, t.AltStack) {
			continue
		}
		th, old := st.th, st.altStack
		r.undo(func() error { return r.op.setAltStack(th, old) })
		if err := r.op.setAltStack(th, t.AltStack); err != nil {
			return err
		}
	}
	return nil
}

// applyContents writes the snapshot's bytes where they differ: first the
// pages compared before the layout changed, then the pages of mappings
// the layout step created. Each thread's rseq area keeps the values the
// kernel set, with no critical section recorded.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyContents() error {
	op := r.op
	areas, err := op.readRseqAreas(r.threads)
	if err != nil {
		return err
	}
	if err := op.writeChunks(r.memory.writes); err != nil {
		return err
	}

	var fresh memPlan
	src, err := openMemSource(op, r.mem)
	if err != nil {
		return err
	}
	defer src.close()
	if err := src.diffRegions(r.img, r.layout.fresh, true, &fresh); err != nil {
		return err
	}
	if err := op.writeChunks(fresh.writes); err != nil {
		return err
	}
	return op.writeRseqAreas(areas)
}

// applyThreads writes each thread's xstate and registers (the registers
// part) and signal mask (the signals part). A part not selected is written
// back as it is.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) applyThreads() error {
	for _, st := range r.threads {
		t := r.imageThread(st.th.tid)
		r.undo(func() error { return writeThreadState(st.th, st.xstate, &st.regs, st.mask) })

		xstate, regs, mask := st.xstate, st.regs, st.mask
		if r.parts.registers {
			xstate, regs = t.Xstate, r.resume[st.th.tid]
		}
		if r.parts.signals {
			mask = t.SigMask
		}
		if err := writeThreadState(st.th, xstate, &regs, mask); err != nil {
			return err
		}
	}
	return nil
}

// imageThread returns the image's thread tid; check made sure it exists.
func (r *restorer) imageThread(tid int) *snapshot.Thread {
	for i := range r.img.Threads {
		if r.img.Threads[i].TID == tid {
			return &r.img.Threads[i]
		}
	}
	panic(fmt.Sprintf("thread %d missing from the image after the thread check: %v", tid, unix.ESRCH))
}
