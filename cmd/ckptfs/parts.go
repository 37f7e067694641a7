package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// partWords are the fixed PART words of restore.
var partWords = []string{"memory", "layout", "threads", "fds", "signals"}

// partsUsage lists the valid PART words for a usage error.
const partsUsage = "memory, layout, threads, fds, signals, START-END (hex page-aligned bounds as in maps, " +
	"such as 7f0000000000-7f0000021000) or a mapping name from maps ([heap], [stack], or a file path)"

// checkParts checks the PART words of restore before anything runs: each
// is a fixed word, a START-END range, or a mapping name. Mapping names are
// known only from the snapshot, so any word that starts like one ("[" or
// "/", as every name in maps does) passes here and the engine checks it.
func checkParts(parts []string) error {
	for _, part := range parts {
		if !validPart(part) {
			return fmt.Errorf("invalid PART %q: expected %s", part, partsUsage)
		}
	}
	return nil
}

func validPart(part string) bool {
	for _, word := range partWords {
		if part == word {
			return true
		}
	}
	if strings.HasPrefix(part, "[") || strings.HasPrefix(part, "/") {
		return true
	}
	return validRange(part)
}

// validRange reports whether part is START-END in hex with both bounds
// page-aligned and START below END, as the engine accepts it.
func validRange(part string) bool {
	startText, endText, ok := strings.Cut(part, "-")
	if !ok {
		return false
	}
	start, err := strconv.ParseUint(startText, 16, 64)
	if err != nil {
		return false
	}
	end, err := strconv.ParseUint(endText, 16, 64)
	if err != nil {
		return false
	}
	page := uint64(os.Getpagesize())
	return start < end && start%page == 0 && end%page == 0
}
