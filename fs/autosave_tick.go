package fs

import (
	"cmp"
	"errors"
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// tick runs one auto-save of sc's process and prunes the old ones. It
// returns false when the schedule must end because the process exited or
// the setter may no longer ptrace it. A tick that finds another capture or
// restore in progress is skipped and logged at Warn. A failed tick is
// logged at Error, and the schedule goes on.
func (a *autosaver) tick(sc *schedule) bool {
	m := a.state
	start := time.Now()

	uid, err := a.checkSetter(sc)
	if errors.Is(err, unix.ESRCH) {
		a.exited(sc)
		return false
	}
	if err != nil {
		sc.setLast(start, "stopped: "+err.Error())
		m.failed(m.proc(sc.id), a.record(sc, start), sc.id, fmt.Errorf("autosave stopped: %w", err))
		a.deleteSettings(sc.id, autosaveKey)
		return false
	}

	name, err := a.capture(sc, uid, start)
	switch {
	case errors.Is(err, unix.EBUSY):
		sc.setLast(start, "skipped: "+err.Error())
		m.log.Warn("autosave skipped", "pid", sc.id.PID, "err", err)
		return true
	case err != nil && processGone(sc.id):
		a.exited(sc)
		return false
	case err != nil:
		sc.setLast(start, fmt.Sprintf("failed: %s: %s", errnos.Name(errnos.Of(err)), err))
		return true
	}

	sc.setLast(start, name)
	a.prune(sc)
	return true
}

// checkSetter checks that the setter of sc may still ptrace its process,
// with the rules of a capture request, and returns the process's real uid.
// The error wraps unix.ESRCH once the process is gone.
func (a *autosaver) checkSetter(sc *schedule) (uint32, error) {
	st, err := liveStatus(sc.id)
	if err != nil {
		return 0, err
	}
	if st.State == 'Z' {
		return 0, fmt.Errorf("pid %d exited and awaits its parent's wait: %w", sc.id.PID, unix.ESRCH)
	}
	target, err := readTarget(sc.id.PID, st, 0, a.state.yamaScope)
	if err != nil {
		return 0, err
	}

	// Yama's descendant rule was checked when the schedule was set; the
	// setter may have exited since.
	target.Descendant = true
	if err := mayPtrace(sc.setter, target, a.state.yamaScope); err != nil {
		return 0, err
	}
	return st.UID[0], nil
}

// processGone reports whether process id has exited: its pid is free,
// belongs to another process or is a zombie.
func processGone(id snapshot.ProcessID) bool {
	st, err := liveStatus(id)
	return err != nil || st.State == 'Z'
}

// exited ends the schedule of a process that is gone.
func (a *autosaver) exited(sc *schedule) {
	a.state.log.Info("autosave stopped: process exited", "pid", sc.id.PID)
	a.deleteSettings(sc.id, autosaveKey, autosaveCounterKey)
}

// record returns the status record of one tick of sc.
func (a *autosaver) record(sc *schedule, start time.Time) opRecord {
	return opRecord{Kind: "autosave", Request: sc.setting.String(), CallerPID: uint32(os.Getpid()), Started: start}
}

// capture takes one auto-save of sc's process through the path of a
// capture write and returns its name, the next auto-N. It owns the process
// for the operation, or fails with EBUSY while another capture or restore
// does. It freezes, reads and thaws the process and saves the snapshot.
// Failures other than EBUSY are recorded in the status file and logged at
// Error.
//
// NOTE: an auto-save is a full snapshot, so unless the store shares
// unchanged pages between snapshots, keep=N costs N times the memory of
// the process even when little of it changes between ticks.
func (a *autosaver) capture(sc *schedule, uid uint32, start time.Time) (string, error) {
	m := a.state
	ps := m.proc(sc.id)
	if err := ps.acquire(sc.id.PID, "autosave", uint32(os.Getpid()), false); err != nil {
		return "", err
	}

	rec := a.record(sc, start)
	name, err := a.nextName(sc.id, uid)
	if err != nil {
		ps.release()
		return "", m.failed(ps, rec, sc.id, err)
	}
	rec.Snapshot = name
	rec.Running = true
	ps.record(rec)

	op, err := m.begin(sc.id)
	if err != nil {
		ps.release()
		return "", m.failed(ps, rec, sc.id, err)
	}
	if err := m.finishCapture(op, ps, rec, sc.id); err != nil {
		return "", err
	}
	return name, nil
}

// nextName returns auto-N for the next auto-save of process id and
// records N in the store first, so that N is never used twice while the
// process lives, even after its auto-save is removed. N is above both the
// stored counter and every auto-N the process has.
func (a *autosaver) nextName(id snapshot.ProcessID, uid uint32) (string, error) {
	last := a.readCounter(id)
	autos, err := a.autoSaves(id)
	if err != nil {
		return "", err
	}
	if len(autos) > 0 {
		n, _ := autoSaveNumber(autos[len(autos)-1].Name)
		last = max(last, n)
	}

	next := last + 1
	err = a.state.store.PutSetting(id, uid, autosaveCounterKey, []byte(strconv.FormatUint(next, 10)))
	if err != nil {
		return "", fmt.Errorf("store autosave counter of pid %d: %w", id.PID, err)
	}
	return autoPrefix + strconv.FormatUint(next, 10), nil
}

// readCounter returns the last auto-save number stored for process id, 0
// when none is. A damaged counter is logged at Warn and read as 0: the
// auto-saves present still keep their numbers from reuse.
func (a *autosaver) readCounter(id snapshot.ProcessID) uint64 {
	data, err := a.state.store.GetSetting(id, autosaveCounterKey)
	if errors.Is(err, unix.ENOENT) {
		return 0
	}
	if err == nil {
		n, parseErr := strconv.ParseUint(string(data), 10, 64)
		if parseErr == nil {
			return n
		}
		err = fmt.Errorf("counter %q: %w", data, parseErr)
	}
	a.state.log.Warn("autosave counter unreadable, numbers go on above the newest auto-save", "pid", id.PID, "err", err)
	return 0
}

// autoSaves returns the auto-saves of process id, lowest number first.
func (a *autosaver) autoSaves(id snapshot.ProcessID) ([]snapshot.Info, error) {
	infos, err := a.state.store.Snapshots(id)
	if err != nil {
		return nil, err
	}

	var autos []snapshot.Info
	for _, info := range infos {
		if _, ok := autoSaveNumber(info.Name); ok {
			autos = append(autos, info)
		}
	}
	slices.SortFunc(autos, func(x, y snapshot.Info) int {
		nx, _ := autoSaveNumber(x.Name)
		ny, _ := autoSaveNumber(y.Name)
		return cmp.Compare(nx, ny)
	})
	return autos, nil
}

// prune removes the oldest auto-saves of sc's process beyond the newest
// Keep, logging each at Info. Snapshots with other names are never
// removed. A failure is logged at Warn; the next tick tries again.
func (a *autosaver) prune(sc *schedule) {
	log := a.state.log
	autos, err := a.autoSaves(sc.id)
	if err != nil {
		log.Warn("autosave pruning failed", "pid", sc.id.PID, "err", err)
		return
	}

	for _, info := range autos[:max(0, len(autos)-sc.setting.Keep)] {
		err := a.state.store.Remove(sc.id, info.Name)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			log.Warn("autosave pruning failed", "pid", sc.id.PID, "snapshot", info.Name, "err", err)
			continue
		}
		log.Info("pruned auto-save", "pid", sc.id.PID, "snapshot", info.Name, "keep", sc.setting.Keep)
	}
}

// autoSaveNumber returns N for a name auto-N with N a canonical positive
// decimal number, and false for every other name.
func autoSaveNumber(name string) (uint64, bool) {
	digits, ok := strings.CutPrefix(name, autoPrefix)
	if !ok || digits == "" || digits[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}
