package fs

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// minAutosaveInterval is the shortest interval an autosave accepts.
	minAutosaveInterval = time.Second

	// defaultAutosaveKeep is how many auto-saves a schedule keeps when the
	// request gives no keep=N.
	defaultAutosaveKeep = 10
)

// autosaveSetting is one autosave schedule: capture every Interval and keep
// the newest Keep auto-saves.
type autosaveSetting struct {
	Interval time.Duration
	Keep     int
}

// String formats the setting as a request that parses back to it, such as
// "30s keep=10".
func (s autosaveSetting) String() string {
	return fmt.Sprintf("%s keep=%d", s.Interval, s.Keep)
}

// parseAutosaveRequest parses a write to an autosave file: "off", or
// "INTERVAL [keep=N]" with INTERVAL a Go duration of at least 1s and N a
// decimal number of at least 1, separated by white space. It returns off
// true for "off". Anything else gives an error wrapping unix.EINVAL that
// names what is wrong.
func parseAutosaveRequest(request string) (autosaveSetting, bool, error) {
	fields := strings.Fields(request)
	switch {
	case len(fields) == 0:
		return autosaveSetting{}, false, fmt.Errorf("empty autosave request: write INTERVAL [keep=N] or off: %w", unix.EINVAL)
	case fields[0] == "off" && len(fields) == 1:
		return autosaveSetting{}, true, nil
	case fields[0] == "off":
		return autosaveSetting{}, false, fmt.Errorf("autosave request %q: off takes no arguments: %w", request, unix.EINVAL)
	case len(fields) > 2:
		return autosaveSetting{}, false, fmt.Errorf("autosave request %q: too many fields, want INTERVAL [keep=N]: %w", request, unix.EINVAL)
	}

	interval, err := parseAutosaveInterval(fields[0])
	if err != nil {
		return autosaveSetting{}, false, fmt.Errorf("autosave request %q: %w", request, err)
	}
	setting := autosaveSetting{Interval: interval, Keep: defaultAutosaveKeep}
	if len(fields) == 2 {
		setting.Keep, err = parseAutosaveKeep(fields[1])
		if err != nil {
			return autosaveSetting{}, false, fmt.Errorf("autosave request %q: %w", request, err)
		}
	}
	return setting, false, nil
}

func parseAutosaveInterval(text string) (time.Duration, error) {
	interval, err := time.ParseDuration(text)
	if err != nil {
		return 0, fmt.Errorf("interval %q is not a Go duration such as 30s, 5m or 1h30m: %w", text, unix.EINVAL)
	}
	if interval < minAutosaveInterval {
		return 0, fmt.Errorf("interval %s is shorter than the minimum of %s: %w", interval, minAutosaveInterval, unix.EINVAL)
	}
	return interval, nil
}

func parseAutosaveKeep(field string) (int, error) {
	text, ok := strings.CutPrefix(field, "keep=")
	if !ok {
		return 0, fmt.Errorf("unknown option %q, want keep=N: %w", field, unix.EINVAL)
	}
	keep, err := strconv.ParseUint(text, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("keep=%s is not a decimal number below 2^31: %w", text, unix.EINVAL)
	}
	if keep < 1 {
		return 0, fmt.Errorf("keep=%s: must keep at least 1 auto-save: %w", text, unix.EINVAL)
	}
	return int(keep), nil
}

// autosaveRecord is a schedule as the store keeps it, under the setting
// key autosaveKey of its process.
type autosaveRecord struct {
	// Setting is the schedule in request form, parsed again on resume.
	Setting string `json:"setting"`

	// Setter holds the credentials of the process that set the schedule,
	// its TGID cleared. Every tick checks them against the process again
	// with the rules of a capture, so that a process that exec'd a
	// set-user-ID program since is not captured for a user who may no
	// longer ptrace it.
	Setter taskCreds `json:"setter"`
}

// encodeAutosaveRecord returns the stored form of a schedule.
func encodeAutosaveRecord(setting autosaveSetting, setter taskCreds) ([]byte, error) {
	data, err := json.Marshal(autosaveRecord{Setting: setting.String(), Setter: setter})
	if err != nil {
		return nil, fmt.Errorf("encode autosave setting: %w", err)
	}
	return data, nil
}

// decodeAutosaveRecord parses a stored schedule. Damage gives an error
// wrapping unix.EINVAL.
func decodeAutosaveRecord(data []byte) (autosaveSetting, taskCreds, error) {
	var rec autosaveRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return autosaveSetting{}, taskCreds{}, fmt.Errorf("decode autosave setting: %v: %w", err, unix.EINVAL)
	}
	setting, off, err := parseAutosaveRequest(rec.Setting)
	if err == nil && off {
		err = fmt.Errorf("stored autosave setting is %q: %w", rec.Setting, unix.EINVAL)
	}
	if err != nil {
		return autosaveSetting{}, taskCreds{}, fmt.Errorf("decode autosave setting: %w", err)
	}
	return setting, rec.Setter, nil
}
