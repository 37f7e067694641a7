package fs

import (
	"errors"
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

func TestParseCaptureRequest(t *testing.T) {
	tests := []struct {
		request string
		name    string
		errno   syscall.Errno
	}{
		{"1", "", 0},
		{"", "", 0},
		{"before-upgrade", "before-upgrade", 0},
		{"v1.2_x", "v1.2_x", 0},
		{"auto-3", "", unix.EINVAL},
		{"two words", "", unix.EINVAL},
		{"-leading-dash", "", unix.EINVAL},
		{"latest", "", unix.EINVAL},
		{"capture", "", unix.EINVAL},
		{"a/b", "", unix.EINVAL},
		{"\x00\x01", "", unix.EINVAL},
		{strings.Repeat("x", 65), "", unix.EINVAL},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.request), func(t *testing.T) {
			name, err := parseCaptureRequest(tt.request)
			if got := errnos.Of(err); got != tt.errno {
				t.Fatalf("errno %v (%v), want %v", got, err, tt.errno)
			}
			if name != tt.name {
				t.Errorf("name %q, want %q", name, tt.name)
			}
		})
	}
}

func TestParseRestoreRequest(t *testing.T) {
	tests := []struct {
		request string
		name    string
		parts   []string
		errno   syscall.Errno
	}{
		{"snap-1", "snap-1", nil, 0},
		{"auto-2", "auto-2", nil, 0},
		{"snap-1 memory fds", "snap-1", []string{"memory", "fds"}, 0},
		{"snap-1  threads\tsignals", "snap-1", []string{"threads", "signals"}, 0},
		{"snap-1 layout 7f0000000000-7f0000001000 [heap] /usr/lib/libc.so.6", "snap-1",
			[]string{"layout", "7f0000000000-7f0000001000", "[heap]", "/usr/lib/libc.so.6"}, 0},
		{"", "", nil, unix.EINVAL},
		{"   ", "", nil, unix.EINVAL},
		{"bad!name", "", nil, unix.EINVAL},
		{"snap-1 everything", "", nil, unix.EINVAL},
		{"snap-1 12-zz", "", nil, unix.EINVAL},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.request), func(t *testing.T) {
			name, parts, err := parseRestoreRequest(tt.request)
			if got := errnos.Of(err); got != tt.errno {
				t.Fatalf("errno %v (%v), want %v", got, err, tt.errno)
			}
			if name != tt.name {
				t.Errorf("name %q, want %q", name, tt.name)
			}
			if !slices.Equal(parts, tt.parts) {
				t.Errorf("parts %q, want %q", parts, tt.parts)
			}
		})
	}
}

func TestRequestText(t *testing.T) {
	got, err := requestText([]byte("snap-1\n"))
	if err != nil || got != "snap-1" {
		t.Errorf("requestText(snap-1 newline) = %q, %v", got, err)
	}
	if got, err = requestText([]byte("1\n\n")); !errors.Is(err, unix.EINVAL) {
		t.Errorf("requestText(1 and two newlines) = %q, %v; want EINVAL", got, err)
	}
	if got, err = requestText([]byte("snap-1\nmemory")); !errors.Is(err, unix.EINVAL) {
		t.Errorf("requestText(two lines) = %q, %v; want EINVAL", got, err)
	}
	if _, err := requestText(make([]byte, maxRequest+1)); !errors.Is(err, unix.EINVAL) {
		t.Errorf("oversized request: %v, want EINVAL", err)
	}
}

func TestErrnoOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"nil", nil, 0},
		{"reject", fmt.Errorf("freeze pid 5: %w", &engine.RejectError{Errno: unix.EOPNOTSUPP, Reason: "fd 3 is a pipe closed since"}), unix.EOPNOTSUPP},
		{"reject EPERM", &engine.RejectError{Errno: unix.EPERM, Reason: "pid 1 is the daemon"}, unix.EPERM},
		{"wrapped ENOENT", fmt.Errorf("load snapshot x: %w", unix.ENOENT), unix.ENOENT},
		{"exited beats ENOENT", fmt.Errorf("pid 5 exited during capture (open maps: %w): %w", unix.ENOENT, unix.ESRCH), unix.ESRCH},
		{"EEXIST", fmt.Errorf("save: %w", unix.EEXIST), unix.EEXIST},
		{"EBUSY", fmt.Errorf("pid 5: %w", unix.EBUSY), unix.EBUSY},
		{"ENOSPC", fmt.Errorf("save: %w", unix.ENOSPC), unix.ENOSPC},
		{"EDQUOT", fmt.Errorf("save: %w", unix.EDQUOT), unix.ENOSPC},
		{"corrupt", fmt.Errorf("read region 3: %w", snapshot.ErrCorrupt), unix.EIO},
		{"unknown", errors.New("something else"), unix.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errnos.Of(tt.err); got != tt.want {
				t.Errorf("errnos.Of(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestParsePID(t *testing.T) {
	for _, name := range []string{"1", "4194304", "123"} {
		if _, ok := parsePID(name); !ok {
			t.Errorf("parsePID(%q) rejected", name)
		}
	}
	for _, name := range []string{"0", "01", "+1", "-1", "self", "", "1a"} {
		if pid, ok := parsePID(name); ok {
			t.Errorf("parsePID(%q) = %d, want rejected", name, pid)
		}
	}
}

func FuzzControlRequest(f *testing.F) {
	for _, seed := range []string{"1\n", "\n", "snap-1\n", "auto-1", "snap-1 memory [heap]", "a b c", "\x00", strings.Repeat("z", 70)} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		request, err := requestText(data)
		if err != nil {
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("requestText error %v does not wrap EINVAL", err)
			}
			return
		}

		if name, err := parseCaptureRequest(request); err == nil && name != "" {
			if snapshot.ValidName(name) != nil || strings.HasPrefix(name, autoPrefix) {
				t.Fatalf("capture accepted name %q", name)
			}
		} else if err != nil && !errors.Is(err, unix.EINVAL) {
			t.Fatalf("capture error %v does not wrap EINVAL", err)
		}

		name, parts, err := parseRestoreRequest(request)
		if err != nil {
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("restore error %v does not wrap EINVAL", err)
			}
			return
		}
		if snapshot.ValidName(name) != nil {
			t.Fatalf("restore accepted name %q", name)
		}
		for _, part := range parts {
			if part == "" || strings.ContainsAny(part, " \t\n") {
				t.Fatalf("restore part %q", part)
			}
		}
	})
}

// controlEntries are the names of a process directory that are not
// snapshots; no snapshot name may equal one of them.
var controlEntries = []string{"capture", "restore", "status", "autosave", "latest", "self", ".", ".."}

func FuzzSnapshotName(f *testing.F) {
	for _, seed := range []string{"snap-1", "auto-3", "latest", "self", ".", "..", "a/b", "01", "+1", "123", "-x", strings.Repeat("n", 65), "x\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if pid, ok := parsePID(name); ok && (pid <= 0 || strconv.Itoa(pid) != name) {
			t.Fatalf("parsePID(%q) = %d, not the canonical form of a positive pid", name, pid)
		}

		captured, err := parseCaptureRequest(name)
		if err != nil {
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("capture of %q: %v, want EINVAL", name, err)
			}
		} else if captured != "" {
			if captured != name || strings.HasPrefix(name, autoPrefix) || slices.Contains(controlEntries, name) ||
				strings.ContainsAny(name, "/\x00 \n") || len(name) > 64 {
				t.Fatalf("capture accepted %q as snapshot name %q", name, captured)
			}
		}

		if snapshot.ValidName(name) != nil {
			return
		}
		restored, parts, err := parseRestoreRequest(name)
		if err != nil || restored != name || parts != nil {
			t.Fatalf("restore of valid name %q = %q %v %v", name, restored, parts, err)
		}
	})
}
