package engine

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// fdStatusFlags are the open file status flags F_SETFL can change.
const fdStatusFlags = unix.O_APPEND | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK

// fdStep is the change restore makes to one descriptor number.
type fdStep struct {
	num   int
	saved *snapshot.FD // nil for a descriptor opened since the snapshot
	cur   *snapshot.FD // nil when the number is free now

	reopen   bool // open saved.Target again and dup3 it to num
	seek     bool // lseek to saved.Pos
	setFlags bool // F_SETFL with the saved status flags
	setFD    bool // F_SETFD with the saved close-on-exec flag
	close    bool // close num: it was opened since the snapshot

	// warning is reported when the seek succeeds: the saved offset lies
	// past the end of the file.
	warning string
}

// fdProbe stats files for planFDs: statPath a path resolved in the
// process's root directory, statFD a descriptor the process has open now.
type fdProbe struct {
	statPath func(path string) (fileIdentity, error)
	statFD   func(num int) (fileIdentity, error)
}

// fileIdentity is the inode, size and mode of a file from stat.
type fileIdentity struct {
	dev, ino uint64
	size     int64
	mode     uint32
}

// planFDs diffs the current descriptor table against the saved one. A
// descriptor that still refers to the same object keeps it. A file, a
// directory or a terminal closed or replaced since is reopened by path,
// which probe.statPath must show to be the same inode. Anything else
// closed or replaced since is a *RejectError with EOPNOTSUPP naming the
// descriptor. Warnings name saved offsets past the end of their file,
// except for a step that seeks, which holds its warning until the seek
// succeeds.
func planFDs(saved, cur []snapshot.FD, probe fdProbe) ([]fdStep, []string, error) {
	var steps []fdStep
	var warnings []string
	for i := range saved {
		s := &saved[i]
		step := fdStep{num: s.Num, saved: s, cur: findFD(cur, s.Num)}

		var id fileIdentity
		var err error
		if step.cur != nil && sameFileObject(step.cur, s) {
			step.seek = seekable(s) && step.cur.Pos != s.Pos
			step.setFlags = (step.cur.Flags^s.Flags)&fdStatusFlags != 0
			step.setFD = (step.cur.Flags^s.Flags)&unix.O_CLOEXEC != 0
			id, err = probe.statFD(s.Num)
		} else {
			id, err = checkReopen(s, probe.statPath)
			if err != nil {
				return nil, nil, err
			}
			step.reopen, step.seek = true, seekable(s)
		}
		w := offsetWarning(s, id, err)
		switch {
		case step.seek:
			step.warning = w
		case w != "":
			warnings = append(warnings, w)
		}
		if step.reopen || step.seek || step.setFlags || step.setFD {
			steps = append(steps, step)
		}
	}

	for i := range cur {
		if findFD(saved, cur[i].Num) == nil {
			steps = append(steps, fdStep{num: cur[i].Num, cur: &cur[i], close: true})
		}
	}
	return steps, warnings, nil
}

func findFD(fds []snapshot.FD, num int) *snapshot.FD {
	i := slices.IndexFunc(fds, func(fd snapshot.FD) bool { return fd.Num == num })
	if i < 0 {
		return nil
	}
	return &fds[i]
}

// sameFileObject reports whether a descriptor still refers to the object it
// referred to at the snapshot.
//
// NOTE: all anonymous-inode descriptors of one kind (eventfd, epoll, ...)
// share an inode, so one closed and replaced by another of its kind passes
// as the same object.
func sameFileObject(cur, saved *snapshot.FD) bool {
	if fileKind(cur.Kind) != fileKind(saved.Kind) || cur.Dev != saved.Dev || cur.Ino != saved.Ino {
		return false
	}
	return cur.Kind != snapshot.KindAnon || cur.Target == saved.Target
}

// fileKind folds a deleted file into a plain file, because unlinking a file
// that stays open (a rotated log, say) leaves the descriptor on the same
// object.
func fileKind(kind string) string {
	if kind == snapshot.KindDeleted {
		return snapshot.KindFile
	}
	return kind
}

// reopenable reports whether a descriptor's object can be found again by
// its path and opened without waiting: a file, directory or device, but
// not a FIFO (whose open blocks until the other end opens) or a socket.
func reopenable(fd *snapshot.FD) bool {
	switch fd.Kind {
	case snapshot.KindFile, snapshot.KindDir, snapshot.KindTTY:
	default:
		return false
	}
	switch fd.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFCHR, unix.S_IFBLK:
		return len(fd.Target) > 0 && fd.Target[0] == '/'
	}
	return false
}

// seekable reports whether restore sets the descriptor's offset: regular
// files, directories and block devices have one that matters. A
// description opened non-seekable has none even so, which restore learns
// only when lseek fails with ESPIPE.
func seekable(fd *snapshot.FD) bool {
	switch fd.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFBLK:
		return true
	}
	return false
}

// checkReopen checks that the descriptor can be reopened by its path and
// that the path still names the inode it had.
func checkReopen(fd *snapshot.FD, stat func(string) (fileIdentity, error)) (fileIdentity, error) {
	if !reopenable(fd) {
		return fileIdentity{}, reject(unix.EOPNOTSUPP, fmt.Sprintf("fd %d (%s %s) was closed or replaced since the snapshot and cannot be reopened", fd.Num, fd.Kind, fd.Target))
	}
	id, err := stat(fd.Target)
	if err != nil {
		return id, reject(unix.EOPNOTSUPP, fmt.Sprintf("fd %d was closed since the snapshot and its file %s cannot be reopened: %v", fd.Num, fd.Target, err))
	}
	// Inode numbers are reused, so a FIFO made where the file was may
	// have its number, and only the type differs.
	if id.dev != fd.Dev || id.ino != fd.Ino || id.mode&unix.S_IFMT != fd.Mode&unix.S_IFMT {
		return id, reject(unix.EOPNOTSUPP, fmt.Sprintf("fd %d was closed since the snapshot and %s is now another file (%s inode %d, was %s inode %d)",
			fd.Num, fd.Target, fileType(id.mode), id.ino, fileType(fd.Mode), fd.Ino))
	}
	return id, nil
}

// fileType names the type of file of an st_mode.
func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return fmt.Sprintf("file of type %#o", mode&unix.S_IFMT)
}

// offsetWarning returns a warning when the saved offset of a regular file
// lies past the end of the file as id (from a stat that returned statErr)
// shows it now, or "".
func offsetWarning(fd *snapshot.FD, id fileIdentity, statErr error) string {
	if fd.Mode&unix.S_IFMT != unix.S_IFREG || statErr != nil || fd.Pos <= id.size {
		return ""
	}
	return fmt.Sprintf("fd %d: saved offset %d is past the end of %s (%d bytes now)", fd.Num, fd.Pos, fd.Target, id.size)
}

// reopenFlags returns the open(2) flags that reopen a saved descriptor:
// its access mode and status flags, never creating or truncating, and
// close-on-exec on the temporary descriptor.
func reopenFlags(fd *snapshot.FD) int {
	flags := int(fd.Flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC)
	if fd.Kind == snapshot.KindTTY {
		flags |= unix.O_NOCTTY
	}
	return flags | unix.O_CLOEXEC
}
