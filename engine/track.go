package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Tracker follows which pages of one process are written between
// operations, so that the next capture saves only those pages and a
// rollback to the last snapshot compares only those pages.
//
// It works through a userfaultfd of the process in asynchronous
// write-protect mode: the first capture creates it inside the process by
// an injected userfaultfd(2), takes a copy with pidfd_getfd(2), closes the
// process's own descriptor, and registers every private writable mapping.
// Each later operation lists the pages written since the previous one
// with PAGEMAP_SCAN and write-protects them again. In asynchronous mode
// the kernel resolves each write fault itself instead of queueing it for
// the daemon. Each page written costs one extra minor fault per operation. When the daemon closes the Tracker, or dies, the kernel
// drops the registration with the descriptor.
//
// Base, SetBase and Reset are safe for concurrent use. An op uses the
// tracker between Track and Close, and Close of the tracker must not run
// while an op uses it; the caller runs one op per process at a time.
type Tracker struct {
	id snapshot.ProcessID

	// Only the op that uses the tracker touches these, on its thread.

	// uffd is the daemon's copy of the process's userfaultfd, -1 until
	// the first tracked capture.
	uffd int
	// pagemap is /proc/PID/pagemap, the file PAGEMAP_SCAN acts on.
	pagemap *os.File
	// ranges are the mappings registered, sorted and disjoint.
	ranges []trackedRange
	// pre holds the pages Precopy read since the last capture or
	// restore, nil when it did not run.
	pre *precopied
	// carried are pages that may differ from the base without showing as
	// written: those written between the first capture's freeze and the
	// write protection after its thaw. The next capture reads them.
	carried []span

	// execID is the exec id (see readExecID) of the program the
	// userfaultfd was created in: an execve replaces the address space it
	// tracks.
	execID string

	// mu protects the fields below, which the caller reads and sets
	// between ops.
	mu sync.Mutex
	// base names the snapshot whose saved memory equals the tracked
	// memory as it was at the last write-protection, and baseImage is its
	// image (regions and runs). base is "" when no snapshot matches.
	base      string
	baseImage *snapshot.Image
	// pending is the image of the capture or restore that last
	// write-protected the memory, until SetBase names it.
	pending *snapshot.Image
	// failed is set when setting up tracking failed; the process is then
	// captured in full from then on.
	failed bool
}

// trackedRange is a registered mapping.
type trackedRange struct {
	start, end uint64
	anonOnly   bool // a private file mapping, whose file pages are not saved
}

// NewTracker returns a Tracker for process id that tracks nothing yet.
// Pass it to Op.Track before each capture and restore of the process.
func NewTracker(id snapshot.ProcessID) *Tracker {
	return &Tracker{id: id, uffd: -1}
}

// Process returns the process the Tracker follows.
func (t *Tracker) Process() snapshot.ProcessID { return t.id }

// Base returns the name and capture time of the snapshot the next capture
// may be saved relative to, or "" when the next capture must be full.
// The caller checks that the store still holds that snapshot, since names
// may be reused, and calls Reset when it does not.
func (t *Tracker) Base() (string, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.baseImage == nil {
		return "", time.Time{}
	}
	return t.base, t.baseImage.Captured
}

// SetBase records that the operation just run produced or rolled back to
// the snapshot name: a capture whose image was saved under name, or a full
// restore of it. The next capture is then saved relative to name. It does
// nothing when no tracked operation ran since the last SetBase or Reset.
func (t *Tracker) SetBase(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		return
	}
	t.base, t.baseImage, t.pending = name, t.pending, nil
}

// Reset drops the base, so that the next capture is full. Call it when
// a tracked capture could not be saved, or when the base snapshot is
// removed.
func (t *Tracker) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.base, t.baseImage, t.pending, t.pre, t.carried = "", nil, nil, nil, nil
}

// Close releases the userfaultfd, which ends the tracking in the process.
// The tracker may be used again afterwards: the next capture starts the
// tracking over.
func (t *Tracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.base, t.baseImage, t.pending, t.ranges, t.pre, t.carried = "", nil, nil, nil, nil, nil
	var errs []error
	if t.uffd >= 0 {
		errs = append(errs, unix.Close(t.uffd))
		t.uffd = -1
	}
	if t.pagemap != nil {
		errs = append(errs, t.pagemap.Close())
		t.pagemap = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop tracking writes of pid %d: %w", t.id.PID, err)
	}
	return nil
}

// Track makes the op's next Capture, CaptureCOW or Restore use t, which
// must follow the op's process. Call it before that method.
func (op *Op) Track(t *Tracker) error {
	return op.do(func() error {
		id, err := Identify(op.pid)
		if err != nil {
			return err
		}
		if id != t.id {
			return fmt.Errorf("track writes of pid %d: tracker follows another process: %w", op.pid, unix.EINVAL)
		}
		if t.started() {
			execID, err := readExecID(op.pid)
			if err != nil {
				return err
			}
			if execID != t.execID {
				op.log.Debug("process ran execve since the tracking started, starting over")
				if err := t.Close(); err != nil {
					return err
				}
			}
		}
		op.tracker = t
		return nil
	})
}

// started reports whether the userfaultfd exists.
func (t *Tracker) started() bool { return t.uffd >= 0 }

// startTracking creates the userfaultfd inside the process and takes a copy.
//
// Precondition: called on the op's locked thread; all threads stopped;
// t.mu held.
func (op *Op) startTracking(t *Tracker) error {
	ret, err := op.syscall(op.threads[0], unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly)
	if err != nil {
		return fmt.Errorf("inject userfaultfd into pid %d: %w", op.pid, err)
	}
	theirs := int(ret)
	uffd, err := op.takeFD(theirs)
	if _, closeErr := op.syscall(op.threads[0], unix.SYS_CLOSE, uintptr(theirs)); closeErr != nil && err == nil {
		err = fmt.Errorf("close injected userfaultfd %d in pid %d: %w", theirs, op.pid, closeErr)
	}
	if err != nil {
		if uffd >= 0 {
			unix.Close(uffd)
		}
		return err
	}

	if err := uffdEnableWPAsync(uffd); err != nil {
		unix.Close(uffd)
		return fmt.Errorf("pid %d: %w", op.pid, err)
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", op.pid))
	if err != nil {
		unix.Close(uffd)
		return fmt.Errorf("open pagemap of pid %d: %w", op.pid, err)
	}
	execID, err := readExecID(op.pid)
	if err != nil {
		unix.Close(uffd)
		pagemap.Close()
		return err
	}
	t.uffd, t.pagemap, t.execID = uffd, pagemap, execID
	return nil
}

// takeFD returns a copy of descriptor fd of the process, or -1 and an
// error.
func (op *Op) takeFD(fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(op.pid, 0)
	if err != nil {
		return -1, fmt.Errorf("open pidfd of pid %d: %w", op.pid, err)
	}
	defer unix.Close(pidfd)
	mine, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("take descriptor %d of pid %d: %w", fd, op.pid, err)
	}
	return mine, nil
}

// trackable reports whether region r may be registered: private and
// writable memory that the capture saves.
func trackable(r *snapshot.Region) bool {
	return !r.Shared() && len(r.Perms) == 4 && r.Perms[1] == 'w' && skipReason(r) == ""
}

// tracked reports whether all of r lies in one registered range.
func (t *Tracker) tracked(r *snapshot.Region) bool {
	k := sort.Search(len(t.ranges), func(k int) bool { return t.ranges[k].end > r.Start })
	return k < len(t.ranges) && t.ranges[k].start <= r.Start && r.End <= t.ranges[k].end
}

// protect write-protects the written pages of every region of regions
// that t may track, registering those not registered yet, and records img
// as pending. A region that another userfaultfd holds (the process's own,
// or another daemon's) stays untracked and untouched: write protection is
// a bit of each page table entry, so protecting pages another tracker
// follows would hide their writes from it. The ranges of t are rebuilt
// from regions, so mappings gone since drop out.
//
// protected gives, by start, the regions a scan of this freeze already
// found registered to t, with the pages it found written: only those are
// protected again, instead of walking the whole region once more.
//
// Precondition: t.mu held; t started; no op but the caller's uses t.
func (t *Tracker) protect(log *slog.Logger, regions []snapshot.Region, img *snapshot.Image, protected map[uint64][]span) error {
	var ranges []trackedRange
	for i := range regions {
		r := &regions[i]
		if !trackable(r) {
			continue
		}
		written, known := protected[r.Start]
		if !known {
			if err := t.claim(r); err != nil {
				log.Debug("region left untracked", "region", regionName(r), "err", err)
				continue
			}
			written = []span{{r.Start, r.End}}
		}
		for _, sp := range written {
			if err := t.protectRange(sp); err != nil {
				return fmt.Errorf("write-protect pages of pid %d: %w", t.id.PID, err)
			}
		}
		ranges = append(ranges, trackedRange{start: r.Start, end: r.End, anonOnly: anonOnly(r)})
	}
	t.ranges, t.pending, t.pre, t.carried = ranges, img, nil, nil
	return nil
}

// claim registers r with the tracker's userfaultfd, or confirms that it is
// registered there already. The error wraps EBUSY when another userfaultfd
// holds some of r.
func (t *Tracker) claim(r *snapshot.Region) error {
	return uffdRegisterWP(t.uffd, r.Start, r.End)
}

// protectRange write-protects the written pages of sp, which the tracker
// holds.
func (t *Tracker) protectRange(sp span) error {
	req := scanRequest{start: sp.start, end: sp.end, flags: pmScanWPMatching | pmScanCheckWPAsync, mask: pageIsWritten, ret: pageIsWritten}
	return pagemapScan(int(t.pagemap.Fd()), req, nil, nil)
}
