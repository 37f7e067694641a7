package fs

import (
	"context"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"os"
	"strconv"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// Inode numbers of the dynamic part of the tree. A process directory and
// its control files get fixed numbers derived from the pid, with the
// process start time as generation. Snapshot subtrees use go-fuse's
// automatic numbers, which start at 2^63.
const (
	selfIno = 2

	procInoBase = 1 << 32
	slotDir     = 0
	slotCapture = 1
	slotRestore = 2
	slotStatus  = 3
	slotLatest  = 4
)

func procIno(pid, slot int) uint64 {
	return procInoBase | uint64(pid)<<4 | uint64(slot)
}

// rootDir is the top of the mount: the self link and one directory per
// process the caller may ptrace. Its entries change with every process
// start and exit, so it keeps zero entry, attribute and negative timeouts.
type rootDir struct {
	gofs.Inode
	state *mountState
}

var (
	_ gofs.NodeGetattrer = (*rootDir)(nil)
	_ gofs.NodeLookuper  = (*rootDir)(nil)
	_ gofs.NodeReaddirer = (*rootDir)(nil)
	_ gofs.NodeUnlinker  = (*rootDir)(nil)
	_ gofs.NodeRmdirer   = (*rootDir)(nil)
)

// Getattr reports a root-owned directory, mode 0555.
func (r *rootDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.state.debug(ctx, "getattr", "name", "/")
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	setTimes(&out.Attr, r.state.started)
	return 0
}

// Lookup finds "self" or the directory of a live process. A pid directory
// exists for every process that is not a kernel thread. The kernel checks
// whether the caller may enter it (mode 0700, owned by the process's uid),
// and every handler below it checks again.
func (r *rootDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r.state.debug(ctx, "lookup", "name", name)
	if name == "self" {
		return r.lookupSelf(ctx, out), 0
	}

	pid, ok := parsePID(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	st, id, err := readProcess(pid)
	if err != nil {
		return nil, syscall.ENOENT
	}

	if child := r.GetChild(name); child != nil {
		if dir, ok := child.Operations().(*procDir); ok && dir.id == id {
			dir.fillAttr(st, &out.Attr)
			return child, 0
		}
	}
	dir := &procDir{state: r.state, id: id}
	dir.fillAttr(st, &out.Attr)
	stable := gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: procIno(pid, slotDir), Gen: id.StartTime}
	return r.NewInode(ctx, dir, stable), 0
}

func (r *rootDir) lookupSelf(ctx context.Context, out *fuse.EntryOut) *gofs.Inode {
	link := &selfLink{state: r.state}
	link.fillAttr(&out.Attr)
	if child := r.GetChild("self"); child != nil {
		return child
	}
	return r.NewInode(ctx, link, gofs.StableAttr{Mode: syscall.S_IFLNK, Ino: selfIno})
}

// Readdir lists "self" and the processes the caller may ptrace and capture.
// It leaves out kernel threads, which have no directory, and the daemon
// itself and zombies, whose directories a lookup still finds so that a
// capture of them fails with the reason. It also
// invalidates the kernel's entries of processes that are gone, from its
// own goroutine because a notification sent from inside a request handler
// can deadlock.
func (r *rootDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	r.state.debug(ctx, "readdir", "name", "/")
	caller, _ := fuse.FromContext(ctx)
	creds, err := readCallerCreds(caller)
	if err != nil {
		return nil, errnos.Of(err)
	}

	pids, err := listPIDs()
	if err != nil {
		errno := errnos.Of(err)
		r.state.log.Error("list processes failed", "errno", errnos.Name(errno), "err", err)
		return nil, errno
	}

	entries := []fuse.DirEntry{{Name: "self", Mode: syscall.S_IFLNK, Ino: selfIno}}
	live := map[int]bool{}
	daemon := os.Getpid()
	for _, pid := range pids {
		st, err := engine.ReadStatus(pid)
		if err != nil || st.Kthread || st.Tgid != pid {
			continue
		}
		live[pid] = true
		if pid != daemon && st.State != 'Z' && st.State != 'X' && r.state.mayPtrace(creds, pid, st) == nil {
			entries = append(entries, fuse.DirEntry{Name: strconv.Itoa(pid), Mode: syscall.S_IFDIR, Ino: procIno(pid, slotDir)})
		}
	}

	r.forgetExited(live)
	return gofs.NewListDirStream(entries), 0
}

// Unlink rejects the removal of self with EPERM: go-fuse would otherwise
// report success for a node without an Unlink method.
func (r *rootDir) Unlink(ctx context.Context, name string) syscall.Errno {
	r.state.debug(ctx, "unlink", "name", name)
	return syscall.EPERM
}

// Rmdir rejects the removal of a process directory with EPERM.
func (r *rootDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	r.state.debug(ctx, "rmdir", "name", name)
	return syscall.EPERM
}

// forgetExited drops the mount's state of processes that are gone and
// invalidates their kernel entries.
func (r *rootDir) forgetExited(live map[int]bool) {
	r.state.forgetExited(live)

	var gone []string
	for name, child := range r.Children() {
		if dir, ok := child.Operations().(*procDir); ok && !live[dir.id.PID] {
			gone = append(gone, name)
		}
	}
	if len(gone) == 0 {
		return
	}
	go func() {
		for _, name := range gone {
			if errno := r.NotifyEntry(name); errno != 0 {
				r.state.log.Debug("invalidate entry", "name", name, "errno", errno)
			}
		}
	}()
}

// mayPtrace checks the caller against the live process pid with status st.
func (m *mountState) mayPtrace(caller taskCreds, pid int, st *engine.Status) error {
	target, err := readTarget(pid, st, caller.TGID, m.yamaScope)
	if err != nil {
		return err
	}
	return mayPtrace(caller, target, m.yamaScope)
}

// readProcess returns the status and identity of pid when it is a live
// process that may get a directory: a thread group leader, not a kernel
// thread.
func readProcess(pid int) (*engine.Status, snapshot.ProcessID, error) {
	st, err := engine.ReadStatus(pid)
	if err != nil {
		return nil, snapshot.ProcessID{}, err
	}
	if st.Kthread || st.Tgid != pid {
		return nil, snapshot.ProcessID{}, syscall.ENOENT
	}

	id, err := engine.Identify(pid)
	if err != nil {
		return nil, snapshot.ProcessID{}, err
	}
	return st, id, nil
}

// parsePID accepts a pid in canonical decimal form only, so that "01" or
// "+1" do not name the same process as "1".
func parsePID(name string) (int, bool) {
	pid, err := strconv.Atoi(name)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != name {
		return 0, false
	}
	return pid, true
}

// listPIDs returns the thread group ids listed in /proc.
func listPIDs() ([]int, error) {
	dir, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer dir.Close()

	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, name := range names {
		if pid, ok := parsePID(name); ok {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// selfLink is /ckpt/self, a symbolic link to the directory of the calling
// process.
type selfLink struct {
	gofs.Inode
	state *mountState
}

var (
	_ gofs.NodeGetattrer  = (*selfLink)(nil)
	_ gofs.NodeReadlinker = (*selfLink)(nil)
)

func (l *selfLink) fillAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	setTimes(out, l.state.started)
}

// Getattr reports a root-owned link.
func (l *selfLink) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.fillAttr(&out.Attr)
	return 0
}

// Readlink returns the caller's thread group id: the kernel reports the
// calling thread, which may be any thread of the process.
func (l *selfLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	caller, _ := fuse.FromContext(ctx)
	l.state.debug(ctx, "readlink", "name", "self")
	creds, err := readCallerCreds(caller)
	if err != nil {
		return nil, syscall.ENOENT
	}
	return []byte(strconv.Itoa(creds.TGID)), 0
}
