package fs

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
)

// opPhase is how far the capture or restore in progress on a process got.
type opPhase int

const (
	phaseIdle opPhase = iota

	// phaseFreezing lasts from the access check until every thread is
	// seized.
	phaseFreezing

	// phaseFrozen lasts until the engine has thawed the process again
	// and returned.
	phaseFrozen

	// phaseSaving lasts from the thaw to the end of a capture's save: the
	// process runs again while the store commits its snapshot.
	phaseSaving
)

func (p opPhase) String() string {
	switch p {
	case phaseFreezing:
		return "freezing"
	case phaseFrozen:
		return "frozen"
	case phaseSaving:
		return "saving"
	default:
		return "idle"
	}
}

// procState is the mount's state for one process.
type procState struct {
	// mu protects the fields below. It is held only to read or change
	// them, never while a process is frozen, a ptrace stop is awaited or
	// the store writes.
	mu sync.Mutex

	// phase, kind, caller (the process that requested it) and self (the
	// caller is the process itself) describe the operation in progress:
	// from acquire to release, one capture or restore owns the process.
	phase  opPhase
	kind   string
	caller uint32
	self   bool

	// changed is closed, and replaced, at every change of phase.
	changed chan struct{}

	lastRestored string
	last         *opRecord

	// tracker follows the pages the process writes between operations,
	// nil until its first capture.
	tracker *engine.Tracker
}

// acquire makes the caller the owner of the process for one operation of
// kind, or fails with EBUSY while another capture or restore of it is in
// progress, from its freeze until its snapshot is durable. callerPID is
// the requesting process.
func (p *procState) acquire(pid int, kind string, callerPID uint32, self bool) error {
	return p.acquireFrom(pid, kind, callerPID, 0, self)
}

// acquireFrom is acquire for a request from thread callerTID (0 when
// unknown).
//
// A request of the process itself (self) waits instead of failing when the
// operation in progress is one the process made on itself and the engine
// is done with the process. That is the case when the capture is saving,
// or when the request comes from a thread that is no longer traced, which
// means the engine has thawed the process. The rest of the operation then
// runs without the process, so the wait cannot deadlock, and a process
// that captures itself and restores at once finds its snapshot. The save of such a capture never
// touches the process, because a self-capture copies memory while frozen
// (see captureFrozen). The save of any other capture freezes the process
// once more to reap its copy-on-write clone, which a thread waiting here
// could never reach, so requests of the process get EBUSY then. So do the
// requests of threads that are still traced: each must get its answer
// before it can stop.
func (p *procState) acquireFrom(pid int, kind string, callerPID uint32, callerTID int, self bool) error {
	for {
		p.mu.Lock()
		if p.phase == phaseIdle {
			p.kind, p.caller, p.self = kind, callerPID, self
			p.setPhase(phaseFreezing)
			p.mu.Unlock()
			return nil
		}
		phase, changed, running, owner, ownerSelf := p.phase, p.changed, p.kind, p.caller, p.self
		p.mu.Unlock()

		if !self || !ownerSelf || !thawedFor(phase, callerTID) {
			return fmt.Errorf("pid %d: a %s requested by pid %d is in progress (%s): %w",
				pid, running, owner, phase, unix.EBUSY)
		}
		<-changed
	}
}

// awaitSelfCapture waits, for a request of thread tid, until a capture
// that the process requested itself is saved. Such a capture's write
// returns at the capture's point, before the save, and the process or a
// command it starts may look for the snapshot next: it then finds it, as
// after any other capture write. A thread the engine still holds does not
// wait (thawedFor), and the save does not depend on the threads that do.
func (p *procState) awaitSelfCapture(tid int) {
	for {
		p.mu.Lock()
		phase, changed, kind, self := p.phase, p.changed, p.kind, p.self
		p.mu.Unlock()
		if phase == phaseIdle || kind != "capture" || !self || !thawedFor(phase, tid) {
			return
		}
		<-changed
	}
}

// thawedFor reports whether the engine is done with the process of thread
// tid in phase: it is saving, or frozen but tid is no longer traced.
func thawedFor(phase opPhase, tid int) bool {
	switch phase {
	case phaseSaving:
		return true
	case phaseFrozen:
		st, err := engine.ReadStatus(tid)
		return tid != 0 && err == nil && st.TracerPid == 0
	default:
		return false
	}
}

// setPhase moves to phase and wakes the requests waiting for a change.
// The caller holds mu.
func (p *procState) setPhase(phase opPhase) {
	p.phase = phase
	if p.changed != nil {
		close(p.changed)
	}
	p.changed = make(chan struct{})
}

// busy reports whether a capture or restore of the process is in progress.
func (p *procState) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase != phaseIdle
}

// markFrozen records that every thread of the process is seized.
func (p *procState) markFrozen() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setPhase(phaseFrozen)
}

// startSaving records that the process runs again while its capture is
// saved.
func (p *procState) startSaving() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setPhase(phaseSaving)
}

// release ends the operation that acquire started.
func (p *procState) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kind, p.caller, p.self = "", 0, false
	p.setPhase(phaseIdle)
}

// record stores rec as the last operation on the process.
func (p *procState) record(rec opRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.last = &rec
	if rec.Kind == "restore" && !rec.Running && rec.Err == nil {
		p.lastRestored = rec.Snapshot
	}
}

// snapshotState returns copies of the last operation (nil when none) and
// the name of the last snapshot restored.
func (p *procState) snapshotState() (*opRecord, string) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.last == nil {
		return nil, p.lastRestored
	}
	rec := *p.last
	return &rec, p.lastRestored
}
