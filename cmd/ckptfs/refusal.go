package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// refusalHint returns the advice printed under a restore of process pid to
// img that the engine refused with EOPNOTSUPP. parts is empty for a full
// restore. A changed thread set and an execve refuse every restore, partial
// ones too, so a partial restore is suggested only for the refusals that
// name one part.
//
// TODO: the engine's refusals carry no kind beyond the errno, so apart from
// the thread set and a new executable file this hint cannot tell an execve
// of the same program from a descriptor that cannot be reopened, and
// leaves that to the message above it.
func refusalHint(pid int, img *snapshot.Image, parts []string) string {
	capture := fmt.Sprintf("capture process %d again ('ckptfs capture %d') and restore that snapshot", pid, pid)
	if exe, changed := programChanged(pid, img); changed {
		return fmt.Sprintf("process %d runs %s since an execve, and no snapshot taken before it can be restored "+
			"onto it; capture it again to have a snapshot of the new program", pid, exe)
	}
	if threadSetChanged(pid, img) {
		return fmt.Sprintf("the thread set of process %d changed since the snapshot, and a restore cannot "+
			"create or end threads; %s", pid, capture)
	}
	if len(parts) > 0 {
		return capture
	}
	return capture + "; or, when the message names a descriptor, a mapping or CPU state rather than " +
		"an execve, restore only the other parts (see 'ckptfs restore --help')"
}

// threadSetChanged reports whether the threads of process pid differ from
// those of img. It returns false when /proc/PID/task cannot be read.
func threadSetChanged(pid int, img *snapshot.Image) bool {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}

	var now []int
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			now = append(now, tid)
		}
	}
	var saved []int
	for _, th := range img.Threads {
		saved = append(saved, th.TID)
	}
	slices.Sort(now)
	slices.Sort(saved)
	return !slices.Equal(now, saved)
}

// programChanged reports whether process pid runs another executable file
// than at the capture of img, and returns its path.
func programChanged(pid int, img *snapshot.Image) (string, bool) {
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	var st unix.Stat_t
	if err := unix.Stat(exe, &st); err != nil {
		return "", false
	}
	path, err := os.Readlink(exe)
	if err != nil {
		path = "another program"
	}
	return path, st.Dev != img.ExeDev || st.Ino != img.ExeIno
}
