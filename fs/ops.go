package fs

import (
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"os"
	"slices"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/engine/worker"
	"github.com/ckptfs/ckptfs/snapshot"
)

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
	rec.Running = true
	ps.record(rec)

	if self {
		go m.finishCapture(op, ps, rec, id)
		return nil
	}
	return m.finishCapture(op, ps, rec, id)
}

// beginCapture checks a capture request, acquires the process and freezes
// it. On success the caller owns the process (ps.acquire) and the op.
func (m *mountState) beginCapture(caller *fuse.Caller, id snapshot.ProcessID, request string, ps *procState) (*engine.Op, string, bool, error) {
	name, err := parseCaptureRequest(request)
	if err != nil {
		return nil, "", false, err
	}
	creds, err := m.authorize(caller, id)
	if err != nil {
		return nil, "", false, err
	}
	self := creds.TGID == id.PID
	if err := ps.acquireFrom(id.PID, "capture", uint32(creds.TGID), int(caller.Pid), self); err != nil {
		return nil, "", false, err
	}

	if name != "" {
		if err := m.checkNameFree(id, name); err != nil {
			ps.release()
			return nil, "", false, err
		}
	}

	m.precopy(ps, id)
	op, err := m.begin(id)
	if err != nil {
		ps.release()
		return nil, "", false, err
	}
	return op, name, self, nil
}

// finishCapture waits for the freeze, reads the process, thaws it and saves
// the image. It releases the process once the snapshot is durable or the
// capture failed, and records the outcome.
func (m *mountState) finishCapture(op *engine.Op, ps *procState, rec opRecord, id snapshot.ProcessID) error {
	defer ps.release()
	defer op.Close()

	save, err := m.captureFrozen(op, rec, id)
	if err != nil {
		// Closing the op first lets a process killed while traced be reaped,
		// so that explain finds it gone.
		op.Close()
		return m.failed(ps, rec, id, m.explain(id, "capture", err))
	}

	ps.startSaving()
	info, err := save(rec.Snapshot)
	if err != nil {
		// The store's error already names the process and the save.
		return m.failed(ps, rec, id, err)
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

// captureFrozen captures the frozen process and returns the function that
// saves the capture under a name. Memory is read after the thaw from a
// copy-on-write clone, which the save then kills and reaps inside the
// process, freezing it once more. A process capturing itself may by then
// be waiting in this daemon for the save (a second capture), where it
// cannot stop, so its memory is copied while frozen instead.
func (m *mountState) captureFrozen(op *engine.Op, rec opRecord, id snapshot.ProcessID) (func(string) (*snapshot.Info, error), error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", id.PID, rec.CallerPID)); rec.CallerPID != 0 && err == nil {
		img, err := op.Capture()
		if err != nil {
			return nil, err
		}
		return func(name string) (*snapshot.Info, error) { return m.store.Save(img, name) }, nil
	}

	tracker := m.track(op, m.proc(id), id)
	img, mem, err := op.CaptureCOW()
	if err != nil {
		if tracker != nil {
			tracker.Reset()
		}
		return nil, err
	}
	return func(name string) (*snapshot.Info, error) {
		info, err := m.store.SaveFrom(img, name, mem)
		if closeErr := mem.Close(); closeErr != nil {
			m.log.Warn("ending the copy-on-write clone failed", "pid", id.PID, "err", closeErr)
		}
		switch {
		case tracker == nil:
		case err != nil:
			tracker.Reset()
		default:
			tracker.SetBase(info.Name)
		}
		return info, err
	}, nil
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

	run, snap, parts, self, err := m.beginRestore(caller, id, request, len(data), ps)
	if err != nil {
		return m.failed(ps, rec, id, err)
	}
	rec.Snapshot = snap.info.Name
	rec.Running = true
	ps.record(rec)

	if self {
		go m.finishRestore(run, snap, parts, ps, rec, id, true)
		return nil
	}
	return m.finishRestore(run, snap, parts, ps, rec, id, false)
}

// beginRestore checks a restore request, which came in a write of written
// bytes, acquires the process, reads the snapshot's image and starts the
// worker that restores it, which freezes the process. On success the caller owns the process (ps.acquire) and
// the worker.
func (m *mountState) beginRestore(caller *fuse.Caller, id snapshot.ProcessID, request string, written int, ps *procState) (*worker.Restore, restorable, []string, bool, error) {
	name, parts, err := parseRestoreRequest(request)
	if err != nil {
		return nil, restorable{}, nil, false, err
	}
	creds, err := m.authorize(caller, id)
	if err != nil {
		return nil, restorable{}, nil, false, err
	}
	self := creds.TGID == id.PID
	if err := ps.acquireFrom(id.PID, "restore", uint32(creds.TGID), int(caller.Pid), self); err != nil {
		return nil, restorable{}, nil, false, err
	}

	if name == latestName {
		if name, err = m.newest(id); err == nil && name == "" {
			err = fmt.Errorf("restore latest onto pid %d: the process has no snapshot: %w", id.PID, unix.ENOENT)
		}
		if err != nil {
			ps.release()
			return nil, restorable{}, nil, false, err
		}
	}
	snap, err := m.loadRestorable(creds, id, name)
	if err != nil {
		ps.release()
		return nil, restorable{}, nil, false, err
	}

	job := worker.Job{
		Process:  id,
		Store:    m.store.URL(),
		Snapshot: name,
		Captured: snap.info.Captured,
		Parts:    parts,
		Tracker:  m.trackerFor(ps, id),
		Image:    snap.img,
	}
	if self {
		job.SelfWrite = &worker.SelfWrite{TID: int(caller.Pid), Bytes: uint64(written)}
	}
	run, err := m.restorer.Start(job)
	if err != nil {
		ps.release()
		return nil, restorable{}, nil, false, fmt.Errorf("restore %s onto pid %d: %w", name, id.PID, err)
	}
	ps.markFrozen()
	return run, snap, parts, self, nil
}

// restorable is the snapshot a restore rolls back to, as far as the daemon
// reads it: the restore worker loads its memory itself.
type restorable struct {
	info snapshot.Info
	img  *snapshot.Image
}

// loadRestorable reads the description and image of snapshot name of
// process id and checks that the caller may use it and that the live
// process can be rolled back to it.
func (m *mountState) loadRestorable(creds taskCreds, id snapshot.ProcessID, name string) (restorable, error) {
	info, img, err := m.store.LoadImage(id, name)
	if err != nil {
		return restorable{}, err
	}
	if err := mayUseSnapshot(creds, info.UID); err != nil {
		return restorable{}, err
	}

	// Rejecting before the freeze keeps the process running; the engine
	// repeats the check under the freeze, which closes the race.
	if err := engine.CheckUnchanged(id.PID, img); err != nil {
		return restorable{}, fmt.Errorf("restore %s onto pid %d: %w", name, id.PID, err)
	}
	return restorable{info: info, img: img}, nil
}

// finishRestore waits for the worker to roll the process back and thaw
// it. It releases the process and records the outcome. self marks a
// restore that the process requested itself.
func (m *mountState) finishRestore(run *worker.Restore, snap restorable, parts []string, ps *procState, rec opRecord, id snapshot.ProcessID, self bool) error {
	defer ps.release()

	report, err := run.Wait()
	if err == nil {
		ps.writeTracker(id).SetBase(snap.info.Name)
	}
	if err != nil && self {
		// The worker has made the process's own write fail with this
		// error's errno, and the process may have exited since because of
		// it, so the error is kept as it is.
		return m.failed(ps, rec, id, err)
	}
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

// begin seizes process id, checks that the pid was not recycled between
// the access check and the seize, and marks the process frozen in its
// state.
func (m *mountState) begin(id snapshot.ProcessID) (*engine.Op, error) {
	op, err := engine.Begin(id.PID, m.log)
	if err != nil {
		return nil, fmt.Errorf("freeze pid %d: %w", id.PID, err)
	}
	if err := checkIdentity(id); err != nil {
		op.Close()
		return nil, err
	}
	m.proc(id).markFrozen()
	return op, nil
}

// explain turns the failure of an operation on a process that has since
// exited, or has begun to exit, into ESRCH, keeping the original reason in
// the text.
func (m *mountState) explain(id snapshot.ProcessID, kind string, err error) error {
	if checkIdentity(id) == nil && !engine.Exiting(id.PID) {
		return err
	}
	return fmt.Errorf("pid %d exited during %s (%v): %w", id.PID, kind, err, unix.ESRCH)
}

// checkNameFree fails with EEXIST when the process already has a snapshot
// called name, before the process is frozen for nothing. Save checks again.
func (m *mountState) checkNameFree(id snapshot.ProcessID, name string) error {
	infos, err := m.store.Snapshots(id)
	if err != nil {
		return err
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

	errno := errnos.Of(err)
	m.log.Error(rec.Kind+" failed", "pid", id.PID, "snapshot", rec.Snapshot,
		"errno", errnos.Name(errno), "err", err)
	return err
}

func (m *mountState) closeSnapshot(snap *snapshot.Snapshot) {
	if err := snap.Close(); err != nil {
		m.log.Warn("close snapshot", "snapshot", snap.Info.Name, "err", err)
	}
}
