package fs

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Setting keys of the autosave feature in the store. The counter survives
// "off", so auto-N numbers never repeat while the process lives.
const (
	autosaveKey        = "autosave"
	autosaveCounterKey = "autosave-counter"
)

// autosaver runs the autosave schedules of one mount, one goroutine per
// process with a schedule. A schedule ends when it is replaced or turned
// off, when its process exits or may no longer be captured for its setter,
// and when the mount stops.
//
// A tick captures through the path of a capture write (procState.acquire,
// mountState.begin, finishCapture), so an auto-save is an ordinary
// snapshot. A write to the autosave file does not wait for a tick in
// progress, because the writer may be the very process that the tick is
// freezing, which cannot stop before its request is answered. It may wait
// for the store's lock of the process directory, which a save holds only
// while it commits, never across a freeze. Only stop, called by Unmount
// and Wait outside any request, waits for ticks. autosaver.mu and
// schedule.mu are leaves, held only to read or change a few fields.
type autosaver struct {
	state *mountState

	// running counts the goroutines of schedules, so that stop can wait
	// for a tick in progress.
	running sync.WaitGroup

	// mu protects the fields below. It is held only to look up, add or
	// remove a schedule, never across a tick.
	mu        sync.Mutex
	schedules map[snapshot.ProcessID]*schedule
	stopped   bool
}

// schedule is the autosave schedule of one process.
type schedule struct {
	id      snapshot.ProcessID
	setting autosaveSetting
	setter  taskCreds

	// done is closed to end the schedule's goroutine.
	done     chan struct{}
	doneOnce sync.Once

	// mu protects next and last.
	mu   sync.Mutex
	next time.Time
	last string // the last tick's time and outcome, "" before the first
}

func newAutosaver(state *mountState) *autosaver {
	return &autosaver{state: state, schedules: map[snapshot.ProcessID]*schedule{}}
}

// set stores setting as the schedule of process id, whose real uid is uid,
// set by a caller with credentials setter (TGID 0), and starts it: the first auto-save is due one
// interval from now. It replaces an earlier schedule of the process.
func (a *autosaver) set(id snapshot.ProcessID, uid uint32, setting autosaveSetting, setter taskCreds) error {
	data, err := encodeAutosaveRecord(setting, setter)
	if err != nil {
		return err
	}
	if err := a.state.store.PutSetting(id, uid, autosaveKey, data); err != nil {
		return fmt.Errorf("store autosave setting of pid %d: %w", id.PID, err)
	}
	return a.start(id, setting, setter, time.Now().Add(setting.Interval))
}

// off stops the schedule of process id, if any, and deletes its setting.
func (a *autosaver) off(id snapshot.ProcessID) error {
	a.mu.Lock()
	sc := a.schedules[id]
	delete(a.schedules, id)
	a.mu.Unlock()

	if sc != nil {
		sc.end()
	}
	if err := a.state.store.DeleteSetting(id, autosaveKey); err != nil {
		return fmt.Errorf("delete autosave setting of pid %d: %w", id.PID, err)
	}
	return nil
}

// start runs a schedule whose first tick is due at next, replacing the
// running schedule of the process.
func (a *autosaver) start(id snapshot.ProcessID, setting autosaveSetting, setter taskCreds, next time.Time) error {
	sc := &schedule{id: id, setting: setting, setter: setter, done: make(chan struct{}), next: next}

	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return fmt.Errorf("autosave of pid %d: the mount is stopping: %w", id.PID, unix.ESHUTDOWN)
	}
	old := a.schedules[id]
	a.schedules[id] = sc
	a.running.Add(1)
	a.mu.Unlock()

	if old != nil {
		old.end()
	}
	go a.run(sc)
	return nil
}

// lookup returns the running schedule of process id, or nil.
func (a *autosaver) lookup(id snapshot.ProcessID) *schedule {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.schedules[id]
}

// forget removes sc from the running schedules unless another schedule
// replaced it already.
func (a *autosaver) forget(sc *schedule) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.schedules[sc.id] == sc {
		delete(a.schedules, sc.id)
	}
}

// stop ends every schedule and waits for ticks in progress. The settings
// stay in the store for the next mount. Calls after the first do nothing.
func (a *autosaver) stop() {
	a.mu.Lock()
	a.stopped = true
	schedules := a.schedules
	a.schedules = map[snapshot.ProcessID]*schedule{}
	a.mu.Unlock()

	for _, sc := range schedules {
		sc.end()
	}
	a.running.Wait()
}

// run ticks sc at its due times until it ends.
//
// NOTE: an exit of the process is noticed only at the next tick, so with a
// long interval the goroutine and the stored setting outlive the process
// until then, or until the next mount deletes the setting.
func (a *autosaver) run(sc *schedule) {
	defer a.running.Done()

	timer := time.NewTimer(time.Until(sc.due()))
	defer timer.Stop()
	for {
		select {
		case <-sc.done:
			return
		case <-timer.C:
		}

		if !a.tick(sc) {
			a.forget(sc)
			return
		}
		timer.Reset(time.Until(sc.advance(time.Now())))
	}
}

// end stops the schedule's goroutine after its current tick.
func (sc *schedule) end() {
	sc.doneOnce.Do(func() { close(sc.done) })
}

// due returns when the next tick is due.
func (sc *schedule) due() time.Time {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.next
}

// advance moves the due time on by whole intervals until it is after now,
// so that ticks missed during a slow capture are skipped rather than run
// back to back, and returns it.
func (sc *schedule) advance(now time.Time) time.Time {
	sc.mu.Lock()
	defer sc.mu.Unlock()

	sc.next = sc.next.Add(sc.setting.Interval)
	if !sc.next.After(now) {
		missed := now.Sub(sc.next)/sc.setting.Interval + 1
		sc.next = sc.next.Add(missed * sc.setting.Interval)
	}
	return sc.next
}

// setLast records the outcome of the tick that started at start.
func (sc *schedule) setLast(start time.Time, outcome string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.last = start.Format(time.RFC3339Nano) + " " + outcome
}

// render formats the schedule as the autosave file shows it.
func (sc *schedule) render() []byte {
	sc.mu.Lock()
	defer sc.mu.Unlock()

	text := fmt.Sprintf("interval: %s\nkeep: %d\nnext: %s\n",
		sc.setting.Interval, sc.setting.Keep, sc.next.Format(time.RFC3339Nano))
	if sc.last != "" {
		text += "last: " + sc.last + "\n"
	}
	return []byte(text)
}

// resume starts the stored schedules of the live processes they were set
// for. A setting whose process is gone, or whose pid now belongs to
// another process, is deleted and logged at Info. The first tick of a
// resumed schedule is due one interval after its newest auto-save, or at
// once when that time has passed.
func (a *autosaver) resume() {
	stored, err := a.state.store.Settings(autosaveKey)
	if err != nil {
		a.state.log.Error("read autosave settings failed, no schedule resumed", "err", err)
		return
	}

	for id, data := range stored {
		if err := checkIdentity(id); err != nil {
			a.state.log.Info("autosave setting of an exited process deleted", "pid", id.PID, "start_time", id.StartTime, "reason", err)
			a.deleteSettings(id, autosaveKey, autosaveCounterKey)
			continue
		}
		setting, setter, err := decodeAutosaveRecord(data)
		if err != nil {
			a.state.log.Warn("damaged autosave setting deleted", "pid", id.PID, "err", err)
			a.deleteSettings(id, autosaveKey)
			continue
		}

		next := a.resumeTime(id, setting.Interval)
		if err := a.start(id, setting, setter, next); err != nil {
			a.state.log.Warn("autosave not resumed", "pid", id.PID, "err", err)
			continue
		}
		a.state.log.Info("autosave resumed", "pid", id.PID, "interval", setting.Interval, "keep", setting.Keep, "next", next)
	}
}

// resumeTime returns when the first tick of a resumed schedule is due.
func (a *autosaver) resumeTime(id snapshot.ProcessID, interval time.Duration) time.Time {
	now := time.Now()
	autos, err := a.autoSaves(id)
	if err != nil || len(autos) == 0 {
		return now
	}
	next := autos[len(autos)-1].Captured.Add(interval)
	if next.Before(now) {
		return now
	}
	return next
}

// deleteSettings deletes settings of process id from the store, logging a
// failure at Warn: the next mount tries again.
func (a *autosaver) deleteSettings(id snapshot.ProcessID, keys ...string) {
	for _, key := range keys {
		if err := a.state.store.DeleteSetting(id, key); err != nil {
			a.state.log.Warn("cannot delete autosave setting", "pid", id.PID, "key", key, "err", err)
		}
	}
}
