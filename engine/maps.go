package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// mapsPathColumn is the column where the kernel starts a mapping's path
// when the fields before it are shorter: it pads them with spaces to 72
// bytes (25 + 6*sizeof(void*) - 1 on 64-bit) and then writes one more.
const mapsPathColumn = 73

// readMaps reads /proc/PID/maps exactly as the kernel prints it, and the
// regions it lists with their smaps VmFlags.
//
// Precondition: all threads stopped, or the result may be inconsistent.
func readMaps(pid int) (regions []snapshot.Region, raw []byte, err error) {
	raw, err = readProcFile(pid, "maps")
	if err != nil {
		return nil, nil, err
	}
	regions, err = parseMaps(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("parse maps of pid %d: %w", pid, err)
	}

	smaps, err := readProcFile(pid, "smaps")
	if err != nil {
		return nil, nil, err
	}
	flags, err := parseSmapsFlags(smaps)
	if err != nil {
		return nil, nil, fmt.Errorf("parse smaps of pid %d: %w", pid, err)
	}
	for i := range regions {
		regions[i].VmFlags = flags[regions[i].Start]
	}
	return regions, raw, nil
}

// readProcFile reads /proc/PID/NAME, mapping a missing process to ESRCH.
func readProcFile(pid int, name string) ([]byte, error) {
	path := fmt.Sprintf("/proc/%d/%s", pid, name)
	data, err := os.ReadFile(path)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("read %s: %w", path, unix.ESRCH)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// parseMaps parses every line of /proc/PID/maps.
func parseMaps(data []byte) ([]snapshot.Region, error) {
	var regions []snapshot.Region
	for line := range bytes.Lines(data) {
		r, err := parseMapsLine(string(bytes.TrimSuffix(line, []byte("\n"))))
		if err != nil {
			return nil, err
		}
		regions = append(regions, r)
	}
	return regions, nil
}

// parseMapsLine parses one line of /proc/PID/maps:
//
//	start-end perms offset major:minor inode   path
//
// The path is everything after the padding, as the kernel printed it:
// it may contain spaces and end in " (deleted)", and leading spaces of a
// file name survive because the padding width is fixed.
func parseMapsLine(line string) (snapshot.Region, error) {
	var r snapshot.Region
	fields := strings.SplitN(line, " ", 6)
	if len(fields) < 5 {
		return r, fmt.Errorf("maps line %q: %d fields: %w", line, len(fields), unix.EINVAL)
	}

	start, end, ok := strings.Cut(fields[0], "-")
	major, minor, ok2 := strings.Cut(fields[3], ":")
	if !ok || !ok2 || len(fields[1]) != 4 {
		return r, fmt.Errorf("maps line %q: %w", line, unix.EINVAL)
	}
	r.Perms = fields[1]

	var errs [6]error
	r.Start, errs[0] = strconv.ParseUint(start, 16, 64)
	r.End, errs[1] = strconv.ParseUint(end, 16, 64)
	r.Offset, errs[2] = strconv.ParseUint(fields[2], 16, 64)
	r.Inode, errs[3] = strconv.ParseUint(fields[4], 10, 64)
	var maj, min uint64
	maj, errs[4] = strconv.ParseUint(major, 16, 32)
	min, errs[5] = strconv.ParseUint(minor, 16, 32)
	r.Major, r.Minor = uint32(maj), uint32(min)
	if err := errors.Join(errs[:]...); err != nil || r.End < r.Start {
		return r, fmt.Errorf("maps line %q: %w", line, unix.EINVAL)
	}

	// The header ends with the space after the inode.
	header := len(fields[0]) + len(fields[1]) + len(fields[2]) + len(fields[3]) + len(fields[4]) + 5
	pathAt := max(mapsPathColumn, header+1)
	if len(line) > pathAt {
		r.Path = line[pathAt:]
	}
	return r, nil
}

// parseSmapsFlags returns the VmFlags of each region of /proc/PID/smaps,
// keyed by the region's start address.
func parseSmapsFlags(data []byte) (map[uint64][]string, error) {
	flags := make(map[uint64][]string)
	var start uint64
	var inRegion bool
	for line := range bytes.Lines(data) {
		s := strings.TrimSuffix(string(line), "\n")
		if rest, ok := strings.CutPrefix(s, "VmFlags:"); ok {
			if !inRegion {
				return nil, fmt.Errorf("smaps VmFlags line before any region: %w", unix.EINVAL)
			}
			flags[start] = strings.Fields(rest)
			continue
		}
		if !isSmapsHeader(s) {
			continue
		}
		r, err := parseMapsLine(s)
		if err != nil {
			return nil, err
		}
		start, inRegion = r.Start, true
		flags[start] = nil
	}
	return flags, nil
}

// isSmapsHeader reports whether an smaps line starts a region (a maps
// line) rather than being a "Key: value" line. Region lines begin with a
// hex address followed by '-'.
func isSmapsHeader(s string) bool {
	i := strings.IndexByte(s, '-')
	if i <= 0 {
		return false
	}
	_, err := strconv.ParseUint(s[:i], 16, 64)
	return err == nil
}
