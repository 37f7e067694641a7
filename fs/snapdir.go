package fs

import (
	"context"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"slices"
	"strconv"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/snapshot"
)

// snapAttr are the attributes every node of one snapshot subtree shares:
// owned by the snapshot's uid, modified at its capture time.
type snapAttr struct {
	uid, gid uint32
	mtime    time.Time
}

func (a snapAttr) fill(out *fuse.Attr, mode uint32, size uint64) {
	out.Mode = mode
	out.Size = size
	out.Nlink = 1
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		out.Nlink = 2
	}
	out.Uid = a.uid
	out.Gid = a.gid
	setTimes(out, a.mtime)
}

// treeNode is a node of a snapshot subtree.
type treeNode interface {
	gofs.InodeEmbedder
	fillAttr(out *fuse.Attr)
}

// treeEntry is one entry of a snapshot subdirectory: its file type and how
// to make its node on the first lookup.
type treeEntry struct {
	mode uint32 // S_IFDIR or S_IFREG
	node func() treeNode
}

// treeDir is a read-only directory of a snapshot subtree (mode 0500). Its
// entries are fixed when it is made; nodes are made on lookup and the
// kernel may cache them for snapshotTimeout.
//
// Removing an entry succeeds and changes nothing, so that `rm -r` of a
// snapshot reaches the rmdir of the snapshot directory, which deletes it.
type treeDir struct {
	gofs.Inode
	state   *mountState
	attr    snapAttr
	names   []string
	entries map[string]treeEntry
}

var (
	_ gofs.NodeGetattrer = (*treeDir)(nil)
	_ gofs.NodeLookuper  = (*treeDir)(nil)
	_ gofs.NodeReaddirer = (*treeDir)(nil)
	_ gofs.NodeUnlinker  = (*treeDir)(nil)
	_ gofs.NodeRmdirer   = (*treeDir)(nil)
)

func newTreeDir(state *mountState, attr snapAttr) *treeDir {
	return &treeDir{state: state, attr: attr, entries: map[string]treeEntry{}}
}

// add appends an entry; names are listed in the order they were added.
func (d *treeDir) add(name string, mode uint32, node func() treeNode) {
	d.names = append(d.names, name)
	d.entries[name] = treeEntry{mode: mode, node: node}
}

func (d *treeDir) fillAttr(out *fuse.Attr) {
	d.attr.fill(out, syscall.S_IFDIR|0o500, 0)
}

// Getattr reports the directory; the kernel may cache it for an hour.
func (d *treeDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fillAttr(&out.Attr)
	out.SetTimeout(snapshotTimeout)
	return 0
}

// Lookup makes the node of an entry, or reuses the one the kernel holds.
func (d *treeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.state.debug(ctx, "lookup", "name", name, "uid", d.attr.uid)
	entry, ok := d.entries[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	out.SetEntryTimeout(snapshotTimeout)
	out.SetAttrTimeout(snapshotTimeout)

	if child := d.GetChild(name); child != nil {
		child.Operations().(treeNode).fillAttr(&out.Attr)
		return child, 0
	}
	node := entry.node()
	node.fillAttr(&out.Attr)
	return d.NewInode(ctx, node, gofs.StableAttr{Mode: entry.mode}), 0
}

// Readdir lists the entries to callers that may read the snapshot.
func (d *treeDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	d.state.debug(ctx, "readdir", "uid", d.attr.uid)
	if errno := d.state.checkSnapshotReader(ctx, d.attr.uid); errno != 0 {
		return nil, errno
	}
	entries := make([]fuse.DirEntry, 0, len(d.names))
	for _, name := range d.names {
		entries = append(entries, fuse.DirEntry{Name: name, Mode: d.entries[name].mode})
	}
	return gofs.NewListDirStream(entries), 0
}

// Unlink accepts the removal of a file of the snapshot and keeps it.
func (d *treeDir) Unlink(ctx context.Context, name string) syscall.Errno {
	return d.keep(ctx, name)
}

// Rmdir accepts the removal of a subdirectory of the snapshot and keeps it.
func (d *treeDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	return d.keep(ctx, name)
}

func (d *treeDir) keep(ctx context.Context, name string) syscall.Errno {
	if _, ok := d.entries[name]; !ok {
		return syscall.ENOENT
	}
	return d.state.checkSnapshotReader(ctx, d.attr.uid)
}

// checkSnapshotReader returns 0 when the caller may use a snapshot of uid
// owner, and the errno of the refusal otherwise.
func (m *mountState) checkSnapshotReader(ctx context.Context, owner uint32) syscall.Errno {
	caller, _ := fuse.FromContext(ctx)
	creds, err := readCallerCreds(caller)
	if err == nil {
		err = mayUseSnapshot(creds, owner)
	}
	return errnos.Of(err)
}

// snapDir is /ckpt/<pid>/<name>: one loaded snapshot. The small files are
// rendered once, when the directory is made; memory files read the store on
// demand. The snapshot stays open until the kernel sends FORGET for the
// directory, which comes only after every node below it is forgotten.
type snapDir struct {
	*treeDir
	snap *snapshot.Snapshot
}

var _ gofs.NodeOnForgetter = (*snapDir)(nil)

func newSnapDir(state *mountState, snap *snapshot.Snapshot) *snapDir {
	img := snap.Image
	attr := snapAttr{uid: snap.Info.UID, gid: img.Creds.GID[0], mtime: snap.Info.Captured}
	dir := &snapDir{treeDir: newTreeDir(state, attr), snap: snap}

	dir.addFile("info", renderInfo(snap.Info, img))
	if len(img.Threads) > 0 {
		dir.addFile("regs", renderRegs(&img.Threads[0].Regs))
		dir.addFile("fpregs", renderFPRegs(img.Threads[0].Xstate))
	}
	dir.addFile("maps", img.Maps)
	dir.addFile("fds", renderFDs(img.FDs))

	dir.add("memory", syscall.S_IFDIR, func() treeNode { return newMemoryDir(state, attr, snap) })
	threads := renderThreads(img.Threads)
	dir.add("threads", syscall.S_IFDIR, func() treeNode { return newThreadsDir(state, attr, threads) })
	return dir
}

// OnForget closes the snapshot once the kernel no longer holds the
// directory.
func (d *snapDir) OnForget() {
	d.state.closeSnapshot(d.snap)
}

// newMemoryDir makes memory/, one file per saved region. Like every node
// factory here it returns a new node on each call, because the kernel may
// forget a node and look it up again.
func newMemoryDir(state *mountState, attr snapAttr, snap *snapshot.Snapshot) *treeDir {
	dir := newTreeDir(state, attr)
	for i := range snap.Image.Regions {
		region := &snap.Image.Regions[i]
		if !region.Saved {
			continue
		}
		dir.add(regionName(region), syscall.S_IFREG, func() treeNode {
			return &memFile{state: state, attr: attr, snap: snap, index: i, size: region.Len()}
		})
	}
	return dir
}

// threadFiles are the rendered files of one thread.
type threadFiles struct {
	tid          int
	regs, fpregs []byte
}

func renderThreads(threads []snapshot.Thread) []threadFiles {
	files := make([]threadFiles, 0, len(threads))
	for i := range threads {
		th := &threads[i]
		files = append(files, threadFiles{tid: th.TID, regs: renderRegs(&th.Regs), fpregs: renderFPRegs(th.Xstate)})
	}
	slices.SortFunc(files, func(a, b threadFiles) int { return a.tid - b.tid })
	return files
}

// newThreadsDir makes threads/, one directory per thread with its regs and
// fpregs.
func newThreadsDir(state *mountState, attr snapAttr, threads []threadFiles) *treeDir {
	dir := newTreeDir(state, attr)
	for _, th := range threads {
		dir.add(strconv.Itoa(th.tid), syscall.S_IFDIR, func() treeNode {
			thread := newTreeDir(state, attr)
			thread.addFile("regs", th.regs)
			thread.addFile("fpregs", th.fpregs)
			return thread
		})
	}
	return dir
}

// addFile adds a generated file of fixed contents.
func (d *treeDir) addFile(name string, data []byte) {
	attr := d.attr
	d.add(name, syscall.S_IFREG, func() treeNode {
		return &dataFile{state: d.state, attr: attr, data: data}
	})
}
