package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// unreaped holds the copy-on-write clones that were killed but not yet
// reaped inside their target (a zombie child of it), by target pid. Any op
// that freezes the target reaps them before it thaws.
var unreaped = struct {
	// mu protects clones.
	mu     sync.Mutex
	clones map[int][]int
}{clones: map[int][]int{}}

// addUnreaped records the zombie clone of target pid.
func addUnreaped(pid, clone int) {
	unreaped.mu.Lock()
	defer unreaped.mu.Unlock()
	unreaped.clones[pid] = append(unreaped.clones[pid], clone)
}

// takeUnreaped removes and returns the zombie clones of target pid.
func takeUnreaped(pid int) []int {
	unreaped.mu.Lock()
	defer unreaped.mu.Unlock()
	clones := unreaped.clones[pid]
	delete(unreaped.clones, pid)
	return clones
}

// reapUnreaped reaps the zombie clones of the target with an injected
// wait4(clone, NULL, __WALL|WNOHANG, NULL) each: those this daemon killed,
// and those a daemon that died left behind (see orphanedClones). A clone
// the target no longer has (ECHILD: the target reaped it) is forgotten;
// one the call fails for is kept for the next op.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) reapUnreaped() {
	clones := takeUnreaped(op.pid)
	for _, orphan := range orphanedClones(op.pid) {
		if !slices.Contains(clones, orphan) {
			clones = append(clones, orphan)
		}
	}
	if len(clones) == 0 || len(op.threads) == 0 || !op.threads[0].stopped || op.threads[0].exited {
		for _, clone := range clones {
			addUnreaped(op.pid, clone)
		}
		return
	}
	for _, clone := range clones {
		_, err := op.syscall(op.threads[0], unix.SYS_WAIT4, uintptr(clone), 0, unix.WALL|unix.WNOHANG, 0)
		if err != nil && !errors.Is(err, unix.ECHILD) {
			op.log.Warn("reaping the copy-on-write clone failed, the next operation retries", "clone", clone, "err", err)
			addUnreaped(op.pid, clone)
		}
	}
}

// orphanedClones returns the zombie children of the main thread of process
// pid that look like copy-on-write clones left by a daemon that died before
// reaping them: zombies with exit signal 0 and the comm of their parent,
// killed by SIGKILL (PTRACE_O_EXITKILL) or exited with status 0 (a clone
// released before the daemon traced it runs its injection frame's
// exit_group(0)).
//
// NOTE: a process that clones children with exit signal 0 itself and
// reaps them later loses such a child that ended this way and has its
// comm. No other way to tell these zombies apart survives the daemon.
func orphanedClones(pid int) []int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	comm, _, _, ok := zombieStat(pid)
	if !ok {
		return nil
	}

	var orphans []int
	for _, field := range strings.Fields(string(data)) {
		child, err := strconv.Atoi(field)
		if err != nil {
			continue
		}
		childComm, zombie, killedClone, ok := zombieStat(child)
		if ok && zombie && killedClone && childComm == comm {
			orphans = append(orphans, child)
		}
	}
	return orphans
}

// zombieStat reads from /proc/PID/stat the command name, whether the
// process is a zombie, and whether its exit signal (field 38) is 0 and it
// was killed by SIGKILL or exited with 0 (exit_code, field 52). ok is false when the file
// cannot be read or parsed.
func zombieStat(pid int) (comm string, zombie, killedClone, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false, false, false
	}
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return "", false, false, false
	}
	// rest[0] is field 3 (state).
	rest := strings.Fields(string(data[end+1:]))
	if len(rest) < 52-2 {
		return "", false, false, false
	}
	exitCode, err := strconv.Atoi(rest[52-3])
	if err != nil {
		return "", false, false, false
	}
	killedClone = rest[38-3] == "0" && (exitCode&0x7f == int(unix.SIGKILL) || exitCode == 0)
	return string(data[open+1 : end]), rest[0] == "Z", killedClone, true
}
