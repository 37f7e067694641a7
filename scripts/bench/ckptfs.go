package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/engine/worker"
	"github.com/ckptfs/ckptfs/snapshot"
)

// Metric names, one per table row kind.
const (
	mFrozenFirst  = "frozen, first snapshot"
	mWallFirst    = "capture wall, first (capture + save)"
	mStoredFirst  = "stored, first (% of touched)"
	mPeakRSS      = "bench peak RSS while capturing"
	mFrozenNext   = "frozen, next after 1% changed"
	mStoredNext   = "stored, next after 1% changed (% of first)"
	mRollbackSome = "rollback, 1% changed (load + restore)"
	mRollbackAll  = "rollback, all changed (load + restore)"
	mCat          = "cat of memory file, cold, via mount"
	mIdleFrozen   = "frozen, idle sleep 1000"
	mIdleWall     = "capture wall, idle sleep 1000"
	mIdleAgain    = "capture wall, idle sleep 1000, again"
)

// goals are the project's targets, which apply to 1 GiB rows and to the
// idle-process rows.
var goals = map[string]goal{
	mFrozenFirst:  {limit: 0.025, atMost: true},
	mFrozenNext:   {limit: 0.005, atMost: true},
	mWallFirst:    {limit: 0.75, atMost: true},
	mStoredFirst:  {limit: 35, atMost: true},
	mStoredNext:   {limit: 2, atMost: true},
	mRollbackSome: {limit: 0.020, atMost: true},
	mRollbackAll:  {limit: 0.5, atMost: true},
	mCat:          {limit: 1.5e9},
	mPeakRSS:      {limit: 128 << 20, atMost: true},
	mIdleFrozen:   {limit: 0.005, atMost: true},
	mIdleWall:     {limit: 0.005, atMost: true},
}

// bench holds what every measurement shares.
type bench struct {
	log *slog.Logger
	// restorer runs every restore in one worker process, as a mount does.
	restorer *worker.Runner
	runs     int
	tmp      string // temporary directory on the disk the store uses
	memBin   string // compiled bench_mem
	res      *results
}

// saved is a snapshot the bench took, with the target's buffer hash at
// that moment.
type saved struct {
	info *snapshot.Info
	sum  string
}

func sizeLabel(mib int) string {
	if mib%1024 == 0 {
		return fmt.Sprintf("%d GiB", mib/1024)
	}
	return fmt.Sprintf("%d MiB", mib)
}

// metric returns the row of name at size, with its goal when the goal
// applies to that size.
func (b *bench) metric(name, size string, u unit, refKind string) *row {
	x := b.res.row(name, size, u, refKind)
	if g, ok := goals[name]; ok && (size == "1 GiB" || size == "idle") {
		x.goal = &g
	}
	return x
}

// newStore opens an empty store in a fresh directory and returns a function
// that removes it.
func (b *bench) newStore(name string) (*snapshot.Store, func(), error) {
	dir := filepath.Join(b.tmp, name)
	release := cleanup.add(func() { removeAll(dir) })
	st, err := snapshot.Open(dir, b.log)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return st, release, nil
}

// captureSave runs one capture and saves it: the daemon's capture path. It
// returns the wall time of both and logs the share of each. Each capture
// starts with the garbage of the previous one collected and its memory
// returned to the kernel, as in a daemon that was idle in between. With a
// tracker, the capture saves only the pages written since the tracker's
// base, as the mount does, and the snapshot becomes the new base.
func (b *bench) captureSave(st *snapshot.Store, pid int, name string, tr *engine.Tracker) (*snapshot.Image, *snapshot.Info, time.Duration, error) {
	runtime.GC()
	debug.FreeOSMemory()

	start := time.Now()
	if tr != nil {
		if err := tr.Precopy(); err != nil {
			return nil, nil, 0, fmt.Errorf("copy written pages of pid %d: %w", pid, err)
		}
	}
	op, err := engine.Begin(pid, b.log)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("capture pid %d: %w", pid, err)
	}
	defer op.Close()
	if tr != nil {
		if err := op.Track(tr); err != nil {
			return nil, nil, 0, err
		}
	}
	img, mem, err := op.CaptureCOW()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("capture pid %d: %w", pid, err)
	}
	captured := time.Since(start)
	info, err := st.SaveFrom(img, name, mem)
	if closeErr := mem.Close(); err == nil && closeErr != nil {
		err = closeErr
	}
	if tr != nil && err != nil {
		tr.Reset()
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("save snapshot %s of pid %d: %w", name, pid, err)
	}
	if tr != nil {
		tr.SetBase(info.Name)
	}
	wall := time.Since(start)
	progress("pid %d: capture %v (frozen %v), save %v", pid, captured.Round(time.Microsecond),
		img.Frozen.Round(time.Microsecond), (wall - captured).Round(time.Microsecond))
	return img, info, wall, nil
}

// warmUp captures pid once into a throw-away store, so that the timed runs
// find the bench's heap, the store's disk blocks and the target's pages
// warm.
func (b *bench) warmUp(pid int) error {
	st, release, err := b.newStore("warm-up")
	if err != nil {
		return err
	}
	defer release()

	_, _, _, err = b.captureSave(st, pid, "", nil)
	return err
}

// benchSize runs every ckptfs measurement on a target of mib MiB.
func (b *bench) benchSize(mib int) {
	size := sizeLabel(mib)
	first := b.metric(mFrozenFirst, size, unitSeconds, refCopy)
	progress("%s: starting target", size)

	tgt, err := startMemTarget(b.memBin, mib)
	if err != nil {
		first.fail(err)
		return
	}
	defer tgt.kill()

	readRef, err := createReadReference(b.tmp, tgt.len)
	if err != nil {
		first.fail(err)
		return
	}
	defer os.Remove(readRef)

	if err := b.warmUp(tgt.pid); err != nil {
		first.fail(fmt.Errorf("warm-up: %w", err))
		return
	}
	for run := 1; run <= b.runs; run++ {
		progress("%s: run %d of %d", size, run, b.runs)
		b.runOnce(tgt, size, readRef, run)
	}
}

// runOnce measures one run on tgt with a fresh store: first snapshot, next
// snapshot, both rollbacks, and a cold cat through a mount.
func (b *bench) runOnce(tgt *memTarget, size, readRef string, run int) {
	st, release, err := b.newStore(fmt.Sprintf("store-%s-%d", size, run))
	if err != nil {
		b.metric(mFrozenFirst, size, unitSeconds, refCopy).fail(err)
		return
	}
	defer release()

	// Each run tracks writes afresh, as a mount that meets the process for
	// the first time does.
	id, err := engine.Identify(tgt.pid)
	if err != nil {
		b.metric(mFrozenFirst, size, unitSeconds, refCopy).fail(err)
		return
	}
	tr := engine.NewTracker(id)
	defer tr.Close()

	first, err := b.measureFirst(st, tgt, size, tr)
	if err != nil {
		return
	}
	next, err := b.measureNext(st, tgt, size, first, tr)
	if err == nil {
		b.measureRollback(st, tgt, b.metric(mRollbackSome, size, unitSeconds, refCopy), next, false, tr)
	}
	b.measureRollback(st, tgt, b.metric(mRollbackAll, size, unitSeconds, refCopy), first, true, tr)
	b.measureCat(st, tgt, size, first, readRef)
}
