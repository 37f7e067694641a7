package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// pfKthread is PF_KTHREAD from include/linux/sched.h, set in the flags
// field of /proc/PID/stat for kernel threads.
const pfKthread = 0x00200000

// Status is the parsed /proc/PID/status of a process.
type Status struct {
	Name      string
	State     byte
	Tgid      int
	PPid      int
	TracerPid int
	UID, GID  [3]uint32 // real, effective, saved
	CapPrm    uint64
	CapEff    uint64
	Threads   int
	Umask     uint32
	Kthread   bool
	SigIgn    uint64 // signals ignored, bit n-1 for signal n
	SigCgt    uint64 // signals with a handler, bit n-1 for signal n
	SigPnd    uint64 // signals pending for the thread read
	ShdPnd    uint64 // signals pending for the process
	SigBlk    uint64 // signals the thread read blocks
}

// ReadStatus reads /proc/PID/status. A process that does not exist gives an
// error wrapping ESRCH.
func ReadStatus(pid int) (*Status, error) {
	return readStatusFile(fmt.Sprintf("/proc/%d/status", pid))
}

func readStatusFile(path string) (*Status, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("read %s: %w", path, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	st, err := parseStatus(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return st, nil
}

// parseStatus parses the "Key:\tvalue" lines of /proc/PID/status. Unknown
// keys are ignored; a malformed value of a known key is an error wrapping
// EINVAL.
func parseStatus(data []byte) (*Status, error) {
	st := &Status{}
	for line := range bytes.Lines(data) {
		key, value, ok := strings.Cut(strings.TrimRight(string(line), "\n"), ":")
		if !ok {
			continue
		}
		if err := st.set(key, strings.TrimSpace(value)); err != nil {
			return nil, fmt.Errorf("status field %s %q: %w", key, value, unix.EINVAL)
		}
	}
	return st, nil
}

// set stores one status field.
func (st *Status) set(key, value string) error {
	var err error
	switch key {
	case "Name":
		st.Name = value
	case "State":
		if value == "" {
			return unix.EINVAL
		}
		st.State = value[0]
	case "Tgid":
		st.Tgid, err = strconv.Atoi(value)
	case "PPid":
		st.PPid, err = strconv.Atoi(value)
	case "TracerPid":
		st.TracerPid, err = strconv.Atoi(value)
	case "Uid":
		st.UID, err = parseIDs(value)
	case "Gid":
		st.GID, err = parseIDs(value)
	case "CapPrm":
		st.CapPrm, err = strconv.ParseUint(value, 16, 64)
	case "CapEff":
		st.CapEff, err = strconv.ParseUint(value, 16, 64)
	case "Threads":
		st.Threads, err = strconv.Atoi(value)
	case "Umask":
		var u uint64
		u, err = strconv.ParseUint(value, 8, 32)
		st.Umask = uint32(u)
	case "Kthread":
		st.Kthread = value == "1"
	case "SigIgn":
		st.SigIgn, err = strconv.ParseUint(value, 16, 64)
	case "SigCgt":
		st.SigCgt, err = strconv.ParseUint(value, 16, 64)
	case "SigPnd":
		st.SigPnd, err = strconv.ParseUint(value, 16, 64)
	case "ShdPnd":
		st.ShdPnd, err = strconv.ParseUint(value, 16, 64)
	case "SigBlk":
		st.SigBlk, err = strconv.ParseUint(value, 16, 64)
	}
	return err
}

// parseIDs parses the first three of the tab-separated ids of a Uid or Gid
// line: real, effective, saved.
func parseIDs(value string) ([3]uint32, error) {
	var ids [3]uint32
	fields := strings.Fields(value)
	if len(fields) < 3 {
		return ids, unix.EINVAL
	}
	for i := range ids {
		v, err := strconv.ParseUint(fields[i], 10, 32)
		if err != nil {
			return ids, err
		}
		ids[i] = uint32(v)
	}
	return ids, nil
}

// procStat holds the fields of /proc/PID/stat the engine uses.
type procStat struct {
	PID       int
	Comm      string
	State     byte
	PPid      int
	Flags     uint64
	Threads   int
	StartTime uint64 // clock ticks after boot
	StartBrk  uint64
}

func readProcStat(pid int) (*procStat, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("read %s: %w", path, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	st, err := parseStat(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return st, nil
}

// parseStat parses /proc/PID/stat. The command name may contain spaces and
// parentheses, so the fields are split after the last ')'. Field numbers
// in comments follow proc(5), counting pid as 1.
func parseStat(data []byte) (*procStat, error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 1 || end < open {
		return nil, fmt.Errorf("no command name in parentheses: %w", unix.EINVAL)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data[:open])))
	if err != nil {
		return nil, fmt.Errorf("pid field: %w", unix.EINVAL)
	}

	// rest[0] is field 3 (state).
	rest := strings.Fields(string(data[end+1:]))
	if len(rest) < 45 || len(rest[0]) != 1 {
		return nil, fmt.Errorf("%d fields after the command name, want at least 45: %w", len(rest), unix.EINVAL)
	}
	st := &procStat{PID: pid, Comm: string(data[open+1 : end]), State: rest[0][0]}

	fields := []struct {
		num int
		dst *uint64
	}{{9, &st.Flags}, {22, &st.StartTime}, {47, &st.StartBrk}}
	for _, f := range fields {
		if *f.dst, err = strconv.ParseUint(rest[f.num-3], 10, 64); err != nil {
			return nil, fmt.Errorf("stat field %d: %w", f.num, unix.EINVAL)
		}
	}
	if st.PPid, err = strconv.Atoi(rest[4-3]); err != nil {
		return nil, fmt.Errorf("stat field 4: %w", unix.EINVAL)
	}
	if st.Threads, err = strconv.Atoi(rest[20-3]); err != nil {
		return nil, fmt.Errorf("stat field 20: %w", unix.EINVAL)
	}
	return st, nil
}

var bootID = sync.OnceValues(func() (string, error) {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
})

// Identify returns the identity of process pid: its pid, its start time
// and the boot id. A process that does not exist gives an error wrapping
// ESRCH.
func Identify(pid int) (snapshot.ProcessID, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return snapshot.ProcessID{}, err
	}
	boot, err := bootID()
	if err != nil {
		return snapshot.ProcessID{}, err
	}
	return snapshot.ProcessID{PID: pid, StartTime: st.StartTime, BootID: boot}, nil
}
