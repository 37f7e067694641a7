package engine

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// checkThreads rejects a thread set that differs from the snapshot's,
// naming the threads created and ended since.
func checkThreads(cur []int, img *snapshot.Image) error {
	var saved []int
	for _, t := range img.Threads {
		saved = append(saved, t.TID)
	}
	added := subtractInts(cur, saved)
	gone := subtractInts(saved, cur)
	if len(added) == 0 && len(gone) == 0 {
		return nil
	}

	var parts []string
	if len(added) > 0 {
		parts = append(parts, fmt.Sprintf("threads created since: %v", added))
	}
	if len(gone) > 0 {
		parts = append(parts, fmt.Sprintf("threads ended since: %v", gone))
	}
	return reject(unix.EOPNOTSUPP, "thread set differs from the snapshot's ("+strings.Join(parts, "; ")+")")
}

// subtractInts returns the members of a missing from b, in a's order.
func subtractInts(a, b []int) []int {
	var out []int
	for _, v := range a {
		if !slices.Contains(b, v) {
			out = append(out, v)
		}
	}
	return out
}

// checkXCR0 rejects a snapshot whose xstate layout (the feature mask XCR0)
// differs from the one the kernel uses for the process now.
func checkXCR0(img *snapshot.Image, curXstate []byte) error {
	want := img.XCR0
	if want == 0 && len(img.Threads) > 0 {
		want = xstateXCR0(img.Threads[0].Xstate)
	}
	if got := xstateXCR0(curXstate); got != want {
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("CPU feature mask XCR0 is %#x, the snapshot's is %#x", got, want))
	}
	return nil
}

// checkShadowStack rejects a process with a shadow stack, which restore
// cannot write back.
func checkShadowStack(pid int, regions []snapshot.Region) error {
	for _, r := range regions {
		if slices.Contains(r.VmFlags, "ss") {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %x-%x is a shadow stack, which restore does not support", r.Start, r.End))
		}
	}

	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for line := range bytes.Lines(data) {
		if rest, ok := bytes.CutPrefix(line, []byte("x86_Thread_features:")); ok && bytes.Contains(rest, []byte("shstk")) {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d has a shadow stack enabled, which restore does not support", pid))
		}
	}
	return nil
}

// checkCreates rejects re-creating a file mapping whose path no longer
// names the inode the snapshot mapped. pathStat stats a path resolved in
// the process's root directory.
func checkCreates(plan *layoutPlan, pathStat func(string) (fileIdentity, error)) error {
	for _, op := range plan.creates {
		e := op.entry
		if e.inode == 0 {
			continue
		}
		id, err := pathStat(e.path)
		if err != nil {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %s was unmapped since the snapshot and its file cannot be opened: %v", op, err))
		}
		if id.dev != e.dev || id.ino != e.inode {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %s was unmapped since the snapshot and %s is now another file (inode %d, was %d)", op, e.path, id.ino, e.inode))
		}
	}
	return nil
}

// statIdentity stats path, following symbolic links.
func statIdentity(path string) (fileIdentity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileIdentity{}, err
	}
	return fileIdentity{dev: st.Dev, ino: st.Ino, size: st.Size, mode: st.Mode}, nil
}

// processProbe stats files of process pid: paths under its root
// directory, descriptors through /proc/PID/fd.
func processProbe(pid int) fdProbe {
	return fdProbe{
		statPath: func(path string) (fileIdentity, error) {
			return statIdentity(fmt.Sprintf("/proc/%d/root%s", pid, path))
		},
		statFD: func(num int) (fileIdentity, error) {
			return statIdentity(fmt.Sprintf("/proc/%d/fd/%d", pid, num))
		},
	}
}
