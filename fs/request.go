package fs

import (
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// maxRequest is the longest request a control file accepts: a name is at
// most 64 bytes, and a restore adds a few parts.
const maxRequest = 4096

// autoPrefix starts the names of snapshots taken by autosave, which users
// may not give to a capture.
const autoPrefix = "auto-"

// restoreParts are the keywords a partial restore accepts besides regions.
var restoreParts = []string{"memory", "layout", "threads", "fds", "signals"}

// regionBounds matches a region named by its bounds, START-END in hex.
var regionBounds = regexp.MustCompile(`^[0-9a-f]+-[0-9a-f]+$`)

// requestText turns the data of a control-file write into a request: one
// trailing newline is dropped, and a request of several lines is invalid.
func requestText(data []byte) (string, error) {
	if len(data) > maxRequest {
		return "", fmt.Errorf("request of %d bytes is longer than %d: %w", len(data), maxRequest, unix.EINVAL)
	}
	request := strings.TrimSuffix(string(data), "\n")
	if strings.Contains(request, "\n") {
		return "", fmt.Errorf("request %q has several lines: write one request per write, with at most one trailing newline: %w",
			request, unix.EINVAL)
	}
	return request, nil
}

// parseCaptureRequest parses a write to a capture file. "1" or an empty
// line requests an automatic name (returned as ""), and anything else is
// the name of the snapshot.
func parseCaptureRequest(request string) (string, error) {
	if request == "" || request == "1" {
		return "", nil
	}
	if strings.HasPrefix(request, autoPrefix) {
		return "", fmt.Errorf("snapshot name %q: names starting with %q are reserved for autosave: %w", request, autoPrefix, unix.EINVAL)
	}
	if err := snapshot.ValidName(request); err != nil {
		return "", fmt.Errorf("capture request %q: %w", request, err)
	}
	return request, nil
}

// latestName, in a restore request, names the newest snapshot of the
// process, as the latest link does.
const latestName = "latest"

// parseRestoreRequest parses a write to a restore file: "NAME [PART...]",
// separated by spaces. No parts means a full restore (nil parts). NAME may
// be latest, which the caller resolves.
//
// NOTE: parts are split on white space, so a mapping whose path contains a
// space cannot be named; its START-END bounds can.
func parseRestoreRequest(request string) (string, []string, error) {
	fields := strings.Fields(request)
	if len(fields) == 0 {
		return "", nil, fmt.Errorf("empty restore request: write NAME [PART...]: %w", unix.EINVAL)
	}
	if err := snapshot.ValidName(fields[0]); err != nil && fields[0] != latestName {
		return "", nil, fmt.Errorf("restore request %q: %w", request, err)
	}

	parts := fields[1:]
	for _, part := range parts {
		if !validRestorePart(part) {
			return "", nil, fmt.Errorf("restore request %q: unknown part %q: want one of %s, START-END, a path or a [name] from maps: %w",
				request, part, strings.Join(restoreParts, " "), unix.EINVAL)
		}
	}
	if len(parts) == 0 {
		parts = nil
	}
	return fields[0], parts, nil
}

func validRestorePart(part string) bool {
	for _, keyword := range restoreParts {
		if part == keyword {
			return true
		}
	}
	return regionBounds.MatchString(part) || strings.HasPrefix(part, "/") ||
		(strings.HasPrefix(part, "[") && strings.HasSuffix(part, "]"))
}

// opRecord is one capture or restore as the status file reports it.
type opRecord struct {
	Kind      string // "capture" or "restore"
	Request   string // as written, without the trailing newline
	Snapshot  string
	CallerPID uint32
	CallerUID uint32
	Started   time.Time
	Duration  time.Duration
	Running   bool

	Err    error
	Info   *snapshot.Info        // a capture that succeeded
	Report *engine.RestoreReport // a restore that succeeded
}

// failureHints gives, by errno, the next step a user can take after a
// failed write.
var failureHints = map[syscall.Errno]string{
	unix.EBUSY:      "another capture or restore of this process is running; wait until it ends, then write again",
	unix.ENOENT:     "ls this directory to see the snapshots of this process",
	unix.EEXIST:     "choose another name, or write 1 for the next snap-N",
	unix.EINVAL:     "capture takes 1, an empty line or a NAME of [A-Za-z0-9][A-Za-z0-9._-]{0,63}; restore takes NAME [PART...] or latest",
	unix.ESRCH:      "the process is gone; its snapshots stay in the store (ckptfs list PID)",
	unix.ENOSPC:     "free space in the store, or remove old snapshots with rmdir",
	unix.EOPNOTSUPP: "capture the process again, or restore only the parts that can come back",
	unix.EPERM:      "only root or the process's owner may act on it, and not while another tracer holds it",
	unix.EACCES:     "only root or the owner of the process and its snapshots may use them",
}

// autosaveHint replaces the EINVAL hint of failureHints for a write to
// an autosave file.
const autosaveHint = `autosave takes "INTERVAL [keep=N]", such as "30s keep=10", with an interval of 1s or more, or "off"`

func newRecord(kind, request string, caller *fuse.Caller) opRecord {
	return opRecord{Kind: kind, Request: request, CallerPID: caller.Pid, CallerUID: caller.Uid, Started: time.Now()}
}

// render formats the record as "key: value" lines.
func (r *opRecord) render() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "operation: %s\n", r.Kind)
	fmt.Fprintf(&b, "request: %q\n", r.Request)
	if r.Snapshot != "" {
		fmt.Fprintf(&b, "snapshot: %s\n", r.Snapshot)
	}
	fmt.Fprintf(&b, "caller: pid %d uid %d\n", r.CallerPID, r.CallerUID)
	fmt.Fprintf(&b, "started: %s\n", r.Started.Format(time.RFC3339Nano))

	switch {
	case r.Running:
		b.WriteString("result: running\n")
		return []byte(b.String())
	case r.Err != nil:
		errno := errnos.Of(r.Err)
		fmt.Fprintf(&b, "result: failed: %s: %s\n", errnos.Name(errno), r.Err)
		hint := failureHints[errno]
		if r.Kind == "autosave" && errno == unix.EINVAL {
			hint = autosaveHint
		}
		if hint != "" {
			fmt.Fprintf(&b, "hint: %s\n", hint)
		}
	default:
		b.WriteString("result: ok\n")
	}
	fmt.Fprintf(&b, "duration: %s\n", r.Duration.Round(time.Microsecond))

	if r.Info != nil {
		fmt.Fprintf(&b, "frozen: %s\n", r.Info.Frozen.Round(time.Microsecond))
		fmt.Fprintf(&b, "bytes: %d\n", r.Info.Bytes)
		fmt.Fprintf(&b, "stored: %d\n", r.Info.Stored)
	}
	if r.Report != nil {
		for _, item := range r.Report.LeftAlone {
			fmt.Fprintf(&b, "left alone: %s\n", item)
		}
		for _, warning := range r.Report.Warnings {
			fmt.Fprintf(&b, "warning: %s\n", warning)
		}
	}
	return []byte(b.String())
}
