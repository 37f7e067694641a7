package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// binary is the ckptfs executable that TestMain builds for every test.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ckptfs-cli-test-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "create build directory: %v\n", err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ckptfs")

	build := exec.Command("go", "build", "-o", binary, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ckptfs: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}

	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// result is what one run of the binary returned.
type result struct {
	code           int
	stdout, stderr string
}

// ckptfs runs the binary with args and returns its exit status and output.
func ckptfs(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "CKPTFS_STORE=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr

	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run ckptfs %s: %v", strings.Join(args, " "), err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// mustRun runs the binary and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := ckptfs(t, args...)
	if r.code != exitOK {
		t.Fatalf("ckptfs %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// needRoot skips t when the test does not run as root: capturing and
// mounting need CAP_SYS_PTRACE and CAP_SYS_ADMIN.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to ptrace targets and mount FUSE")
	}
}

// newStore returns the path of a store directory that does not exist yet,
// so that ckptfs creates it with mode 0700; a store that other users can
// access is rejected.
func newStore(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "store")
}

// startCounter starts the cli_counter target and waits until it runs.
func startCounter(t *testing.T) *testproc.Proc {
	t.Helper()
	p := testproc.Start(t, testproc.Build(t, "cli_counter"))
	p.Expect("ready")
	return p
}

// listJSON runs "list --json" with extra arguments and decodes its output.
func listJSON(t *testing.T, store string, args ...string) []listEntry {
	t.Helper()
	r := mustRun(t, append([]string{"list", "--json", "--store", store}, args...)...)
	var entries []listEntry
	if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil {
		t.Fatalf("list --json output is not a JSON array of snapshots: %v\n%s", err, r.stdout)
	}
	return entries
}

// findEntry returns the list entry of snapshot name of pid, or nil.
func findEntry(entries []listEntry, pid int, name string) *listEntry {
	for i := range entries {
		if entries[i].PID == pid && entries[i].Snapshot == name {
			return &entries[i]
		}
	}
	return nil
}
