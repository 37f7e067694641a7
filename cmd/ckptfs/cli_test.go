package main

import (
	"bufio"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestCapturePrintsName(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)

	r := mustRun(t, "capture", "--store", store, pid)
	if got := strings.TrimSpace(r.stdout); got != "snap-1" {
		t.Errorf("capture without a name printed %q, want snap-1", got)
	}

	r = mustRun(t, "capture", "--store", store, pid, "before")
	if got := strings.TrimSpace(r.stdout); got != "before" {
		t.Errorf("capture with name before printed %q, want before", got)
	}

	if !p.Alive() {
		t.Errorf("pid %d exited after two captures", p.PID)
	}
}

func TestCaptureTakenName(t *testing.T) {
	needRoot(t)
	store := newStore(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)
	mustRun(t, "capture", "--store", store, pid, "twice")

	r := ckptfs(t, "capture", "--store", store, pid, "twice")
	if r.code != exitFailed {
		t.Fatalf("second capture as twice: exit %d, want %d; stderr:\n%s", r.code, exitFailed, r.stderr)
	}
	for _, want := range []string{pid, "twice", "ckptfs rm " + pid + " twice"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr of the failed capture lacks %q:\n%s", want, r.stderr)
		}
	}
	if r.stdout != "" {
		t.Errorf("failed capture wrote %q to stdout", r.stdout)
	}
}

func TestCaptureExitedProcess(t *testing.T) {
	needRoot(t)
	p := startCounter(t)
	p.Kill()

	r := ckptfs(t, "capture", "--store", newStore(t), strconv.Itoa(p.PID))
	if r.code != exitFailed {
		t.Fatalf("capture of exited pid %d: exit %d, want %d; stderr:\n%s", p.PID, r.code, exitFailed, r.stderr)
	}
	if !strings.Contains(r.stderr, "pid "+strconv.Itoa(p.PID)) {
		t.Errorf("stderr does not name pid %d:\n%s", p.PID, r.stderr)
	}
}

func TestBadArguments(t *testing.T) {
	store := newStore(t)
	tests := []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"snapshot", "1"}},
		{"capture missing PID", []string{"capture"}},
		{"capture non-numeric PID", []string{"capture", "abc"}},
		{"capture negative PID", []string{"capture", "-5"}},
		{"capture unknown flag", []string{"capture", "--frobnicate", "1"}},
		{"capture too many args", []string{"capture", "1", "a", "b"}},
		{"capture invalid name", []string{"capture", "1", "bad/name"}},
		{"capture control name", []string{"capture", "1", "latest"}},
		{"capture autosave name", []string{"capture", "1", "auto-3"}},
		{"restore missing name", []string{"restore", "1"}},
		{"restore non-numeric PID", []string{"restore", "x1", "snap-1"}},
		{"list non-numeric PID", []string{"list", "all"}},
		{"list two PIDs", []string{"list", "1", "2"}},
		{"rm missing name", []string{"rm", "1"}},
		{"rm unknown flag", []string{"rm", "--force", "1", "a"}},
		{"mount two mountpoints", []string{"mount", "/a", "/b"}},
		{"version with argument", []string{"version", "now"}},
		{"bad log level", []string{"--log-level", "loud", "version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if len(args) > 0 && args[0] != "version" && args[0] != "snapshot" && args[0] != "--log-level" {
				args = append([]string{args[0], "--store", store}, args[1:]...)
			}
			r := ckptfs(t, args...)
			if r.code != exitUsage {
				t.Errorf("ckptfs %s: exit %d, want %d; stderr:\n%s", strings.Join(args, " "), r.code, exitUsage, r.stderr)
			}
			if r.stderr == "" {
				t.Errorf("ckptfs %s: nothing on stderr", strings.Join(args, " "))
			}
			if r.stdout != "" {
				t.Errorf("ckptfs %s: wrote %q to stdout", strings.Join(args, " "), r.stdout)
			}
		})
	}
}

func TestHelpOfEachCommand(t *testing.T) {
	for _, command := range []string{"mount", "capture", "restore", "list", "rm", "version"} {
		t.Run(command, func(t *testing.T) {
			r := ckptfs(t, command, "--help")
			if r.code != exitOK {
				t.Fatalf("%s --help: exit %d", command, r.code)
			}
			if !strings.Contains(r.stdout, "--log-level") {
				t.Errorf("%s --help does not describe --log-level:\n%s", command, r.stdout)
			}
			if command != "version" && !strings.Contains(r.stdout, "CKPTFS_STORE") {
				t.Errorf("%s --help does not describe --store and CKPTFS_STORE:\n%s", command, r.stdout)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	r := mustRun(t, "version")
	if !strings.HasPrefix(r.stdout, "ckptfs dev\n") {
		t.Errorf("version printed %q, want it to start with \"ckptfs dev\"", r.stdout)
	}
	if !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("version printed %q, want the Go version %s", r.stdout, runtime.Version())
	}
}

func TestLogJSON(t *testing.T) {
	needRoot(t)
	p := startCounter(t)
	pid := strconv.Itoa(p.PID)

	r := mustRun(t, "capture", "--log-json", "--log-level", "info", "--store", newStore(t), pid, "logged")

	found := false
	sc := bufio.NewScanner(strings.NewReader(r.stderr))
	for sc.Scan() {
		var record map[string]any
		if err := json.Unmarshal(sc.Bytes(), &record); err != nil {
			t.Errorf("stderr line is not JSON: %v\n%s", err, sc.Text())
			continue
		}
		if record["msg"] == "captured" && record["pid"] == float64(p.PID) && record["snapshot"] == "logged" {
			found = true
		}
	}
	if !found {
		t.Errorf("no JSON log record with msg captured, pid %s and snapshot logged in:\n%s", pid, r.stderr)
	}
}
