package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine/worker"
	"github.com/ckptfs/ckptfs/snapshot"
)

// maxWrite is the largest FUSE read or write request, the kernel's cap.
const maxWrite = 1 << 20

// Config configures a mount.
type Config struct {
	// Store holds the snapshots; required.
	Store *snapshot.Store

	// Logger receives one Info record per capture and restore, one Error
	// record per failure and, at Debug level, one record per request. Nil
	// discards everything.
	Logger *slog.Logger

	// Debug turns on go-fuse's trace of the FUSE protocol, logged at Debug
	// level.
	Debug bool
}

// Server is a mounted ckptfs tree.
type Server struct {
	fuse       *fuse.Server
	mountpoint string
	state      *mountState
}

// Mount mounts the ckptfs tree on mountpoint and serves it until Unmount or
// an external umount. As root it calls mount(2) itself; otherwise it mounts
// through fusermount3 and can act only on the user's own processes.
// Once mounted, it resumes the autosave schedules stored for processes
// that still live.
func Mount(mountpoint string, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("mount %s: no store: %w", mountpoint, unix.EINVAL)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if err := checkNotMounted(mountpoint); err != nil {
		return nil, err
	}
	yama, err := readYamaScope()
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	state := &mountState{
		store:     cfg.Store,
		log:       log,
		yamaScope: yama,
		started:   time.Now(),
		procs:     map[snapshot.ProcessID]*procState{},
		restorer:  worker.NewRunner(log),
	}
	state.controlGen.Store(1 << 63)
	state.autosave = newAutosaver(state)

	// NOTE: gofs.Mount returns after go-fuse's first request to the new
	// mount from this very process (an open and a poll of a hidden file).
	// A SIGKILL before that request is answered leaves the process unable
	// to exit, waiting in the kernel on its own dead server, until someone
	// writes 1 to /sys/fs/fuse/connections/<device minor>/abort.
	root := &rootDir{state: state}
	srv, err := gofs.Mount(mountpoint, root, mountOptions(cfg, log))
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}

	if os.Geteuid() == 0 {
		if err := setKernelReadAhead(mountpoint, kernelReadAheadKiB); err != nil {
			log.Warn("kernel read-ahead left at its default of 128 KiB: sequential reads of memory files are slower", "mountpoint", mountpoint, "err", err)
		}
	}
	log.Info("mounted", "mountpoint", mountpoint, "store", cfg.Store.Dir())
	state.autosave.resume()
	return &Server{fuse: srv, mountpoint: mountpoint, state: state}, nil
}

// checkNotMounted rejects a mountpoint where a ckptfs is mounted already,
// because a second mount would hide the first one's tree and leave its
// daemon running unseen.
func checkNotMounted(mountpoint string) error {
	abs, dev, err := ckptfsMount(mountpoint)
	if err != nil {
		return fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if dev != "" {
		return fmt.Errorf("mount %s: a ckptfs is mounted there already; unmount it first with umount %s: %w",
			mountpoint, abs, unix.EBUSY)
	}
	return nil
}

// ckptfsMount returns the absolute path of mountpoint and the device
// number, "MAJOR:MINOR", of the newest ckptfs mounted there, or "" when
// none is. It reads the mount table, not the mount itself.
func ckptfsMount(mountpoint string) (abs, dev string, err error) {
	abs, err = filepath.Abs(mountpoint)
	if err != nil {
		return "", "", err
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("read mount table: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[4] == abs && fields[sep+1] == "fuse.ckptfs" {
			dev = fields[2]
		}
	}
	return abs, dev, nil
}

// mountOptions returns the go-fuse options of a mount. Timeouts stay unset
// (zero) on purpose: the root and the process directories change with every
// process start and exit, and the snapshot subtrees set their own long
// timeouts per entry.
func mountOptions(cfg Config, log *slog.Logger) *gofs.Options {
	root := os.Geteuid() == 0
	return &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true,
			Options:           []string{"default_permissions"},
			FsName:            "ckptfs",
			Name:              "ckptfs",
			MaxWrite:          maxWrite,
			DirectMount:       root,
			DirectMountStrict: root,
			DisableXAttrs:     true,
			// Entries of the root and the process directories expire at
			// once, so READDIRPLUS would only add a lookup per entry.
			DisableReadDirPlus: true,
			Debug:              cfg.Debug,
			Logger:             slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		NullPermissions: true,
		Logger:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Wait blocks until the file system is unmounted, then stops the autosave
// schedules and ends the write tracking of every process.
func (s *Server) Wait() {
	s.fuse.Wait()
	s.state.autosave.stop()
	s.state.restorer.Close()
	s.state.closeTrackers()
}

// Unmount stops the autosave schedules, waiting for an auto-save in
// progress, unmounts the file system and ends the write tracking of every
// process. The autosave settings stay in the store for the next mount.
// When the kernel reports it busy, for example because a process has a
// file open inside, Unmount detaches it lazily with umount2(MNT_DETACH). The mount then leaves the namespace at
// once, and the server stops when the last file is closed.
func (s *Server) Unmount() error {
	s.state.autosave.stop()
	err := s.fuse.Unmount()
	if err == nil {
		s.state.restorer.Close()
		s.state.closeTrackers()
		s.state.log.Info("unmounted", "mountpoint", s.mountpoint)
		return nil
	}

	detachErr := unix.Unmount(s.mountpoint, unix.MNT_DETACH)
	if detachErr != nil && !errors.Is(detachErr, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w (lazy unmount: %w)", s.mountpoint, err, detachErr)
	}
	s.state.log.Warn("unmounted lazily", "mountpoint", s.mountpoint, "err", err)
	return nil
}

// mountState is shared by every node of one mount.
type mountState struct {
	store     *snapshot.Store
	log       *slog.Logger
	restorer  *worker.Runner // runs every restore in its worker process
	yamaScope int
	started   time.Time
	autosave  *autosaver

	// mu protects procs. It is held only to look an entry up or prune it.
	mu    sync.Mutex
	procs map[snapshot.ProcessID]*procState

	// controlGen numbers the control-file nodes made while their process
	// is busy (see procDir.lookupControl). It starts at 2^63, above any
	// process start time, which the other control-file nodes use.
	controlGen atomic.Uint64
}

// proc returns the state kept for the process id, creating it on first use.
func (m *mountState) proc(id snapshot.ProcessID) *procState {
	m.mu.Lock()
	defer m.mu.Unlock()

	p := m.procs[id]
	if p == nil {
		p = &procState{}
		m.procs[id] = p
	}
	return p
}

// forgetExited drops the state of processes that are not in live, keyed by
// pid, and ends their write tracking. A process with an operation still
// in progress is dropped at a later call.
func (m *mountState) forgetExited(live map[int]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()

	for id, p := range m.procs {
		if live[id.PID] || p.busy() {
			continue
		}
		if err := p.closeTracker(); err != nil {
			m.log.Warn("ending write tracking of an exited process failed", "pid", id.PID, "err", err)
		}
		delete(m.procs, id)
	}
}
