package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/engine/worker"
	"github.com/ckptfs/ckptfs/fs"
	"github.com/ckptfs/ckptfs/snapshot"
)

// measureFirst takes the first snapshot of tgt into an empty store and
// records its frozen time, wall time, stored size and the bench's peak
// resident size, each with its reference.
func (b *bench) measureFirst(st *snapshot.Store, tgt *memTarget, size string, tr *engine.Tracker) (saved, error) {
	rows := []*row{
		b.metric(mFrozenFirst, size, unitSeconds, refCopy),
		b.metric(mWallFirst, size, unitSeconds, refCopy),
		b.metric(mStoredFirst, size, unitPercent, refZstd),
		b.metric(mPeakRSS, size, unitBytes, refTouched),
	}
	failAll := func(err error) (saved, error) {
		for _, x := range rows {
			x.fail(err)
		}
		return saved{}, err
	}

	sum, err := tgt.sum()
	if err != nil {
		return failAll(err)
	}
	if err := resetPeakRSS(); err != nil {
		return failAll(err)
	}
	img, info, wall, err := b.captureSave(st, tgt.pid, "first", tr)
	if err != nil {
		return failAll(err)
	}
	peak, err := peakRSS()
	if err != nil {
		return failAll(err)
	}

	// The target has not run a command since the capture, so its pages
	// still hold what the capture copied.
	var packed uint64
	var packErr error
	copied, err := copyReference(tgt.pid, imageSpans(img), func(buf []byte) {
		packed, packErr = zstdReferenceSize(buf)
	})
	if err == nil {
		err = packErr
	}
	if err != nil {
		return failAll(fmt.Errorf("reference for the first snapshot: %w", err))
	}

	touched := float64(tgt.len)
	rows[0].add(img.Frozen.Seconds(), copied.Seconds())
	rows[1].add(wall.Seconds(), copied.Seconds())
	rows[2].add(float64(info.Stored)/touched*100, float64(packed)/touched*100)
	rows[3].add(float64(peak), touched)
	progress("%s: first frozen %v, wall %v, stored %d of %d bytes, peak RSS %d MiB",
		size, img.Frozen, wall.Round(time.Millisecond), info.Stored, tgt.len, peak>>20)
	return saved{info: info, sum: sum}, nil
}

// measureNext rewrites 1% of the target's pages and takes the next
// snapshot into the same store.
func (b *bench) measureNext(st *snapshot.Store, tgt *memTarget, size string, first saved, tr *engine.Tracker) (saved, error) {
	frozen := b.metric(mFrozenNext, size, unitSeconds, refCopy)
	stored := b.metric(mStoredNext, size, unitPercent, refChanged)
	fail := func(err error) (saved, error) {
		frozen.fail(err)
		stored.fail(err)
		return saved{}, err
	}

	d, err := tgt.dirty(false)
	if err != nil {
		return fail(err)
	}
	sum, err := tgt.sum()
	if err != nil {
		return fail(err)
	}
	img, info, _, err := b.captureSave(st, tgt.pid, "next", tr)
	if err != nil {
		return fail(err)
	}
	copied, err := copyReference(tgt.pid, tgt.pages(d), nil)
	if err != nil {
		return fail(fmt.Errorf("reference for the next snapshot: %w", err))
	}

	changed := float64(d.count*pageSize) / float64(tgt.len) * 100
	frozen.add(img.Frozen.Seconds(), copied.Seconds())
	stored.add(float64(info.Stored)/float64(first.info.Stored)*100, changed)
	progress("%s: next frozen %v, stored %d bytes", size, img.Frozen, info.Stored)
	return saved{info: info, sum: sum}, nil
}

// measureRollback rewrites 1% of the pages (or all of them) and rolls the
// target back to snap, timing the load from the store and the restore. It
// then checks the target's buffer hash against the one at snap's capture.
func (b *bench) measureRollback(st *snapshot.Store, tgt *memTarget, x *row, snap saved, all bool, tr *engine.Tracker) {
	d, err := tgt.dirty(all)
	if err != nil {
		x.fail(err)
		return
	}

	runtime.GC()
	debug.FreeOSMemory()
	start := time.Now()
	elapsed, err := b.loadRestore(st, tgt.pid, snap.info, tr)
	if err != nil {
		x.fail(err)
		return
	}
	wall := time.Since(start)

	sum, err := tgt.sum()
	if err != nil {
		x.fail(err)
		return
	}
	if sum != snap.sum {
		x.fail(fmt.Errorf("rollback to %s left pid %d's buffer different from the snapshot (hash %s, want %s)",
			snap.info.Name, tgt.pid, sum, snap.sum))
		return
	}

	spans := tgt.pages(d)
	if all {
		spans = tgt.whole()
	}
	copied, err := copyReference(tgt.pid, spans, nil)
	if err != nil {
		x.fail(fmt.Errorf("reference for the rollback: %w", err))
		return
	}
	x.add(wall.Seconds(), copied.Seconds())
	progress("%s: restore %v (load + restore %v)", x.metric, elapsed, wall.Round(time.Microsecond))
}

// loadRestore loads info's snapshot and restores it into pid in full, in a
// restore worker as the mount does. It returns the time of the restore
// alone, and the caller times both. With a tracker, a rollback to its base
// compares only the pages written since, and the snapshot becomes the base
// again.
func (b *bench) loadRestore(st *snapshot.Store, pid int, info *snapshot.Info, tr *engine.Tracker) (time.Duration, error) {
	// The mount reads the snapshot's image to check the request before it
	// starts the worker, which loads the whole snapshot.
	_, img, err := st.LoadImage(info.Process, info.Name)
	if err != nil {
		return 0, fmt.Errorf("load snapshot %s of pid %d: %w", info.Name, pid, err)
	}

	start := time.Now()
	r, err := b.restorer.Start(worker.Job{
		Process:  info.Process,
		Store:    st.URL(),
		Snapshot: info.Name,
		Captured: info.Captured,
		Tracker:  tr,
		Image:    img,
	})
	if err != nil {
		return 0, fmt.Errorf("restore pid %d to %s: %w", pid, info.Name, err)
	}
	report, err := r.Wait()
	if err != nil {
		return 0, fmt.Errorf("restore pid %d to %s: %w", pid, info.Name, err)
	}
	if tr != nil {
		tr.SetBase(info.Name)
	}
	b.log.Debug("restored", "pid", pid, "snapshot", info.Name, "left_alone", report.LeftAlone, "warnings", report.Warnings)
	return time.Since(start), nil
}

// measureCat mounts the store, reads the largest memory file of snap with
// cat after dropping the page cache, and compares it with a plain file of
// the same size on the same disk.
func (b *bench) measureCat(st *snapshot.Store, tgt *memTarget, size string, snap saved, readRef string) {
	x := b.metric(mCat, size, unitRate, refRead)

	mnt := filepath.Join(b.tmp, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		x.fail(fmt.Errorf("create mount point: %w", err))
		return
	}
	srv, err := fs.Mount(mnt, fs.Config{Store: st, Logger: b.log})
	if err != nil {
		x.fail(fmt.Errorf("mount %s: %w", mnt, err))
		return
	}
	unmount := cleanup.add(func() {
		if err := srv.Unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: unmount %s: %v\n", mnt, err)
		}
	})
	defer unmount()

	path, err := largestFile(filepath.Join(mnt, strconv.Itoa(tgt.pid), snap.info.Name, "memory"))
	if err != nil {
		x.fail(err)
		return
	}
	rate, err := catRate(path)
	if err != nil {
		x.fail(err)
		return
	}
	ref, err := catRate(readRef)
	if err != nil {
		x.fail(err)
		return
	}
	x.add(rate, ref)
	progress("%s: cat %.2f GB/s, plain file %.2f GB/s", size, rate/1e9, ref/1e9)
}

// largestFile returns the path of the largest file in dir.
func largestFile(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}

	var best string
	var bestSize int64 = -1
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return "", fmt.Errorf("stat %s: %w", filepath.Join(dir, e.Name()), err)
		}
		if info.Size() > bestSize {
			best, bestSize = filepath.Join(dir, e.Name()), info.Size()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no memory file in %s", dir)
	}
	return best, nil
}

// benchIdle times the capture of an idle `sleep 1000`: into a new store,
// where the save also creates the process's directory, and once more into
// the same store, as every later capture of the process is.
func (b *bench) benchIdle() {
	frozen := b.metric(mIdleFrozen, "idle", unitSeconds, refCopy)
	wall := b.metric(mIdleWall, "idle", unitSeconds, refCopy)
	again := b.metric(mIdleAgain, "idle", unitSeconds, refCopy)
	progress("idle: starting sleep 1000")

	pid, kill, err := startSleep()
	if err != nil {
		frozen.fail(err)
		return
	}
	defer kill()
	if err := b.warmUp(pid); err != nil {
		frozen.fail(fmt.Errorf("warm-up: %w", err))
		return
	}

	for run := 1; run <= b.runs; run++ {
		if err := b.idleRun(pid, run, frozen, wall, again); err != nil {
			for _, x := range []*row{frozen, wall, again} {
				x.fail(err)
			}
		}
	}
}

func (b *bench) idleRun(pid, run int, frozen, wall, again *row) error {
	st, release, err := b.newStore(fmt.Sprintf("store-idle-%d", run))
	if err != nil {
		return err
	}
	defer release()

	img, _, elapsed, err := b.captureSave(st, pid, "", nil)
	if err != nil {
		return err
	}
	copied, err := copyReference(pid, imageSpans(img), nil)
	if err != nil {
		return fmt.Errorf("reference for the idle capture: %w", err)
	}
	frozen.add(img.Frozen.Seconds(), copied.Seconds())
	wall.add(elapsed.Seconds(), copied.Seconds())

	_, _, elapsedAgain, err := b.captureSave(st, pid, "", nil)
	if err != nil {
		return err
	}
	again.add(elapsedAgain.Seconds(), copied.Seconds())
	progress("idle: run %d frozen %v, wall %v, again %v", run, img.Frozen, elapsed, elapsedAgain)
	return nil
}
