package engine

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// controlFile is a FUSE file opened non-seekable, like a control file of
// the ckptfs mount. It accepts every write and counts the bytes.
type controlFile struct {
	gofs.Inode
	written atomic.Int64
}

var (
	_ gofs.NodeOpener    = (*controlFile)(nil)
	_ gofs.NodeWriter    = (*controlFile)(nil)
	_ gofs.NodeGetattrer = (*controlFile)(nil)
	_ gofs.NodeSetattrer = (*controlFile)(nil)
)

func (f *controlFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_NONSEEKABLE | fuse.FOPEN_DIRECT_IO, 0
}

func (f *controlFile) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.written.Add(int64(len(data)))
	return uint32(len(data)), 0
}

func (f *controlFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	return 0
}

func (f *controlFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return f.Getattr(ctx, fh, out)
}

// mountControlFile mounts a FUSE file system holding one controlFile and
// returns the file's path and node. The mount ends with the test.
func mountControlFile(t *testing.T) (string, *controlFile) {
	t.Helper()
	dir := t.TempDir()
	file := &controlFile{}
	root := &gofs.Inode{}
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{DirectMount: true, DirectMountStrict: true, FsName: "ckptfs-test"},
		OnAdd: func(ctx context.Context) {
			root.AddChild("ctl", root.NewPersistentInode(ctx, file, gofs.StableAttr{Mode: syscall.S_IFREG}), false)
		},
	}
	srv, err := gofs.Mount(dir, root, opts)
	if err != nil {
		t.Fatalf("mount FUSE file system on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "ctl"), file
}

// TestRestoreNonseekableFD restores a process whose descriptor on a FUSE
// file opened with FOPEN_NONSEEKABLE moved its offset since the
// snapshot: lseek fails with ESPIPE, and there is no offset to restore.
func TestRestoreNonseekableFD(t *testing.T) {
	path, file := mountControlFile(t)
	p := startCommanded(t, "rst_nonseek", path)
	fd := p.Expect("ready ")
	num, err := strconv.Atoi(fd)
	if err != nil {
		t.Fatalf("ready line %q: %v", fd, err)
	}
	img := captureImage(t, p.PID)
	saved := findFD(img.FDs, num)
	if saved == nil || saved.Pos != 2 {
		t.Fatalf("captured fd %s: %+v, want offset 2", fd, saved)
	}

	p.send(t, "write", "wrote 7")
	report := restoreImage(t, p.Proc, img)
	for _, w := range report.Warnings {
		if strings.Contains(w, "fd "+fd) {
			t.Errorf("restore warns %q about the non-seekable fd %s", w, fd)
		}
	}

	if got := p.send(t, "write", "wrote "); got != "7" {
		t.Errorf("write after restore wrote %s bytes, want 7", got)
	}
	if got := file.written.Load(); got != 16 {
		t.Errorf("file got %d bytes, want 16 from three writes", got)
	}
	checkRunning(t, p.Proc)
}
