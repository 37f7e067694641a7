package fs

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// opPhase is how far the capture or restore in progress on a process got.
type opPhase int

const (
	phaseIdle opPhase = iota

	// phaseFrozen lasts from the access check to the thaw: the process
	// is seized, or about to be.
	phaseFrozen

	// phaseSaving lasts from the thaw to the end of a capture's save: the
	// process runs again while the store commits its snapshot.
	phaseSaving
)

func (p opPhase) String() string {
	switch p {
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

	// saved is closed when the save of phaseSaving ends; nil in the
	// other phases.
	saved chan struct{}

	lastRestored string
	last         *opRecord
}

// acquire makes the caller the owner of the process for one operation of
// kind, or fails with EBUSY while another capture or restore of it is in
// progress, from its freeze until its snapshot is durable.
//
// The one wait: a request of the process itself (self) that comes while
// a capture it made of itself is saving waits for the save, so that a
// process that captures itself and restores at once finds its snapshot.
// That wait cannot deadlock, because the process runs then and the save of
// a self-capture never needs it: its memory was copied while frozen (see
// captureFrozen). The save of any other capture freezes the process once
// more to reap its copy-on-write clone, which a thread waiting here could
// never reach, so requests of the process get EBUSY then. While the
// process is frozen even its own requests fail at once: a thread caught
// inside a request must get its answer before it can stop.
func (p *procState) acquire(pid int, kind string, callerPID uint32, self bool) error {
	for {
		p.mu.Lock()
		phase, saved, running, owner, ownerSelf := p.phase, p.saved, p.kind, p.caller, p.self
		if phase == phaseIdle {
			p.phase, p.kind, p.caller, p.self = phaseFrozen, kind, callerPID, self
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()

		if phase != phaseSaving || !self || !ownerSelf {
			return fmt.Errorf("pid %d: a %s requested by pid %d is in progress (%s): %w",
				pid, running, owner, phase, unix.EBUSY)
		}
		<-saved
	}
}

// busy reports whether a capture or restore of the process is in progress.
func (p *procState) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase != phaseIdle
}

// startSaving moves the operation to phaseSaving once the process is
// thawed.
func (p *procState) startSaving() {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.phase = phaseSaving
	p.saved = make(chan struct{})
}

// release ends the operation that acquire started.
func (p *procState) release() {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.saved != nil {
		close(p.saved)
		p.saved = nil
	}
	p.phase, p.kind, p.caller, p.self = phaseIdle, "", 0, false
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
