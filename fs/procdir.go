package fs

import (
	"context"
	"errors"
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// snapshotTimeout is the kernel's entry and attribute cache time inside a
// snapshot directory, whose contents never change.
const snapshotTimeout = time.Hour

// procDir is /ckpt/<pid> for one process identity: the control files, the
// latest link and one directory per snapshot of this process. Snapshots of
// an earlier process that had the same pid never show here. Its entries
// have zero timeouts, so every path walk checks the store again.
type procDir struct {
	gofs.Inode
	state *mountState
	id    snapshot.ProcessID
}

var (
	_ gofs.NodeGetattrer = (*procDir)(nil)
	_ gofs.NodeLookuper  = (*procDir)(nil)
	_ gofs.NodeReaddirer = (*procDir)(nil)
	_ gofs.NodeRmdirer   = (*procDir)(nil)
	_ gofs.NodeUnlinker  = (*procDir)(nil)
)

// fillAttr reports a directory owned by the process's effective uid and
// gid, mode 0700, as /proc/<pid> is owned.
func (d *procDir) fillAttr(st *engine.Status, out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | 0o700
	out.Nlink = 2
	out.Uid = st.UID[1]
	out.Gid = st.GID[1]
	setTimes(out, d.state.started)
}

// Getattr fails with ENOENT once the process is gone.
func (d *procDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.state.debug(ctx, "getattr", "pid", d.id.PID)
	st, err := liveStatus(d.id)
	if err != nil {
		return syscall.ENOENT
	}
	d.fillAttr(st, &out.Attr)
	return 0
}

// Lookup finds a control file, the latest link or a snapshot directory.
func (d *procDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.state.debug(ctx, "lookup", "pid", d.id.PID, "name", name)
	caller, _ := fuse.FromContext(ctx)
	if _, err := d.state.authorize(caller, d.id); err != nil {
		return nil, d.refused(caller, name, err)
	}

	switch name {
	case "capture":
		return d.lookupControl(ctx, out, ctlCapture, slotCapture), 0
	case "restore":
		return d.lookupControl(ctx, out, ctlRestore, slotRestore), 0
	case "status":
		return d.lookupControl(ctx, out, ctlStatus, slotStatus), 0
	case "autosave":
		return d.lookupAutosave(ctx, out), 0
	}
	d.awaitSelfCapture(caller)
	if name == "latest" {
		return d.lookupLatest(ctx, out)
	}
	return d.lookupSnapshot(ctx, name, out)
}

// awaitSelfCapture makes a listing or lookup of snapshots wait for a
// capture the process requested itself (see procState.awaitSelfCapture).
func (d *procDir) awaitSelfCapture(caller *fuse.Caller) {
	if caller != nil {
		d.state.proc(d.id).awaitSelfCapture(int(caller.Pid))
	}
}

// lookupControl returns the node of a control file. While a capture or
// restore of the process runs, every lookup gets a new node, which the
// kernel treats as a new inode. The kernel holds an inode's lock for the
// whole of a write to it (and an open with O_TRUNC waits for that lock),
// so a second writer of the same inode would wait in the kernel until the
// first write returned instead of getting EBUSY. A target frozen while it
// waits for that lock could not even reach its ptrace stop.
func (d *procDir) lookupControl(ctx context.Context, out *fuse.EntryOut, kind controlKind, slot int) *gofs.Inode {
	file := &controlFile{state: d.state, id: d.id, kind: kind}
	file.fillAttr(&out.Attr)

	gen := d.id.StartTime
	if d.state.proc(d.id).busy() {
		gen = d.state.controlGen.Add(1)
	} else if child := d.GetChild(kind.String()); child != nil {
		return child
	}
	stable := gofs.StableAttr{Mode: syscall.S_IFREG, Ino: procIno(d.id.PID, slot), Gen: gen}
	return d.NewInode(ctx, file, stable)
}

func (d *procDir) lookupLatest(ctx context.Context, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	infos, err := d.state.store.Snapshots(d.id)
	if err != nil {
		return nil, errnos.Of(err)
	}
	if len(infos) == 0 {
		return nil, syscall.ENOENT
	}

	link := &latestLink{state: d.state, id: d.id}
	link.fillAttr(&out.Attr)
	if child := d.GetChild("latest"); child != nil {
		return child, 0
	}
	stable := gofs.StableAttr{Mode: syscall.S_IFLNK, Ino: procIno(d.id.PID, slotLatest), Gen: d.id.StartTime}
	return d.NewInode(ctx, link, stable), 0
}

// lookupSnapshot returns the directory of snapshot name. A directory the
// kernel still holds is reused while the store has the same snapshot, with
// the same capture time. A snapshot removed and taken again under the same
// name gets a new directory.
func (d *procDir) lookupSnapshot(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if snapshot.ValidName(name) != nil {
		return nil, syscall.ENOENT
	}
	info, err := d.findSnapshot(name)
	if err != nil {
		return nil, errnos.Of(err)
	}

	if child := d.GetChild(name); child != nil {
		if dir, ok := child.Operations().(*snapDir); ok && dir.snap.Info.Captured.Equal(info.Captured) {
			dir.fillAttr(&out.Attr)
			out.SetAttrTimeout(snapshotTimeout)
			return child, 0
		}
	}

	snap, err := d.state.store.Load(d.id, name)
	if err != nil {
		d.state.log.Error("load snapshot failed", "pid", d.id.PID, "snapshot", name, "errno", errnos.Name(errnos.Of(err)), "err", err)
		return nil, errnos.Of(err)
	}
	dir := newSnapDir(d.state, snap)
	dir.fillAttr(&out.Attr)
	out.SetAttrTimeout(snapshotTimeout)
	return d.NewInode(ctx, dir, gofs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// findSnapshot returns the store's entry for snapshot name of this process.
func (d *procDir) findSnapshot(name string) (snapshot.Info, error) {
	infos, err := d.state.store.Snapshots(d.id)
	if err != nil {
		return snapshot.Info{}, err
	}
	for _, info := range infos {
		if info.Name == name {
			return info, nil
		}
	}
	return snapshot.Info{}, fmt.Errorf("pid %d has no snapshot named %s: %w", d.id.PID, name, unix.ENOENT)
}

// Readdir lists the control files, latest when there is a snapshot, and
// the snapshots oldest first.
func (d *procDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	d.state.debug(ctx, "readdir", "pid", d.id.PID)
	caller, _ := fuse.FromContext(ctx)
	if _, err := d.state.authorize(caller, d.id); err != nil {
		return nil, d.refused(caller, ".", err)
	}
	d.awaitSelfCapture(caller)
	infos, err := d.state.store.Snapshots(d.id)
	if err != nil {
		return nil, errnos.Of(err)
	}

	entries := []fuse.DirEntry{
		{Name: "capture", Mode: syscall.S_IFREG, Ino: procIno(d.id.PID, slotCapture)},
		{Name: "restore", Mode: syscall.S_IFREG, Ino: procIno(d.id.PID, slotRestore)},
		{Name: "status", Mode: syscall.S_IFREG, Ino: procIno(d.id.PID, slotStatus)},
		autosaveEntry(d.id.PID),
	}
	if len(infos) > 0 {
		entries = append(entries, fuse.DirEntry{Name: "latest", Mode: syscall.S_IFLNK, Ino: procIno(d.id.PID, slotLatest)})
	}
	for _, info := range infos {
		entries = append(entries, fuse.DirEntry{Name: info.Name, Mode: syscall.S_IFDIR})
	}
	return gofs.NewListDirStream(entries), 0
}

// Rmdir removes snapshot name from the store. The caller must be allowed
// to ptrace the process and to use the snapshot.
func (d *procDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	d.state.debug(ctx, "rmdir", "pid", d.id.PID, "name", name)
	caller, _ := fuse.FromContext(ctx)
	err := d.remove(caller, name)
	if err != nil {
		d.state.log.Error("remove snapshot failed", "pid", d.id.PID, "snapshot", name, "errno", errnos.Name(errnos.Of(err)), "err", err)
		return errnos.Of(err)
	}
	d.state.log.Info("removed snapshot", "pid", d.id.PID, "snapshot", name)
	return 0
}

// Unlink rejects the removal of a control file or of latest with EPERM.
func (d *procDir) Unlink(ctx context.Context, name string) syscall.Errno {
	d.state.debug(ctx, "unlink", "pid", d.id.PID, "name", name)
	return syscall.EPERM
}

func (d *procDir) remove(caller *fuse.Caller, name string) error {
	if snapshot.ValidName(name) != nil {
		return fmt.Errorf("%s is not a snapshot: %w", name, unix.ENOTDIR)
	}
	creds, err := d.state.authorize(caller, d.id)
	if err != nil {
		return err
	}
	info, err := d.findSnapshot(name)
	if err != nil {
		return err
	}
	if err := mayUseSnapshot(creds, info.UID); err != nil {
		return err
	}

	if err := d.state.store.Remove(d.id, name); err != nil {
		return fmt.Errorf("remove snapshot %s of pid %d: %w", name, d.id.PID, err)
	}
	return nil
}

// refused returns the errno of a failed access check to name inside the
// directory and logs the reason, unless the process is simply gone.
func (d *procDir) refused(caller *fuse.Caller, name string, err error) syscall.Errno {
	errno := lookupErrno(err)
	if errno != syscall.ENOENT {
		d.state.logRefused(caller, d.id.PID, name, errno, err)
	}
	return errno
}

// lookupErrno is the errno of a failed access check inside a process
// directory: ENOENT once the process is gone, the check's errno otherwise.
func lookupErrno(err error) syscall.Errno {
	if errors.Is(err, unix.ESRCH) {
		return syscall.ENOENT
	}
	return errnos.Of(err)
}

// latestLink is /ckpt/<pid>/latest, a symbolic link to the newest snapshot.
type latestLink struct {
	gofs.Inode
	state *mountState
	id    snapshot.ProcessID
}

var (
	_ gofs.NodeGetattrer  = (*latestLink)(nil)
	_ gofs.NodeReadlinker = (*latestLink)(nil)
)

func (l *latestLink) fillAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	setTimes(out, l.state.started)
}

// Getattr reports a root-owned link.
func (l *latestLink) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.fillAttr(&out.Attr)
	return 0
}

// Readlink returns the name of the newest snapshot, by capture time.
func (l *latestLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	l.state.debug(ctx, "readlink", "pid", l.id.PID, "name", "latest")
	name, err := l.state.newest(l.id)
	if err != nil {
		return nil, errnos.Of(err)
	}
	if name == "" {
		return nil, syscall.ENOENT
	}
	return []byte(name), 0
}

// newest returns the name of the newest snapshot of process id, or "".
func (m *mountState) newest(id snapshot.ProcessID) (string, error) {
	infos, err := m.store.Snapshots(id)
	if err != nil {
		return "", err
	}
	if len(infos) == 0 {
		return "", nil
	}
	return infos[len(infos)-1].Name, nil
}
