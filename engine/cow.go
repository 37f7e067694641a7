package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// cloneExitKill are the ptrace options of the clone: those of every tracee
// plus PTRACE_O_EXITKILL, so that the clone dies with the daemon instead of
// running the target's code as a second copy of it.
const cloneExitKill = seizeOptions | unix.PTRACE_O_EXITKILL

// cloneFlags share the descriptor table and the filesystem context with the
// target, so the clone holds no extra reference to any open file (a pipe
// closed by the target still reaches EOF) and exits without closing
// anything. Without CLONE_VM the clone gets a copy-on-write copy of the
// address space. The exit signal in the low byte is 0: the target gets no
// SIGCHLD, and its wait calls without __WALL or __WCLONE never see the clone.
const cloneFlags = unix.CLONE_FILES | unix.CLONE_FS

// CaptureCOW freezes process pid, captures it and thaws it, reading its
// memory afterwards from a copy-on-write clone: Begin and Op.CaptureCOW in
// one call. Closing the returned memory also ends the op.
func CaptureCOW(pid int, log *slog.Logger) (*snapshot.Image, *COWMemory, error) {
	op, err := Begin(pid, log)
	if err != nil {
		return nil, nil, err
	}
	img, mem, err := op.CaptureCOW()
	if err != nil {
		op.Close()
		return nil, nil, err
	}
	mem.closeOp = true
	return img, mem, nil
}

// CaptureCOW is Capture for a large process. Instead of copying memory
// while the process is frozen, it makes the stopped process clone itself
// (an injected clone without CLONE_VM, sharing every page copy-on-write).
// It thaws the process at once and returns an Image whose runs carry no
// Data, with a COWMemory that reads the saved bytes from the clone. The clone is
// made while every thread is stopped, so its memory matches the saved
// registers. The process then pays only for the pages it writes while the
// clone lives: one copy each, on the first write.
//
// The freeze also skips reading smaps, whose page-table walk costs about
// as much as the clone: the VmFlags of each region are read from the
// clone's smaps after the thaw. While frozen, regions the clone cannot show
// as they were are copied into Run.Data, and COWMemory serves them from
// there: shared mappings, whose later writes the clone would see, and
// anonymous regions missing from the clone (MADV_DONTFORK). A region that
// turns out to be MADV_WIPEONFORK (empty in the clone) is not saved, with
// a SkipReason. When the process cannot clone (a seccomp filter, a pid
// limit, another pid namespace), the memory is copied as Capture does, and
// a Debug line says why.
//
// The caller saves the image, for example with snapshot.Store.SaveFrom,
// and then closes the COWMemory, which kills the clone and reaps it inside
// the process, freezing it once more for an injected wait4 (well under a
// millisecond). Op.Close closes it too. An op can capture once.
func (op *Op) CaptureCOW() (*snapshot.Image, *COWMemory, error) {
	var img *snapshot.Image
	var clone cowClone
	err := op.do(func() error {
		if !op.frozen {
			return fmt.Errorf("capture pid %d: process is not frozen: %w", op.pid, unix.EINVAL)
		}
		var err error
		img, err = op.capture(op.captureMapsOnly, func(img *snapshot.Image) error {
			if op.tracker != nil {
				clone, err = op.captureMemoryTracked(img)
			} else {
				clone, err = op.captureMemoryCOW(img)
			}
			return err
		})
		op.thaw()
		op.clone = clone
		if err != nil {
			return err
		}
		img.Frozen = op.frozenFor
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("capture pid %d: %w", op.pid, errors.Join(err, op.closeClone()))
	}

	mem, err := op.openCOWMemory(img, clone)
	if err != nil {
		return nil, nil, fmt.Errorf("capture pid %d: %w", op.pid, errors.Join(err, op.closeClone()))
	}
	if op.protectLate {
		op.protectAfterThaw(img, clone.pid)
	}
	op.log.Debug("captured copy-on-write", "frozen", img.Frozen, "clone", clone.pid,
		"threads", len(img.Threads), "regions", len(img.Regions))
	return img, mem, nil
}

// cowClone is the copy-on-write clone of the target, zero when none.
type cowClone struct {
	pid   int // in the daemon's pid namespace, which is also the target's
	valid bool
	mem   *os.File // /proc/PID/mem of the clone, nil until opened
}

// captureMapsOnly reads /proc/PID/maps byte for byte and its regions,
// without their VmFlags.
//
// Precondition: all threads stopped; no scratch page mapped yet.
func (op *Op) captureMapsOnly(img *snapshot.Image) error {
	raw, err := readProcFile(op.pid, "maps")
	if err != nil {
		return err
	}
	if img.Regions, err = parseMaps(raw); err != nil {
		return fmt.Errorf("parse maps of pid %d: %w", op.pid, err)
	}
	img.Maps = raw
	return nil
}

// captureMemoryCOW injects the clone and copies the regions it cannot
// serve. When the clone fails, it reads the VmFlags and copies all memory
// as Capture does, and returns no clone.
//
// Precondition: called on the op's locked thread; all threads stopped;
// img.Regions read by captureMapsOnly.
func (op *Op) captureMemoryCOW(img *snapshot.Image) (cowClone, error) {
	clone, err := op.injectClone()
	if err != nil {
		op.log.Debug("copy-on-write clone failed, copying memory while frozen", "err", err)
		if err := op.addVmFlags(img); err != nil {
			return cowClone{}, err
		}
		return cowClone{}, op.captureMemory(img)
	}

	raw, err := readProcFile(clone.pid, "maps")
	if err == nil {
		err = op.copyUncloned(img, raw)
	}
	if err != nil {
		op.reapFrozen(clone)
		return cowClone{}, fmt.Errorf("clone %d of pid %d: %w", clone.pid, op.pid, err)
	}
	return clone, nil
}

// addVmFlags reads smaps and sets the VmFlags of every region of img.
//
// Precondition: all threads stopped; img.Regions read by captureMapsOnly.
func (op *Op) addVmFlags(img *snapshot.Image) error {
	regions, _, err := readMaps(op.pid)
	if err != nil {
		return err
	}
	for i := range img.Regions {
		if c := containing(regions, &img.Regions[i]); c != nil {
			img.Regions[i].VmFlags = c.VmFlags
		}
	}
	return nil
}

// copyUncloned copies into Run.Data the regions whose contents the clone,
// with maps cloneMaps, does not hold as they are now. Regions it cannot
// read without their VmFlags get a SkipReason.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) copyUncloned(img *snapshot.Image, cloneMaps []byte) error {
	inClone, err := parseMaps(cloneMaps)
	if err != nil {
		return fmt.Errorf("parse maps: %w", err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", op.pid))
	if err != nil {
		return fmt.Errorf("open pagemap of pid %d: %w", op.pid, err)
	}
	defer pagemap.Close()

	for i := range img.Regions {
		r := &img.Regions[i]
		if r.SkipReason = skipReason(r); r.SkipReason != "" {
			continue
		}
		cloned := containing(inClone, r) != nil
		if r.SkipReason = uncloneableReason(r, cloned); r.SkipReason != "" {
			continue
		}
		if cloned && !r.Shared() {
			continue
		}
		if err := op.copyRegion(pagemap, r); err != nil {
			return err
		}
		r.Saved = true
	}
	return nil
}

// uncloneableReason returns why region r, which is (cloned) or is not in
// the clone, cannot be saved without its VmFlags, or "". A region missing
// from the clone (VM_DONTCOPY) may be device memory, and so may a shared
// mapping of a device file: only anonymous ones are copied.
func uncloneableReason(r *snapshot.Region, cloned bool) string {
	// Shared anonymous memory shows as "/dev/zero (deleted)".
	device := strings.HasPrefix(r.Path, "/dev/") && !strings.HasPrefix(r.Path, "/dev/shm/") && !strings.HasPrefix(r.Path, "/dev/zero")
	switch {
	case !cloned && r.Inode != 0:
		return "mapping not inherited by a fork (MADV_DONTFORK or a device)"
	case r.Shared() && device:
		return "shared mapping of a device file"
	}
	return ""
}

// containing returns the region of regions (sorted, as maps lists them)
// that contains all of r, or nil.
func containing(regions []snapshot.Region, r *snapshot.Region) *snapshot.Region {
	k := sort.Search(len(regions), func(k int) bool { return regions[k].End > r.Start })
	if k < len(regions) && regions[k].Start <= r.Start && r.End <= regions[k].End {
		return &regions[k]
	}
	return nil
}

// copyRegion reads the runs of region r from the target's pagemap and
// copies them into Run.Data.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) copyRegion(pagemap *os.File, r *snapshot.Region) error {
	runs, err := regionRuns(pagemap, r)
	if err != nil {
		return fmt.Errorf("pid %d: %w", op.pid, err)
	}
	r.Runs = runs
	if err := op.copyRuns(r); err != nil {
		return fmt.Errorf("region %#x-%#x %s: %w", r.Start, r.End, r.Path, err)
	}
	return nil
}

// injectClone makes the main thread of the target clone itself and returns
// the clone, stopped and traced by this thread with PTRACE_O_EXITKILL.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) injectClone() (cowClone, error) {
	same, err := samePidNamespace(op.pid)
	if err != nil {
		return cowClone{}, err
	}
	if !same {
		return cowClone{}, fmt.Errorf("pid %d creates children in another pid namespace: %w", op.pid, unix.EOPNOTSUPP)
	}

	ret, err := op.syscall(op.threads[0], unix.SYS_CLONE, cloneFlags, 0, 0, 0, 0)
	if err != nil {
		return cowClone{}, fmt.Errorf("inject clone into pid %d: %w", op.pid, err)
	}
	clone := cowClone{pid: int(ret), valid: true}

	// A clone created by a seized tracee starts in a PTRACE_EVENT_STOP.
	err = op.waitCloneStop(clone.pid)
	if err == nil {
		err = ptraceRaw(unix.PTRACE_SETOPTIONS, clone.pid, 0, cloneExitKill)
	}
	if err != nil {
		op.reapFrozen(clone)
		return cowClone{}, fmt.Errorf("set up clone %d of pid %d: %w", clone.pid, op.pid, err)
	}
	return clone, nil
}

// reapFrozen kills the clone and leaves it to thaw to reap, while the
// target is still frozen.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) reapFrozen(clone cowClone) {
	op.killClone(clone)
	addUnreaped(op.pid, clone.pid)
}

// waitCloneStop waits for the first stop of a new clone.
//
// Precondition: called on the op's locked thread.
func (op *Op) waitCloneStop(pid int) error {
	ws, err := waitTid(pid)
	if err != nil {
		return fmt.Errorf("wait for clone %d of pid %d: %w", pid, op.pid, err)
	}
	if !ws.Stopped() {
		return fmt.Errorf("clone %d of pid %d ended at once (status %#x): %w", pid, op.pid, uint32(ws), unix.ESRCH)
	}
	return nil
}

// samePidNamespace reports whether the children of process pid get pids
// in the daemon's pid namespace, so that the pid an injected clone returns
// is valid in this process too.
func samePidNamespace(pid int) (bool, error) {
	self, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return false, fmt.Errorf("read own pid namespace: %w", err)
	}
	target, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid_for_children", pid))
	if err != nil {
		return false, fmt.Errorf("read pid namespace of the children of pid %d: %w", pid, err)
	}
	return self == target, nil
}

// killClone kills the clone and waits until this thread, its tracer, has
// seen it die. The clone is then a zombie child of the target, which
// reapUnreaped collects.
//
// Precondition: called on the op's locked thread.
func (op *Op) killClone(clone cowClone) {
	if !clone.valid {
		return
	}
	if err := unix.Kill(clone.pid, unix.SIGKILL); err != nil {
		op.log.Warn("killing the copy-on-write clone failed", "clone", clone.pid, "err", err)
		return
	}
	for range maxStopRounds {
		ws, err := waitTid(clone.pid)
		if err != nil {
			op.log.Warn("waiting for the copy-on-write clone to die failed", "clone", clone.pid, "err", err)
			return
		}
		if ws.Exited() || ws.Signaled() {
			return
		}
	}
}

// closeClone kills the clone and reaps it inside the target: it freezes
// the target again, and thaw has its main thread call wait4 on the clone
// (see reapUnreaped). A target that exited meanwhile needs nothing: its
// zombie children go to a reaper. When the freeze fails, the next op that
// freezes the target reaps the clone.
//
// NOTE: a thread of the target inside a FUSE request that this daemon
// replies to only after the save (a self-capture waiting for this one)
// cannot stop, so the freeze fails after stopTimeout and the zombie waits
// for the next op.
func (op *Op) closeClone() error {
	return op.do(func() error {
		clone := op.clone
		if !clone.valid {
			return nil
		}
		op.clone = cowClone{}
		if clone.mem != nil {
			if err := clone.mem.Close(); err != nil {
				op.log.Warn("closing memory of the copy-on-write clone failed", "clone", clone.pid, "err", err)
			}
		}
		op.killClone(clone)
		addUnreaped(op.pid, clone.pid)

		err := op.freeze()
		if err == nil {
			err = op.waitStops()
		}
		op.thaw()
		if err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("freeze pid %d to reap copy-on-write clone %d: %w", op.pid, clone.pid, err)
		}
		return nil
	})
}
