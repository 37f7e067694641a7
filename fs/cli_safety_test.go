package fs

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// cliCapture runs `ckptfs capture` of pid on storeDir and returns the
// snapshot name it prints.
func cliCapture(t *testing.T, bin, storeDir string, pid int) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, "capture", "--store", storeDir, strconv.Itoa(pid)).Output()
	if exitErr, ok := err.(*exec.ExitError); ok {
		t.Logf("ckptfs capture %d: %s", pid, exitErr.Stderr)
	}
	return strings.TrimSpace(string(out)), err
}

// cliList returns the snapshot names `ckptfs list --json PID` prints.
func cliList(t *testing.T, bin, storeDir string, pid int) []string {
	t.Helper()
	out, err := exec.Command(bin, "list", "--json", "--store", storeDir, strconv.Itoa(pid)).Output()
	if err != nil {
		t.Fatalf("ckptfs list: %v", err)
	}
	var entries []struct {
		Snapshot string `json:"snapshot"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("ckptfs list --json: %v\n%s", err, out)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Snapshot)
	}
	return names
}

// checkListedEverywhere fails unless the mount, the store and the CLI all
// list exactly names for pid.
func checkListedEverywhere(t *testing.T, m *testMount, bin string, pid int, names []string) {
	t.Helper()
	dir := listDir(t, m.path(pid))
	for _, name := range names {
		if !slices.Contains(dir, name) {
			t.Errorf("/ckpt/%d lists %v, without %s", pid, dir, name)
		}
	}
	infos, err := m.store.List(pid)
	if err != nil || len(infos) != len(names) {
		t.Errorf("store lists %v (%v), want %v", infos, err, names)
	}
	if got := cliList(t, bin, m.storeDir, pid); !sameSet(got, names) {
		t.Errorf("ckptfs list shows %v, want %v", got, names)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestMountAndCLIShareStore(t *testing.T) {
	bin := buildCkptfs(t)
	m := newMount(t)

	t.Run("one process, saves overlapping", func(t *testing.T) {
		tg := testproc.StartMem(t, 256, false)
		w := watchPhases(tg.PID)
		done := make(chan error, 1)
		go func() { done <- m.write("1\n", tg.PID, "capture") }()
		waitFor(done, func() bool { _, thawed := w.state(); return thawed })
		w.end()

		// The mount's capture is saving; the CLI freezes and saves the
		// same process meanwhile.
		cliName, cliErr := cliCapture(t, bin, m.storeDir, tg.PID)
		mountErr := m.awaitOrAbort("capture through the mount", done)
		if cliErr != nil || mountErr != nil {
			t.Fatalf("CLI capture: %v; mount capture: %v", cliErr, mountErr)
		}
		mountName := keyValues(m.read(tg.PID, "status"))["snapshot"]
		if cliName == mountName {
			t.Fatalf("CLI and mount both named their snapshot %s", cliName)
		}
		checkListedEverywhere(t, m, bin, tg.PID, []string{"snap-1", "snap-2"})
		tg.CheckCounting(t, "target after both captures")
	})

	t.Run("two processes at once", func(t *testing.T) {
		for round := range 3 {
			viaMount := startSafeTarget(t, 0)
			viaCLI := startSafeTarget(t, 0)
			done := make(chan error, 1)
			go func() { done <- m.write("1\n", viaMount.PID, "capture") }()
			cliName, cliErr := cliCapture(t, bin, m.storeDir, viaCLI.PID)
			if err := m.awaitOrAbort("capture through the mount", done); err != nil || cliErr != nil {
				t.Fatalf("round %d: mount capture %v, CLI capture %v", round, err, cliErr)
			}
			if cliName != "snap-1" {
				t.Errorf("round %d: CLI named its snapshot %q, want snap-1", round, cliName)
			}
			checkListedEverywhere(t, m, bin, viaMount.PID, []string{"snap-1"})
			checkListedEverywhere(t, m, bin, viaCLI.PID, []string{"snap-1"})
		}
	})
}
