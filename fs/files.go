package fs

import (
	"context"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"log/slog"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/snapshot"
)

// dataFile is a generated file of a snapshot (info, regs, fpregs, maps,
// fds), rendered in advance so that it reports its exact size and the
// kernel may cache it like any file.
type dataFile struct {
	gofs.Inode
	state *mountState
	attr  snapAttr
	data  []byte
}

var (
	_ gofs.NodeGetattrer = (*dataFile)(nil)
	_ gofs.NodeOpener    = (*dataFile)(nil)
	_ gofs.NodeReader    = (*dataFile)(nil)
)

func (f *dataFile) fillAttr(out *fuse.Attr) {
	f.attr.fill(out, syscall.S_IFREG|0o400, uint64(len(f.data)))
}

// Getattr reports the file; the kernel may cache it for an hour.
func (f *dataFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fillAttr(&out.Attr)
	out.SetTimeout(snapshotTimeout)
	return 0
}

// Open allows reading by callers that may use the snapshot.
func (f *dataFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_KEEP_CACHE, openSnapshotFile(ctx, f.state, f.attr, flags)
}

// Read returns the rendered bytes at off.
func (f *dataFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.state.debug(ctx, "read", "bytes", len(dest), "offset", off)
	if off >= int64(len(f.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(f.data)))
	return fuse.ReadResultData(f.data[off:end]), 0
}

// memFile is memory/<start>-<end>: the saved bytes of one region, its size
// the region's length, read from the store at any offset. Pages that were
// never touched read as zeros. The contents never change, so the kernel
// keeps them in its page cache across opens (FOPEN_KEEP_CACHE), and the
// file can be mapped.
type memFile struct {
	gofs.Inode
	state *mountState
	attr  snapAttr
	snap  *snapshot.Snapshot
	index int // into snap.Image.Regions
	size  uint64
}

var (
	_ gofs.NodeGetattrer = (*memFile)(nil)
	_ gofs.NodeOpener    = (*memFile)(nil)
	_ gofs.NodeReader    = (*memFile)(nil)
	_ gofs.NodeReleaser  = (*memFile)(nil)
)

func (f *memFile) fillAttr(out *fuse.Attr) {
	f.attr.fill(out, syscall.S_IFREG|0o400, f.size)
}

// Getattr reports the file; the kernel may cache it for an hour.
func (f *memFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fillAttr(&out.Attr)
	out.SetTimeout(snapshotTimeout)
	return 0
}

// Open allows reading by callers that may use the snapshot. Each open gets
// its own handle, which prefetches while its reads are sequential.
func (f *memFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if errno := openSnapshotFile(ctx, f.state, f.attr, flags); errno != 0 {
		return nil, 0, errno
	}
	return newMemHandle(f), fuse.FOPEN_KEEP_CACHE, 0
}

// Release stops the prefetches of the handle, waiting for those running.
func (f *memFile) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	if h, ok := fh.(*memHandle); ok {
		h.close()
	}
	return 0
}

// Read reads saved memory at off. A corrupt frame in the store fails the
// read with EIO; it never returns wrong bytes.
func (f *memFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.state.debug(ctx, "read", "snapshot", f.snap.Info.Name, "region", f.index, "bytes", len(dest), "offset", off)
	if off < 0 || uint64(off) >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(uint64(len(dest)), f.size-uint64(off))

	if h, ok := fh.(*memHandle); ok {
		h.observe(uint64(off), n)
		h.await(ctx, uint64(off), n)
	}
	if err := f.snap.ReadRegion(f.index, dest[:n], uint64(off)); err != nil {
		errno := errnos.Of(err)
		f.state.log.Error("read snapshot memory failed", "pid", f.snap.Info.Process.PID, "snapshot", f.snap.Info.Name,
			"region", regionName(&f.snap.Image.Regions[f.index]), "offset", off, "errno", errnos.Name(errno), "err", err)
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// openSnapshotFile checks an open of a snapshot file: read-only, by a
// caller that may use the snapshot.
func openSnapshotFile(ctx context.Context, state *mountState, attr snapAttr, flags uint32) syscall.Errno {
	state.debug(ctx, "open", "uid", attr.uid, "flags", flags)
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return syscall.EACCES
	}
	return state.checkSnapshotReader(ctx, attr.uid)
}

// setTimes sets every timestamp of out to t.
func setTimes(out *fuse.Attr, t time.Time) {
	out.SetTimes(&t, &t, &t)
}

// debug logs one FUSE request at Debug level with its caller.
func (m *mountState) debug(ctx context.Context, op string, args ...any) {
	if !m.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	if caller, ok := fuse.FromContext(ctx); ok {
		args = append(args, "caller_pid", caller.Pid, "caller_uid", caller.Uid)
	}
	m.log.Debug("request", append([]any{"op", op}, args...)...)
}
