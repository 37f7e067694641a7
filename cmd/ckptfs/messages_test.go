package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/s3test"
	"github.com/ckptfs/ckptfs/snapshot"
)

func TestRestoreUnknownPartIsUsageError(t *testing.T) {
	// The test process itself is the PID: the usage error comes before any
	// look at it, and even a missed one stops at the empty store.
	self := strconv.Itoa(os.Getpid())
	for _, part := range []string{"bogus", "Memory", "1000-2001", "2000-1000", "zz-1000", "1000"} {
		t.Run(part, func(t *testing.T) {
			r := ckptfs(t, "restore", "--store", newStore(t), self, "snap-1", "memory", part)
			if r.code != exitUsage {
				t.Fatalf("restore with part %q: exit %d, want %d; stderr:\n%s", part, r.code, exitUsage, r.stderr)
			}
			for _, want := range []string{strconv.Quote(part), "memory, layout, threads, fds, signals, START-END",
				"mapping name", "ckptfs restore --help"} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
		})
	}
}

func TestCheckPartsAcceptsValidWords(t *testing.T) {
	valid := []string{"memory", "layout", "threads", "fds", "signals", "[heap]", "[stack]",
		"/usr/lib/x86_64-linux-gnu/libc.so.6", "7f0000000000-7f0000021000", "1000-2000"}
	for _, part := range valid {
		if err := checkParts([]string{part}); err != nil {
			t.Errorf("checkParts(%q): %v, want nil", part, err)
		}
	}
	if err := checkParts(nil); err != nil {
		t.Errorf("checkParts(nil): %v, want nil for a full restore", err)
	}
}

func TestInvalidNameSaidOnce(t *testing.T) {
	r := ckptfs(t, "capture", "--store", newStore(t), strconv.Itoa(os.Getpid()), "a b")
	if r.code != exitUsage {
		t.Fatalf("capture as \"a b\": exit %d, want %d; stderr:\n%s", r.code, exitUsage, r.stderr)
	}
	if n := strings.Count(r.stderr, "invalid snapshot name"); n != 1 {
		t.Errorf("stderr says \"invalid snapshot name\" %d times, want once:\n%s", n, r.stderr)
	}
}

func TestStoreErrorSaidOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	r := ckptfs(t, "list", "--store", file)
	if r.code != exitFailed {
		t.Fatalf("list with a file as store: exit %d, want %d; stderr:\n%s", r.code, exitFailed, r.stderr)
	}
	if n := strings.Count(r.stderr, " store "+file); n != 1 {
		t.Errorf("stderr names the store %d times as \"store %s\", want once:\n%s", n, file, r.stderr)
	}
	if !strings.Contains(r.stderr, "--store DIR") {
		t.Errorf("stderr does not say to pass --store DIR:\n%s", r.stderr)
	}
}

func TestListStoreOfAnotherUser(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	if err := os.Mkdir(store, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(store, 65534, 65534); err != nil {
		t.Fatal(err)
	}

	r := ckptfs(t, "list", "--store", store)
	if r.code != exitFailed {
		t.Fatalf("list of a store owned by uid 65534: exit %d, want %d; stderr:\n%s", r.code, exitFailed, r.stderr)
	}
	if !strings.Contains(r.stderr, "--store DIR") {
		t.Errorf("stderr does not say to pass --store DIR:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, "process 0") {
		t.Errorf("stderr names process 0, which list has not:\n%s", r.stderr)
	}
}

func TestStoreHint(t *testing.T) {
	perm := fmt.Errorf("open store %s: owned by uid 0: %w", defaultStoreDir, unix.EPERM)
	hint := storeHint(defaultStoreDir, perm, 65534)
	for _, want := range []string{"belongs to root", "--store DIR"} {
		if !strings.Contains(hint, want) {
			t.Errorf("hint for the default store of an ordinary user lacks %q: %s", want, hint)
		}
	}

	missing := fmt.Errorf("open store s3://none/x: bucket none not found: %w", unix.ENOENT)
	hint = storeHint("s3://none/x", missing, 0)
	if !strings.Contains(hint, "bucket was not found") || !strings.Contains(hint, "create it") {
		t.Errorf("hint for a missing bucket does not say to create it: %s", hint)
	}
	if strings.Contains(hint, "ckptfs list") {
		t.Errorf("hint for a missing bucket suggests ckptfs list: %s", hint)
	}
}

func TestS3MissingBucket(t *testing.T) {
	needRoot(t)
	srv := s3test.Start(t)

	r := fleetRun(t, srv, "", "list", "--store", "s3://no-such-bucket/fleet")
	if r.code != exitFailed {
		t.Fatalf("list on a missing bucket: exit %d, want %d; stderr:\n%s", r.code, exitFailed, r.stderr)
	}
	for _, want := range []string{"no-such-bucket", "bucket was not found", "create it"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "ckptfs list") {
		t.Errorf("stderr suggests ckptfs list for a missing bucket:\n%s", r.stderr)
	}
}

func TestMountHintOrdinaryUser(t *testing.T) {
	hint := mountHint("/ckpt", errors.New("mount /ckpt: fusermount exited with code 256"), 65534)
	for _, want := range []string{"/dev/fuse", "fusermount3", "run as root", "install fuse3"} {
		if !strings.Contains(hint, want) {
			t.Errorf("hint for a failed fusermount lacks %q: %s", want, hint)
		}
	}
}

func TestRefusalHint(t *testing.T) {
	needRoot(t)
	p := startCounter(t)
	var exe unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/exe", p.PID), &exe); err != nil {
		t.Fatal(err)
	}
	same := &snapshot.Image{Threads: []snapshot.Thread{{TID: p.PID}}, ExeDev: exe.Dev, ExeIno: exe.Ino}
	more := &snapshot.Image{Threads: []snapshot.Thread{{TID: p.PID}, {TID: p.PID + 1}}, ExeDev: exe.Dev, ExeIno: exe.Ino}
	other := &snapshot.Image{Threads: same.Threads, ExeDev: exe.Dev, ExeIno: exe.Ino + 1}

	if hint := refusalHint(p.PID, other, nil); !strings.Contains(hint, "execve") || strings.Contains(hint, "only the other parts") {
		t.Errorf("hint for a process that ran another program should name the execve and suggest no partial restore: %s", hint)
	}

	if threadSetChanged(p.PID, same) {
		t.Errorf("threadSetChanged of single-threaded pid %d against its own tid: true, want false", p.PID)
	}
	hint := refusalHint(p.PID, more, nil)
	for _, want := range []string{"thread set", "capture"} {
		if !strings.Contains(hint, want) {
			t.Errorf("hint for a changed thread set lacks %q: %s", want, hint)
		}
	}
	if strings.Contains(hint, "only the other parts") {
		t.Errorf("hint for a changed thread set suggests a partial restore, which is refused too: %s", hint)
	}

	if hint := refusalHint(p.PID, same, nil); !strings.Contains(hint, "only the other parts") {
		t.Errorf("hint for another refusal of a full restore does not mention partial restores: %s", hint)
	}
	if hint := refusalHint(p.PID, same, []string{"memory"}); strings.Contains(hint, "only the other parts") {
		t.Errorf("hint for a refused partial restore suggests a partial restore: %s", hint)
	}
}

func TestOneShotCommandsQuietByDefault(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)

	for _, args := range [][]string{
		{"capture", "--store", store, pid, "quiet"},
		{"restore", "--store", store, pid, "quiet"},
		{"list", "--store", store},
		{"rm", "--store", store, pid, "quiet"},
	} {
		if r := mustRun(t, args...); r.stderr != "" {
			t.Errorf("ckptfs %s wrote to stderr at the default log level:\n%s", strings.Join(args, " "), r.stderr)
		}
	}

	mustRun(t, "capture", "--store", store, pid, "loud")
	r := mustRun(t, "restore", "--log-level", "info", "--store", store, pid, "loud")
	if !strings.Contains(r.stderr, "restored") {
		t.Errorf("restore --log-level info logged no \"restored\" line:\n%s", r.stderr)
	}
}
