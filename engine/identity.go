package engine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// CheckUnchanged rejects rolling process pid back to img when state that
// only the kernel can change, and that a restore therefore cannot put
// back, differs from the capture. It returns a *RejectError:
//
//   - ESRCH when pid now belongs to another process (start time or boot
//     differ from img.Process);
//   - EOPNOTSUPP when the process called execve since the capture. Then
//     its executable differs, or the random bytes that the kernel puts at
//     AT_RANDOM at every execve do. Older images without those bytes are
//     compared by the start of the heap, which execve moves unless address
//     randomization is off.
//   - EOPNOTSUPP when its real, effective or saved uid or gid changed, for
//     example a root process that dropped to another user: rolling its
//     memory back would make it believe it still had its old identity.
//
// Restore runs the check while the process is frozen. A caller may also
// run it before freezing, to reject early, but its result can be outdated
// by an execve or setuid before the freeze.
func CheckUnchanged(pid int, img *snapshot.Image) error {
	id, err := Identify(pid)
	if err != nil {
		return err
	}
	if id != img.Process {
		return reject(unix.ESRCH, fmt.Sprintf("pid %d is not the process of the snapshot: it started at tick %d, the captured one at tick %d",
			pid, id.StartTime, img.Process.StartTime))
	}
	if err := checkSameProgram(pid, img); err != nil {
		return err
	}

	st, err := ReadStatus(pid)
	if err != nil {
		return err
	}
	if st.UID != img.Creds.UID || st.GID != img.Creds.GID {
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d changed credentials since the snapshot (uid %v gid %v, was uid %v gid %v), which a restore cannot put back",
			pid, st.UID, st.GID, img.Creds.UID, img.Creds.GID))
	}
	return nil
}

// checkSameProgram rejects with EOPNOTSUPP a process that called execve
// since img was captured.
func checkSameProgram(pid int, img *snapshot.Image) error {
	var exe unix.Stat_t
	path := fmt.Sprintf("/proc/%d/exe", pid)
	if err := unix.Stat(path, &exe); err != nil {
		return fmt.Errorf("stat executable of pid %d: %w", pid, errnoOrESRCH(err))
	}
	if exe.Dev != img.ExeDev || exe.Ino != img.ExeIno {
		now, err := os.Readlink(path)
		if err != nil {
			now = "another program"
		}
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d ran another program since the snapshot: %s (inode %d), was %s (inode %d)",
			pid, now, exe.Ino, img.Exe, img.ExeIno))
	}

	if img.ExecID != "" {
		execID, err := readExecID(pid)
		if err != nil {
			return err
		}
		if execID != img.ExecID {
			return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d called execve since the snapshot (its AT_RANDOM bytes differ)", pid))
		}
		return nil
	}

	// An image without the AT_RANDOM bytes still has the heap start, which
	// execve picks anew at random unless address randomization is off.
	ps, err := readProcStat(pid)
	if err != nil {
		return err
	}
	if ps.StartBrk != img.StartBrk {
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("pid %d called execve since the snapshot (heap start %#x, was %#x)",
			pid, ps.StartBrk, img.StartBrk))
	}
	return nil
}

// errnoOrESRCH turns the ENOENT of a /proc file of a process that exited
// into ESRCH.
func errnoOrESRCH(err error) error {
	if os.IsNotExist(err) {
		return unix.ESRCH
	}
	return err
}

// pfExiting is PF_EXITING from include/linux/sched.h, set in the flags
// field of /proc/PID/stat once a process has begun to exit.
const pfExiting = 0x4

// Exiting reports whether process pid is gone, a zombie, or has begun to
// exit. An exiting process loses its memory and /proc/PID/exe before it
// shows as a zombie, so operations on it fail with ENOENT or EIO from
// /proc files while its state still reads R or D.
func Exiting(pid int) bool {
	st, err := readProcStat(pid)
	return err != nil || st.State == 'Z' || st.State == 'X' || st.Flags&pfExiting != 0
}
