package engine

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// TrackerState is the state of a Tracker, in a form that can be sent to another process together with a copy of the userfaultfd.
// A restore that runs in a worker process uses it to compare only the
// pages written since the base, and returns it updated.
type TrackerState struct {
	// Ranges are the registered mappings, sorted and disjoint.
	Ranges []TrackedRange `json:"ranges"`

	// Written are pages that may differ from the base: those copied ahead
	// of the next capture and those carried over from the first capture.
	Written []Span `json:"written,omitempty"`

	// ExecID identifies the program the userfaultfd was created in.
	ExecID string `json:"exec_id"`

	// BaseProcess and BaseCaptured identify the base snapshot. BaseCaptured
	// is zero when the tracker has no base.
	BaseProcess  snapshot.ProcessID `json:"base_process"`
	BaseCaptured time.Time          `json:"base_captured"`

	// Restored is set in a returned state when a full restore
	// write-protected the memory again: the restored snapshot is then
	// pending, to become the base with SetBase.
	Restored bool `json:"restored,omitempty"`

	// Stopped is set in a returned state when the tracking ended, because
	// the process ran execve since it started.
	Stopped bool `json:"stopped,omitempty"`
}

// TrackedRange is a registered mapping [Start, End). AnonOnly marks a
// private file mapping, whose file pages are not saved.
type TrackedRange struct {
	Start    uint64 `json:"start"`
	End      uint64 `json:"end"`
	AnonOnly bool   `json:"anon_only,omitempty"`
}

// Span is an address range [Start, End).
type Span struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// Lend returns the state of t and a copy of its userfaultfd, for a restore
// run by another process, or ok false when t has not started tracking.
// The caller closes the file once the other process has its own copy, and
// must not use t until it has passed the returned state to Settle.
func (t *Tracker) Lend() (state TrackerState, uffd *os.File, ok bool, err error) {
	if !t.started() {
		return TrackerState{}, nil, false, nil
	}
	fd, err := unix.FcntlInt(uintptr(t.uffd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return TrackerState{}, nil, false, fmt.Errorf("copy the userfaultfd of pid %d: %w", t.id.PID, err)
	}

	state = TrackerState{ExecID: t.execID}
	for _, r := range t.ranges {
		state.Ranges = append(state.Ranges, TrackedRange{Start: r.start, End: r.end, AnonOnly: r.anonOnly})
	}
	written := t.carried
	if t.pre != nil {
		written = unionSpans(append(append([]span(nil), written...), t.pre.written...))
	}
	state.Written = exportSpans(written)

	t.mu.Lock()
	if t.baseImage != nil {
		state.BaseProcess, state.BaseCaptured = t.baseImage.Process, t.baseImage.Captured
	}
	t.mu.Unlock()
	return state, os.NewFile(uintptr(fd), "userfaultfd"), true, nil
}

// AdoptTracker returns a Tracker for process id that continues the
// tracking another process lent with Lend: state is what Lend returned and
// uffd the copy of the userfaultfd, which the Tracker now owns. img is the
// snapshot about to be restored. It becomes the Tracker's base when the
// state names it as the base, so that the restore compares only the pages
// written since. Pass the Tracker to Op.Track, run the restore, and send
// Handback's result to the lender.
func AdoptTracker(id snapshot.ProcessID, state TrackerState, uffd *os.File, img *snapshot.Image) (*Tracker, error) {
	fd, err := unix.Dup(int(uffd.Fd()))
	if err != nil {
		return nil, fmt.Errorf("take over the userfaultfd of pid %d: %w", id.PID, err)
	}
	if err := uffd.Close(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("take over the userfaultfd of pid %d: %w", id.PID, err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", id.PID))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open pagemap of pid %d: %w", id.PID, err)
	}

	t := &Tracker{id: id, uffd: fd, pagemap: pagemap, execID: state.ExecID, carried: importSpans(state.Written)}
	for _, r := range state.Ranges {
		t.ranges = append(t.ranges, trackedRange{start: r.Start, end: r.End, anonOnly: r.AnonOnly})
	}
	if img != nil && !state.BaseCaptured.IsZero() && state.BaseProcess == img.Process && state.BaseCaptured.Equal(img.Captured) {
		t.baseImage = img
	}
	return t, nil
}

// Handback returns the state of a Tracker made by AdoptTracker after its
// restore, for the lender's Settle, and closes the Tracker.
func (t *Tracker) Handback() (TrackerState, error) {
	state := TrackerState{Stopped: !t.started(), ExecID: t.execID}
	for _, r := range t.ranges {
		state.Ranges = append(state.Ranges, TrackedRange{Start: r.start, End: r.end, AnonOnly: r.anonOnly})
	}
	state.Written = exportSpans(t.carried)

	t.mu.Lock()
	state.Restored = t.pending != nil
	t.mu.Unlock()
	return state, t.Close()
}

// Settle takes back the tracking that Lend lent, with the state the
// borrower handed back, or with no state (nil) when the borrower never
// reported: the pages it may have written are then unknown, so the
// tracking ends and the next capture is full. img is the snapshot the
// borrower restored; a restored state makes it pending for SetBase.
func (t *Tracker) Settle(back *TrackerState, img *snapshot.Image) error {
	if back == nil || back.Stopped {
		return t.Close()
	}

	t.ranges = t.ranges[:0]
	for _, r := range back.Ranges {
		t.ranges = append(t.ranges, trackedRange{start: r.Start, end: r.End, anonOnly: r.AnonOnly})
	}
	t.pre, t.carried = nil, importSpans(back.Written)

	if back.Restored {
		t.mu.Lock()
		t.base, t.baseImage, t.pending = "", nil, img
		t.mu.Unlock()
	}
	return nil
}

func exportSpans(spans []span) []Span {
	out := make([]Span, len(spans))
	for i, sp := range spans {
		out[i] = Span{Start: sp.start, End: sp.end}
	}
	return out
}

func importSpans(spans []Span) []span {
	var out []span
	for _, sp := range spans {
		out = append(out, span{sp.Start, sp.End})
	}
	return out
}
