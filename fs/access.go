package fs

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
)

// capSysPtrace is the bit of CAP_SYS_PTRACE in a capability mask.
const capSysPtrace = 1 << unix.CAP_SYS_PTRACE

// taskCreds are the credentials of one task that the kernel's ptrace access
// check reads.
type taskCreds struct {
	TGID   int
	UID    [3]uint32 // real, effective, saved
	GID    [3]uint32
	CapPrm uint64
	CapEff uint64
}

// ptraceTarget is the target of an access check: its credentials and the
// facts about it that the check needs beyond them.
type ptraceTarget struct {
	taskCreds

	// Dumpable is false when the kernel marked the process non-dumpable
	// (after a set-user-ID exec or prctl(PR_SET_DUMPABLE, 0)).
	Dumpable bool

	// Descendant is true when the target is the caller's process or one of
	// its descendants, which Yama's ptrace_scope 1 requires.
	Descendant bool
}

// mayPtrace applies the kernel's PTRACE_MODE_ATTACH_REALCREDS check (as in
// Linux 6.x __ptrace_may_access, the commoncap hook and Yama) to a caller and
// a target. It returns nil when the caller could ptrace the target itself,
// and otherwise an error wrapping EPERM that gives the reason. yamaScope is
// /proc/sys/kernel/yama/ptrace_scope, 0 where Yama is absent.
func mayPtrace(caller taskCreds, target ptraceTarget, yamaScope int) error {
	if caller.TGID == target.TGID {
		return nil
	}
	privileged := caller.CapEff&capSysPtrace != 0

	if !privileged {
		if !allEqual(caller.UID[0], target.UID) || !allEqual(caller.GID[0], target.GID) {
			return fmt.Errorf("uid %d gid %d may not ptrace pid %d: its ids differ and the caller lacks CAP_SYS_PTRACE: %w",
				caller.UID[0], caller.GID[0], target.TGID, unix.EPERM)
		}
		if !target.Dumpable {
			return fmt.Errorf("pid %d is not dumpable and the caller lacks CAP_SYS_PTRACE: %w", target.TGID, unix.EPERM)
		}
		if target.CapPrm&^caller.CapPrm != 0 {
			return fmt.Errorf("pid %d has permitted capabilities %#x the caller lacks: %w",
				target.TGID, target.CapPrm&^caller.CapPrm, unix.EPERM)
		}
	}

	switch {
	case yamaScope >= 3:
		return fmt.Errorf("yama ptrace_scope %d forbids every attach: %w", yamaScope, unix.EPERM)
	case yamaScope == 2 && !privileged:
		return fmt.Errorf("yama ptrace_scope 2 requires CAP_SYS_PTRACE: %w", unix.EPERM)
	case yamaScope == 1 && !privileged && !target.Descendant:
		return fmt.Errorf("yama ptrace_scope 1: pid %d is not a descendant of pid %d: %w", target.TGID, caller.TGID, unix.EPERM)
	}
	return nil
}

func allEqual(id uint32, ids [3]uint32) bool {
	return ids[0] == id && ids[1] == id && ids[2] == id
}

// readCallerCreds reads the credentials of the thread that sent a FUSE
// request. The kernel reports the thread id, which is 0 when the caller
// lives in a pid namespace the daemon cannot see; such callers are rejected.
func readCallerCreds(c *fuse.Caller) (taskCreds, error) {
	if c == nil {
		return taskCreds{}, fmt.Errorf("request without a caller: %w", unix.EACCES)
	}
	if c.Pid == 0 {
		return taskCreds{}, fmt.Errorf("caller uid %d is outside the daemon's pid namespace: %w", c.Uid, unix.EACCES)
	}

	st, err := engine.ReadStatus(int(c.Pid))
	if err != nil {
		return taskCreds{}, fmt.Errorf("read credentials of calling thread %d: %w", c.Pid, err)
	}
	return credsOf(st), nil
}

func credsOf(st *engine.Status) taskCreds {
	return taskCreds{TGID: st.Tgid, UID: st.UID, GID: st.GID, CapPrm: st.CapPrm, CapEff: st.CapEff}
}

// readTarget gathers what mayPtrace needs about the live process pid, whose
// status st the caller has just read.
func readTarget(pid int, st *engine.Status, callerTGID, yamaScope int) (ptraceTarget, error) {
	dumpable, err := isDumpable(pid, st)
	if err != nil {
		return ptraceTarget{}, err
	}

	target := ptraceTarget{taskCreds: credsOf(st), Dumpable: dumpable}
	if yamaScope == 1 {
		target.Descendant = isDescendant(pid, callerTGID)
	}
	return target, nil
}

// isDumpable reports whether the process may be traced by its own user. The
// dumpable flag of another process is not in /proc/PID/status, but the
// kernel shows it indirectly: the files of /proc/PID belong to the
// process's effective uid when it is dumpable and to root otherwise. The
// directory /proc/PID itself keeps the effective uid either way (Linux
// task_dump_owner exempts world-readable directories), so a file is read.
//
// NOTE: for a process whose effective uid is root both cases look the same,
// so it counts as dumpable; only callers that are root by uid can pass the
// uid check against it anyway.
func isDumpable(pid int, st *engine.Status) (bool, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("pid %d exited: %w", pid, unix.ESRCH)
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	owner := fi.Sys().(*syscall.Stat_t).Uid
	return owner == st.UID[1] || st.UID[1] == 0, nil
}

// isDescendant walks the parent chain up from pid and reports whether it
// meets ancestor.
func isDescendant(pid, ancestor int) bool {
	for range 4096 {
		if pid == ancestor {
			return true
		}
		if pid <= 1 {
			return false
		}
		st, err := engine.ReadStatus(pid)
		if err != nil {
			return false
		}
		pid = st.PPid
	}
	return false
}

// readYamaScope returns the Yama ptrace_scope, 0 when Yama is not built in.
func readYamaScope() (int, error) {
	data, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read yama ptrace_scope: %w", err)
	}

	scope, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parse yama ptrace_scope %q: %w", data, unix.EINVAL)
	}
	return scope, nil
}

// mayUseSnapshot reports whether the caller may read, restore or remove a
// snapshot whose process ran as owner: the same real uid, or CAP_SYS_PTRACE.
func mayUseSnapshot(caller taskCreds, owner uint32) error {
	if caller.CapEff&capSysPtrace != 0 || caller.UID[0] == owner {
		return nil
	}
	return fmt.Errorf("uid %d may not use a snapshot of uid %d: %w", caller.UID[0], owner, unix.EPERM)
}
