package snapshot

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxNameLen is the longest snapshot name ValidName accepts.
const MaxNameLen = 64

// AutoPrefix starts the names Save picks itself (snap-1, snap-2, ...).
const AutoPrefix = "snap-"

// controlNames are the file names of a process directory in the mount, so no
// snapshot may take one of them.
var controlNames = []string{"capture", "restore", "status", "autosave", "latest", "self"}

// ValidName checks a snapshot name: [A-Za-z0-9][A-Za-z0-9._-]{0,63} and not
// one of the control names capture, restore, status, autosave, latest or
// self. The error wraps unix.EINVAL and names the rule the name breaks.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("invalid snapshot name: empty: %w", unix.EINVAL)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("invalid snapshot name %.20q...: longer than %d bytes: %w", name, MaxNameLen, unix.EINVAL)
	}
	if !isAlnum(name[0]) {
		return fmt.Errorf("invalid snapshot name %q: must start with a letter or digit: %w", name, unix.EINVAL)
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("invalid snapshot name %q: byte %d (%q) is not a letter, digit, '.', '_' or '-': %w",
				name, i, c, unix.EINVAL)
		}
	}
	for _, control := range controlNames {
		if name == control {
			return fmt.Errorf("invalid snapshot name %q: reserved for a control file: %w", name, unix.EINVAL)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// autoNumber returns N for a name of the form snap-N with N a canonical
// positive decimal number, and false for every other name.
func autoNumber(name string) (uint64, bool) {
	digits, ok := strings.CutPrefix(name, AutoPrefix)
	if !ok || digits == "" || digits[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// autoName returns the automatic name with number n.
func autoName(n uint64) string {
	return AutoPrefix + strconv.FormatUint(n, 10)
}
