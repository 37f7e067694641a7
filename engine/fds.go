package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// fdinfo holds the fields of /proc/PID/fdinfo/N the engine uses.
type fdinfo struct {
	Pos   int64
	Flags uint32 // octal in the file, O_CLOEXEC included
	MntID int
}

// readFDs lists the open descriptors of process pid, ascending by number,
// with their target, kind, fdinfo fields and the dev, inode and mode of
// the open file. A descriptor closed while the list is read is left out.
//
// Precondition: all threads stopped, or the table may change under the read.
func readFDs(pid int) ([]snapshot.FD, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("list descriptors of pid %d: %w", pid, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("list descriptors of pid %d: %w", pid, err)
	}

	fds := make([]snapshot.FD, 0, len(entries))
	for _, e := range entries {
		num, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := readFD(pid, num)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil, err
		}
		fds = append(fds, fd)
	}
	slices.SortFunc(fds, func(a, b snapshot.FD) int { return a.Num - b.Num })
	return fds, nil
}

// readFD reads one descriptor of pid.
func readFD(pid, num int) (snapshot.FD, error) {
	fd := snapshot.FD{Num: num}
	link := fmt.Sprintf("/proc/%d/fd/%d", pid, num)
	target, err := os.Readlink(link)
	if err != nil {
		return fd, fmt.Errorf("read link of fd %d of pid %d: %w", num, pid, err)
	}
	fd.Target = target

	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, num))
	if err != nil {
		return fd, fmt.Errorf("read fdinfo of fd %d of pid %d: %w", num, pid, err)
	}
	info, err := parseFdinfo(data)
	if err != nil {
		return fd, fmt.Errorf("parse fdinfo of fd %d of pid %d: %w", num, pid, err)
	}
	fd.Pos, fd.Flags, fd.MntID = info.Pos, info.Flags, info.MntID

	// stat follows the magic link to the open file itself, even when it
	// was deleted or is a pipe or socket.
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return fd, fmt.Errorf("stat fd %d of pid %d: %w", num, pid, err)
	}
	fd.Dev, fd.Ino, fd.Mode = st.Dev, st.Ino, st.Mode
	fd.Kind = fdKind(target, st.Mode, st.Rdev)
	return fd, nil
}

// parseFdinfo parses the "key:\tvalue" lines of /proc/PID/fdinfo/N; pos,
// flags and mnt_id are required.
func parseFdinfo(data []byte) (fdinfo, error) {
	var info fdinfo
	var seen int
	for line := range bytes.Lines(data) {
		key, value, ok := strings.Cut(strings.TrimSpace(string(line)), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)

		var err error
		switch key {
		case "pos":
			info.Pos, err = strconv.ParseInt(value, 10, 64)
			seen |= 1
		case "flags":
			var f uint64
			f, err = strconv.ParseUint(value, 8, 32)
			info.Flags = uint32(f)
			seen |= 2
		case "mnt_id":
			info.MntID, err = strconv.Atoi(value)
			seen |= 4
		}
		if err != nil {
			return info, fmt.Errorf("fdinfo %s %q: %w", key, value, unix.EINVAL)
		}
	}
	if seen != 7 {
		return info, fmt.Errorf("fdinfo without pos, flags or mnt_id: %w", unix.EINVAL)
	}
	return info, nil
}

// fdKind classifies a descriptor by its link target and the mode and
// device of the open file.
func fdKind(target string, mode uint32, rdev uint64) string {
	switch {
	case strings.HasPrefix(target, "socket:"):
		return snapshot.KindSocket
	case strings.HasPrefix(target, "pipe:"):
		return snapshot.KindPipe
	case strings.HasPrefix(target, "anon_inode:"):
		return snapshot.KindAnon
	case strings.HasPrefix(target, "/memfd:"):
		return snapshot.KindMemfd
	case strings.HasSuffix(target, " (deleted)"):
		return snapshot.KindDeleted
	case mode&unix.S_IFMT == unix.S_IFDIR:
		return snapshot.KindDir
	case mode&unix.S_IFMT == unix.S_IFCHR && isTTY(unix.Major(rdev)):
		return snapshot.KindTTY
	}
	return snapshot.KindFile
}

// isTTY reports whether a character device major number is a terminal:
// virtual consoles and serial lines (4), /dev/tty and /dev/ptmx (5) and
// pseudo-terminal slaves (136-143), per Documentation/admin-guide/devices.txt.
func isTTY(major uint32) bool {
	return major == 4 || major == 5 || major >= 136 && major <= 143
}
