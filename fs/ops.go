package fs

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// procState is the mount's state for one process.
type procState struct {
	// busy is the per-process try-lock of capture and restore, held from
	// the freeze until the thaw. Nothing ever waits on it: a second
	// operation fails with EBUSY at once, so no FUSE request of a frozen
	// target can block behind its own freeze.
	busy atomic.Bool

	// mu protects the fields below. It is held only to copy them, never
	// while a process is frozen or a ptrace stop is awaited.
	mu           sync.Mutex
	lastRestored string
	last         *opRecord

	// saving is closed when the store has committed the capture whose
	// process was thawed last, or nil when no save is pending. The next
	// operation waits for it, so that a process that captures itself and
	// restores right away finds its snapshot. Waiting is safe even in a
	// request of the process itself: a save never needs the process.
	saving chan struct{}
}

// startSave marks a save as pending and returns the function that ends
// it. Call it before releasing busy, so that the next operation waits.
func (p *procState) startSave() func() {
	p.mu.Lock()
	defer p.mu.Unlock()

	done := make(chan struct{})
	p.saving = done
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()

		close(done)
		if p.saving == done {
			p.saving = nil
		}
	}
}

// waitSaved waits until no save of this process is pending.
func (p *procState) waitSaved() {
	p.mu.Lock()
	saving := p.saving
	p.mu.Unlock()

	if saving != nil {
		<-saving
	}
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

// capture runs the capture that a write of data to the capture file of
// process id requests. A write from the process itself returns once the
// process is seized, and the capture finishes in the background. Any other
// write returns when the snapshot is durable.
func (m *mountState) capture(caller *fuse.Caller, id snapshot.ProcessID, data []byte) error {
	ps := m.proc(id)
	request, err := requestText(data)
	rec := newRecord("capture", request, caller)
	if err != nil {
		return m.failed(ps, rec, id, err)
	}

	op, name, self, err := m.beginCapture(caller, id, request, ps)
	if err != nil {
		return m.failed(ps, rec, id, err)
	}
	rec.Snapshot = name

	if self {
		rec.Running = true
		ps.record(rec)
		go m.finishCapture(op, ps, rec, id)
		return nil
	}
	return m.finishCapture(op, ps, rec, id)
}

// beginCapture checks a capture request and freezes the process. On success
// the caller owns ps.busy and the op.
func (m *mountState) beginCapture(caller *fuse.Caller, id snapshot.ProcessID, request string, ps *procState) (*engine.Op, string, bool, error) {
	name, err := parseCaptureRequest(request)
	if err != nil {
		return nil, "", false, err
	}
	creds, err := m.authorize(caller, id)
	if err != nil {
		return nil, "", false, err
	}
	if !ps.busy.CompareAndSwap(false, true) {
		return nil, "", false, fmt.Errorf("pid %d: another capture or restore is in progress: %w", id.PID, unix.EBUSY)
	}
	ps.waitSaved()

	if name != "" {
		if err := m.checkNameFree(id, name); err != nil {
			ps.busy.Store(false)
			return nil, "", false, err
		}
	}

	op, err := m.begin(id)
	if err != nil {
		ps.busy.Store(false)
		return nil, "", false, err
	}
	return op, name, creds.TGID == id.PID, nil
}

// finishCapture waits for the freeze, reads the process, thaws it and saves
// the image. It releases ps.busy at the thaw and records the outcome.
func (m *mountState) finishCapture(op *engine.Op, ps *procState, rec opRecord, id snapshot.ProcessID) error {
	img, err := op.Capture()
	op.Close()
	if err != nil {
		defer ps.busy.Store(false)
		return m.failed(ps, rec, id, m.explain(id, "capture", err))
	}

	saved := ps.startSave()
	defer saved()
	ps.busy.Store(false)

	info, err := m.store.Save(img, rec.Snapshot)
	if err != nil {
		return m.failed(ps, rec, id, fmt.Errorf("save snapshot of pid %d: %w", id.PID, err))
	}

	rec.Running = false
	rec.Snapshot = info.Name
	rec.Info = info
	rec.Duration = time.Since(rec.Started)
	ps.record(rec)
	m.log.Info("captured", "pid", id.PID, "snapshot", info.Name, "frozen", info.Frozen,
		"bytes", info.Bytes, "stored", info.Stored, "duration", rec.Duration)
	return nil
}

// restore runs the restore that a write of data to the restore file of
// process id requests, with the same split as capture between writes from
// the process itself and from others.
func (m *mountState) restore(caller *fuse.Caller, id snapshot.ProcessID, data []byte) error {
	ps := m.proc(id)
	request, err := requestText(data)
	rec := newRecord("restore", request, caller)
	if err != nil {
		return m.failed(ps, rec, id, err)
	}

	op, snap, parts, self, err := m.beginRestore(caller, id, request, ps)
	if err != nil {
		return m.failed(ps, rec, id, err)
	}
	rec.Snapshot = snap.Info.Name

	if self {
		rec.Running = true
		ps.record(rec)
		go m.finishRestore(op, snap, parts, ps, rec, id)
		return nil
	}
	return m.finishRestore(op, snap, parts, ps, rec, id)
}

// beginRestore checks a restore request, loads the snapshot and freezes the
// process. On success the caller owns ps.busy, the op and the snapshot.
func (m *mountState) beginRestore(caller *fuse.Caller, id snapshot.ProcessID, request string, ps *procState) (*engine.Op, *snapshot.Snapshot, []string, bool, error) {
	name, parts, err := parseRestoreRequest(request)
	if err != nil {
		return nil, nil, nil, false, err
	}
	creds, err := m.authorize(caller, id)
	if err != nil {
		return nil, nil, nil, false, err
	}
	if !ps.busy.CompareAndSwap(false, true) {
		return nil, nil, nil, false, fmt.Errorf("pid %d: another capture or restore is in progress: %w", id.PID, unix.EBUSY)
	}
	ps.waitSaved()

	snap, err := m.store.Load(id, name)
	if err != nil {
		ps.busy.Store(false)
		return nil, nil, nil, false, fmt.Errorf("load snapshot %s of pid %d: %w", name, id.PID, err)
	}
	if err := mayUseSnapshot(creds, snap.Info.UID); err != nil {
		m.closeSnapshot(snap)
		ps.busy.Store(false)
		return nil, nil, nil, false, err
	}

	op, err := m.begin(id)
	if err != nil {
		m.closeSnapshot(snap)
		ps.busy.Store(false)
		return nil, nil, nil, false, err
	}
	return op, snap, parts, creds.TGID == id.PID, nil
}

// finishRestore waits for the freeze, rolls the process back and thaws it.
// It releases ps.busy and the snapshot and records the outcome.
func (m *mountState) finishRestore(op *engine.Op, snap *snapshot.Snapshot, parts []string, ps *procState, rec opRecord, id snapshot.ProcessID) error {
	defer ps.busy.Store(false)
	defer m.closeSnapshot(snap)

	report, err := op.Restore(snap.Image, snap, parts)
	op.Close()
	if err != nil {
		return m.failed(ps, rec, id, m.explain(id, "restore", err))
	}

	rec.Running = false
	rec.Report = report
	rec.Duration = time.Since(rec.Started)
	ps.record(rec)
	m.log.Info("restored", "pid", id.PID, "snapshot", rec.Snapshot, "parts", parts,
		"left_alone", len(report.LeftAlone), "warnings", len(report.Warnings), "duration", rec.Duration)
	return nil
}

// authorize checks that the caller may ptrace process id, which must still
// be alive, and returns the caller's credentials.
func (m *mountState) authorize(caller *fuse.Caller, id snapshot.ProcessID) (taskCreds, error) {
	creds, err := readCallerCreds(caller)
	if err != nil {
		return taskCreds{}, err
	}
	st, err := liveStatus(id)
	if err != nil {
		return taskCreds{}, err
	}

	target, err := readTarget(id.PID, st, creds.TGID, m.yamaScope)
	if err != nil {
		return taskCreds{}, err
	}
	return creds, mayPtrace(creds, target, m.yamaScope)
}

// liveStatus reads the status of process id, failing with ESRCH when the
// pid is gone or now belongs to another process.
func liveStatus(id snapshot.ProcessID) (*engine.Status, error) {
	st, err := engine.ReadStatus(id.PID)
	if err != nil {
		return nil, fmt.Errorf("read status of pid %d: %w", id.PID, err)
	}
	if err := checkIdentity(id); err != nil {
		return nil, err
	}
	return st, nil
}

// checkIdentity fails with ESRCH unless pid id.PID is still process id.
func checkIdentity(id snapshot.ProcessID) error {
	cur, err := engine.Identify(id.PID)
	if err != nil {
		return fmt.Errorf("identify pid %d: %w", id.PID, err)
	}
	if cur != id {
		return fmt.Errorf("pid %d exited and now belongs to a new process: %w", id.PID, unix.ESRCH)
	}
	return nil
}

// begin seizes process id and checks that the pid was not recycled between
// the access check and the seize.
func (m *mountState) begin(id snapshot.ProcessID) (*engine.Op, error) {
	op, err := engine.Begin(id.PID, m.log)
	if err != nil {
		return nil, fmt.Errorf("freeze pid %d: %w", id.PID, err)
	}
	if err := checkIdentity(id); err != nil {
		op.Close()
		return nil, err
	}
	return op, nil
}

// explain turns the failure of an operation on a process that has since
// exited into ESRCH, keeping the original reason in the text.
func (m *mountState) explain(id snapshot.ProcessID, kind string, err error) error {
	if checkIdentity(id) == nil {
		return err
	}
	return fmt.Errorf("pid %d exited during %s (%v): %w", id.PID, kind, err, unix.ESRCH)
}

// checkNameFree fails with EEXIST when the process already has a snapshot
// called name, before the process is frozen for nothing. Save checks again.
func (m *mountState) checkNameFree(id snapshot.ProcessID, name string) error {
	infos, err := m.store.Snapshots(id)
	if err != nil {
		return fmt.Errorf("list snapshots of pid %d: %w", id.PID, err)
	}
	if slices.ContainsFunc(infos, func(info snapshot.Info) bool { return info.Name == name }) {
		return fmt.Errorf("pid %d already has a snapshot named %s: %w", id.PID, name, unix.EEXIST)
	}
	return nil
}

// failed records and logs a failed operation and returns err.
func (m *mountState) failed(ps *procState, rec opRecord, id snapshot.ProcessID, err error) error {
	rec.Running = false
	rec.Err = err
	rec.Duration = time.Since(rec.Started)
	ps.record(rec)

	errno := errnoOf(err)
	m.log.Error(rec.Kind+" failed", "pid", id.PID, "snapshot", rec.Snapshot,
		"errno", unix.ErrnoName(errno), "err", err)
	return err
}

func (m *mountState) closeSnapshot(snap *snapshot.Snapshot) {
	if err := snap.Close(); err != nil {
		m.log.Warn("close snapshot", "snapshot", snap.Info.Name, "err", err)
	}
}
