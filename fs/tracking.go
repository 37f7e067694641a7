package fs

import (
	"time"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// writeTracker returns the write tracker of process id, creating it on
// first use. The tracker lets a capture save only the pages written since
// the last capture or restore of the process, and a rollback to that
// snapshot compare only those pages.
func (p *procState) writeTracker(id snapshot.ProcessID) *engine.Tracker {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tracker == nil {
		p.tracker = engine.NewTracker(id)
	}
	return p.tracker
}

// closeTracker ends the write tracking of the process. The caller makes
// sure no operation on the process is in progress.
func (p *procState) closeTracker() error {
	p.mu.Lock()
	t := p.tracker
	p.tracker = nil
	p.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.Close()
}

// track attaches the write tracker of process id to op. A base snapshot
// that the store no longer holds as it was (removed, or its name reused)
// is forgotten first, so the capture is full. Tracking is an optimization:
// when it cannot be attached, the op runs without it.
func (m *mountState) track(op *engine.Op, ps *procState, id snapshot.ProcessID) *engine.Tracker {
	t := m.trackerFor(ps, id)
	if err := op.Track(t); err != nil {
		m.log.Debug("write tracking not attached", "pid", id.PID, "err", err)
		return nil
	}
	return t
}

// trackerFor returns the write tracker of process id after
// forgetting a base snapshot that the store no longer holds as it was
// (removed, or its name reused).
func (m *mountState) trackerFor(ps *procState, id snapshot.ProcessID) *engine.Tracker {
	t := ps.writeTracker(id)
	if name, captured := t.Base(); name != "" && !m.holds(id, name, captured) {
		m.log.Debug("base snapshot gone, the next capture is full", "pid", id.PID, "snapshot", name)
		t.Reset()
	}
	return t
}

// holds reports whether the store holds snapshot name of process id with
// that capture time.
func (m *mountState) holds(id snapshot.ProcessID, name string, captured time.Time) bool {
	infos, err := m.store.Snapshots(id)
	if err != nil {
		return false
	}
	for _, info := range infos {
		if info.Name == name {
			return info.Captured.Equal(captured)
		}
	}
	return false
}

// precopy copies, while the process runs, the pages it wrote since its
// last snapshot, so that the freeze of the capture about to start covers
// only the pages written after this. It does nothing before the first
// capture of the process.
func (m *mountState) precopy(ps *procState, id snapshot.ProcessID) {
	ps.mu.Lock()
	t := ps.tracker
	ps.mu.Unlock()
	if t == nil {
		return
	}
	if err := t.Precopy(); err != nil {
		m.log.Debug("copying written pages ahead of the capture failed", "pid", id.PID, "err", err)
	}
}

// closeTrackers ends the write tracking of every process the mount
// tracks, once the mount serves no more requests.
func (m *mountState) closeTrackers() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, p := range m.procs {
		if err := p.closeTracker(); err != nil {
			m.log.Warn("ending write tracking failed", "pid", id.PID, "err", err)
		}
	}
}
