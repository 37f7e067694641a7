package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// RestoreReport lists what a successful restore did not roll back.
type RestoreReport struct {
	// LeftAlone names state that was left as it is, in words for a user:
	// shared mappings, regions whose contents were not saved, state this
	// version does not restore.
	LeftAlone []string

	// Warnings name things restored that may not behave as at capture,
	// such as a file offset past the end of a file that shrank since.
	Warnings []string
}

// Restore freezes process pid, rolls it back in place to img and thaws it:
// Begin, Restore and Close in one call.
func Restore(pid int, img *snapshot.Image, mem snapshot.MemoryReader, parts []string, log *slog.Logger) (*RestoreReport, error) {
	op, err := Begin(pid, log)
	if err != nil {
		return nil, err
	}
	defer op.Close()
	return op.Restore(img, mem, parts)
}

// Restore waits until every thread is stopped, rolls the process back in
// place to img, with memory contents read from mem, and thaws it, whether
// the restore succeeded or not. mem must be safe for concurrent use,
// because regions are compared on one goroutine per CPU.
//
// parts nil restores everything. Otherwise each word selects one part:
// memory (private memory except thread stacks), layout (mappings,
// protections, brk), threads (registers, xstate and stacks), fds, signals
// (actions, masks, alternate stacks), or the contents of one region named
// START-END or by its path in maps. The
// parts not selected stay as they are, so a process whose registers and
// memory are rolled back separately may not run on consistently. A word
// that names nothing is a *RejectError with EINVAL.
//
// Everything restore cannot bring back is rejected before any change, as
// a *RejectError naming it. The errno is ESRCH when the process is not the
// captured one. It is EOPNOTSUPP for an execve since, a changed thread set,
// a descriptor that cannot be reopened, a different XCR0, a shadow stack,
// a mapping that cannot be re-created, or a thread captured inside
// restart_syscall that is no longer in the call it continued then (see
// resumeRegs). When a step fails after changes began, the changes are
// undone so that the process continues as it was, and the error is
// returned. An error of the undo itself is logged and added to the error.
func (op *Op) Restore(img *snapshot.Image, mem snapshot.MemoryReader, parts []string) (*RestoreReport, error) {
	selected, err := parseParts(parts, img)
	if err != nil {
		op.Close()
		return nil, fmt.Errorf("restore pid %d: %w", op.pid, err)
	}

	start := time.Now()
	var report *RestoreReport
	err = op.do(func() error {
		if !op.frozen {
			return fmt.Errorf("process is not frozen: %w", unix.EINVAL)
		}
		var err error
		report, err = op.restore(img, mem, selected)
		if err != nil && op.selfWrite != nil {
			op.failSelfWrite(err)
		}
		cont := err == nil && selected.registers && op.matchJobStop(img)
		op.thaw()
		if cont {
			op.continueStopped()
		}
		return err
	})
	if err != nil {
		return nil, exitedDuring(op.pid, fmt.Errorf("restore pid %d: %w", op.pid, err))
	}
	op.log.Debug("restored", "op", "restore", "parts", parts, "duration", time.Since(start), "frozen", op.frozenFor)
	return report, nil
}

// selfWrite is the write(2) through which a process requested its own
// restore, which returned before the restore began.
type selfWrite struct {
	tid     int
	n       uint64 // the byte count the write returned
	errnoOf func(error) unix.Errno
}

// FailSelfWrite makes a Restore that fails end the write(2) that thread
// tid returns from with an errno instead of the byte count n it returned.
// That write is the one through which the process requested its own
// restore, and it had to return before the restore could freeze the
// thread. errnoOf picks the errno for the restore's error. Call it before
// Restore.
func (op *Op) FailSelfWrite(tid int, n uint64, errnoOf func(error) unix.Errno) {
	op.selfWrite = &selfWrite{tid: tid, n: n, errnoOf: errnoOf}
}

// failSelfWrite makes the write of op.selfWrite return the errno of err,
// when its thread is stopped at the return of that write.
//
// Precondition: called on the op's locked thread; all threads stopped;
// the restore failed and was undone.
func (op *Op) failSelfWrite(err error) {
	w := op.selfWrite
	th := op.threadByTID(w.tid)
	if th == nil {
		return
	}
	regs, regsErr := th.getRegs()
	if regsErr != nil || regs.Orig_rax != unix.SYS_WRITE || regs.Rax != w.n {
		op.log.Debug("the thread that requested the restore is not at the return of its write", "tid", w.tid, "err", regsErr)
		return
	}
	errno := w.errnoOf(err)
	regs.Rax = uint64(-int64(errno))
	if err := th.setRegs(&regs); err != nil {
		op.log.Warn("reporting the failed restore to the writing thread failed", "tid", w.tid, "err", err)
	}
}

// restorer is the state of one full restore: the plan, the safety copy of
// everything the plan overwrites, and the steps that undo the changes
// made so far.
type restorer struct {
	op     *Op
	img    *snapshot.Image
	mem    snapshot.MemoryReader
	parts  restoreParts
	report *RestoreReport

	// The current state, read before any change.
	curRegions []snapshot.Region
	curFDs     []snapshot.FD
	curBrk     uint64
	threads    []threadState // in the order of op.threads
	actions    [64]snapshot.SigAction
	queues     queueState // read when the signals part restores them

	// resume holds the registers each thread resumes with, by tid.
	resume map[int]unix.PtraceRegs

	layout *layoutPlan
	fds    []fdStep
	memory memPlan

	undos   []func() error // run last first when a step fails
	commits []func()       // run after every step succeeded
}

// undo records how to reverse a change just made.
func (r *restorer) undo(f func() error) { r.undos = append(r.undos, f) }

// restore runs the checks, reads the safety copy, applies every step and
// undoes them if one fails.
//
// Precondition: called on the op's locked thread, after freeze.
func (op *Op) restore(img *snapshot.Image, mem snapshot.MemoryReader, parts restoreParts) (*RestoreReport, error) {
	if err := op.waitStops(); err != nil {
		return nil, err
	}
	r := &restorer{op: op, img: img, mem: mem, parts: parts, report: &RestoreReport{}}
	if err := r.check(); err != nil {
		return nil, err
	}
	if err := r.prepare(); err != nil {
		return nil, err
	}

	op.log.Debug("restore plan", "unmaps", len(r.layout.unmaps), "creates", len(r.layout.creates),
		"protects", len(r.layout.protects), "brk", img.Brk, "current_brk", r.curBrk,
		"page_writes", len(r.memory.writes), "page_drops", len(r.memory.dontneed),
		"safety_chunks", len(r.memory.safety), "fd_steps", len(r.fds))
	if err := r.apply(); err != nil {
		if undoErr := r.rollback(); undoErr != nil {
			op.log.Error("undoing a failed restore failed", "err", undoErr)
			return nil, fmt.Errorf("%w (undoing the changes made so far also failed: %v)", err, undoErr)
		}
		op.log.Warn("restore failed and was undone", "err", err)
		return nil, err
	}
	for _, commit := range r.commits {
		commit()
	}
	op.trackRestored(img, parts)
	return r.report, nil
}

// check rejects, before anything changes, a restore that cannot be
// completed, and plans the layout and descriptor changes.
//
// Precondition: called on the op's locked thread; all threads stopped; no
// scratch page mapped yet.
func (r *restorer) check() error {
	op, img := r.op, r.img
	if err := CheckUnchanged(op.pid, img); err != nil {
		return err
	}
	tids := make([]int, len(op.threads))
	for i, th := range op.threads {
		tids[i] = th.tid
	}
	if err := checkThreads(tids, img); err != nil {
		return err
	}
	if !r.parts.registers {
		return r.plan()
	}
	if err := r.planResume(); err != nil {
		return err
	}

	var err error
	if r.curRegions, _, err = readMaps(op.pid); err != nil {
		return err
	}
	if err := checkShadowStack(op.pid, r.curRegions); err != nil {
		return err
	}
	xstate, err := op.threads[0].getXstate()
	if err != nil {
		return err
	}
	if err := checkXCR0(img, xstate); err != nil {
		return err
	}
	return r.plan()
}

// plan diffs the layout and the descriptor table against the snapshot, as
// far as the selected parts need.
func (r *restorer) plan() error {
	var err error
	if r.curRegions == nil {
		if r.curRegions, _, err = readMaps(r.op.pid); err != nil {
			return err
		}
	}
	if err := r.planLayout(); err != nil {
		return err
	}

	r.report.LeftAlone = append(leftAlone(r.img), r.layout.leftAlone...)
	if !r.parts.full() {
		r.report.LeftAlone = append(r.report.LeftAlone, r.parts.leftOut()...)
	}
	if !r.parts.fds {
		return nil
	}
	if r.curFDs, err = readFDs(r.op.pid); err != nil {
		return err
	}
	var warnings []string
	if r.fds, warnings, err = planFDs(r.img.FDs, r.curFDs, processProbe(r.op.pid)); err != nil {
		return err
	}
	r.report.Warnings = append(r.report.Warnings, warnings...)
	return nil
}

// planLayout plans the layout changes, or for a restore that leaves the
// layout alone only finds the ranges whose contents can be compared. The
// contents restored are narrowed to the selected parts.
func (r *restorer) planLayout() error {
	cur, snap := mergeLayout(r.curRegions), mergeLayout(r.img.Regions)
	if !r.parts.layout {
		r.layout = &layoutPlan{kept: keptSpans(cur, snap)}
		if err := checkRegionsKept(r.parts.regions, snap, r.layout.kept); err != nil {
			return err
		}
	} else {
		var err error
		if r.layout, err = planLayout(cur, snap); err != nil {
			return err
		}
		if err := checkCreates(r.layout, processProbe(r.op.pid).statPath); err != nil {
			return err
		}
	}
	r.layout.kept = intersectSpans(r.layout.kept, r.parts.contentSpans(r.img))

	changed, tracked, err := r.op.changedSince(r.img, r.curRegions)
	if err != nil {
		return err
	}
	if tracked {
		r.layout.kept = intersectSpans(r.layout.kept, changed)
	}
	return checkOwnUserfaultfd(r.op.pid, r.curRegions, r.layout.kept)
}

// leftAlone lists what a full restore of img does not roll back.
func leftAlone(img *snapshot.Image) []string {
	var out []string
	for _, reg := range img.Regions {
		name := regionName(&reg)
		switch {
		case untouchedMappings[reg.Path]:
		case reg.Shared():
			out = append(out, "shared mapping "+name+": contents not rolled back")
		case !reg.Saved:
			out = append(out, "mapping "+name+": contents not saved ("+reg.SkipReason+")")
		}
	}
	if !img.Signals.QueuesSaved {
		out = append(out, "pending signals and timers: not saved in this snapshot, which an earlier version took")
	}
	return out
}

// restoresQueues reports whether the restore sets the pending signals and
// timers: the signals part does, when the snapshot holds them.
func (r *restorer) restoresQueues() bool {
	return r.parts.signals && r.img.Signals.QueuesSaved
}

// prepare maps the scratch page out of the way and reads the safety copy:
// the break, every thread's state, the signal actions, and the current
// bytes of every page restore will write, drop or unmap.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) prepare() error {
	op := r.op
	if err := op.placeScratch(r.curRegions, r.img.Regions); err != nil {
		return err
	}
	brk, err := op.syscall(op.threads[0], unix.SYS_BRK, 0)
	if err != nil {
		return fmt.Errorf("read program break of pid %d: %w", op.pid, err)
	}
	r.curBrk = uint64(brk)

	for _, th := range op.threads {
		st, err := op.readThreadState(th)
		if err != nil {
			return err
		}
		r.threads = append(r.threads, st)
	}
	if r.parts.signals {
		if r.actions, err = op.readActions(); err != nil {
			return err
		}
	}
	if r.restoresQueues() {
		if r.queues, err = op.readQueues(); err != nil {
			return err
		}
		if err := r.checkTimerIDs(); err != nil {
			return err
		}
	}

	src, err := openMemSource(op, r.mem)
	if err != nil {
		return err
	}
	defer src.close()
	if err := src.diffRegions(r.img, r.layout.kept, false, &r.memory); err != nil {
		return err
	}
	return src.saveRemoved(r.layout.removed, &r.memory)
}

// apply runs every step of the restore, in an order where each injected
// system call comes before the memory writes (a thread that runs an
// injected call may update its rseq area) and the registers come last.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (r *restorer) apply() error {
	steps := []struct {
		what string
		run  func() error
		on   bool
	}{
		{"layout", r.applyLayout, r.parts.layout},
		{"dropping pages", func() error { return r.op.dropPages(r.memory.dontneed) }, true},
		{"descriptors", r.applyFDs, r.parts.fds},
		{"signal actions", r.applyActions, r.parts.signals},
		{"signal stacks", r.applyAltStacks, r.parts.signals},
		{"pending signals and timers", r.applyQueues, r.restoresQueues()},
		{"memory contents", r.applyContents, true},
		{"rseq registrations", r.registerSnapshotRseq, r.parts.layout || r.parts.registers},
		{"threads", r.applyThreads, r.parts.registers || r.parts.signals},
	}

	// Registrations whose rseq area the layout step may unmap end first.
	if r.parts.layout || r.parts.registers {
		if err := r.unregisterChangedRseq(); err != nil {
			return fmt.Errorf("restore rseq registrations: %w", err)
		}
	}
	// One undo step puts back the layout and every page the steps change.
	r.undo(r.undoMemory)
	for _, step := range steps {
		if !step.on {
			continue
		}
		if err := step.run(); err != nil {
			return fmt.Errorf("restore %s: %w", step.what, err)
		}
	}
	return nil
}

// rollback runs the recorded undo steps, last first, and returns their
// errors joined.
//
// Precondition: called on the op's locked thread.
func (r *restorer) rollback() error {
	var errs []error
	for i := len(r.undos) - 1; i >= 0; i-- {
		if err := r.undos[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// matchJobStop prepares thaw to leave the process in the job-control
// state it had at capture and reports whether it must be continued after
// the thaw (it was running at capture and is stopped now).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) matchJobStop(img *snapshot.Image) bool {
	stopped := op.jobStopped()
	switch {
	case img.JobStopped && !stopped && len(op.threads) > 0:
		op.threads[0].jobStop = true
	case !img.JobStopped && stopped:
		for _, th := range op.threads {
			th.jobStop = false
		}
		return true
	}
	return false
}

// continueStopped ends the job-control stop of a process that ran at
// capture.
func (op *Op) continueStopped() {
	if err := unix.Kill(op.pid, unix.SIGCONT); err != nil {
		op.log.Warn("continuing the process failed", "err", err)
	}
}
