package fs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// crashTrials is the number of daemon kills per crash test.
const crashTrials = 20

// crashSeed returns the seed of a crash test's random delays: the
// environment's CKPTFS_CRASH_SEED to replay a run, else the clock.
func crashSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if env := os.Getenv("CKPTFS_CRASH_SEED"); env != "" {
		v, err := strconv.ParseUint(env, 10, 64)
		if err != nil {
			t.Fatalf("CKPTFS_CRASH_SEED %q: %v", env, err)
		}
		seed = v
	}
	t.Logf("delays seeded with %d (set CKPTFS_CRASH_SEED to replay)", seed)
	return seed
}

// crashDelay returns a delay between 0 and 300 ms, cubed-uniform so that
// about half fall below 30 ms: a capture freezes its target for only a few
// milliseconds and the kills must hit that window too.
func crashDelay(rng *rand.Rand) time.Duration {
	u := rng.Float64()
	return time.Duration(u * u * u * float64(300*time.Millisecond))
}

// buildCkptfs builds the ckptfs command into a temporary directory.
func buildCkptfs(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ckptfs")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ckptfs")
	cmd.Dir = testproc.Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ckptfs: %v\n%s", err, out)
	}
	return bin
}

// daemon is a `ckptfs mount` process serving a fresh mountpoint.
type daemon struct {
	cmd *exec.Cmd
	dir string
	log *lineLog

	waitOnce sync.Once
	waitErr  error
}

// startDaemon runs `ckptfs mount` on storeDir and waits until the mount
// appears. Cleanup kills it if it still runs, detaches the mount and
// removes the mountpoint.
func startDaemon(t *testing.T, bin, storeDir string) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "ckptfs-crash-mnt-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "mount", "--store", storeDir, "--log-level", "debug", "--log-json", dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	d := &daemon{cmd: cmd, dir: dir, log: &lineLog{}}
	go d.log.consume(stderr)
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		d.wait()
		if mounted(t, dir) {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", dir, err)
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove mountpoint: %v", err)
		}
	})

	// The daemon logs "mounted" after its first request has come back.
	// Until then it may be inside a request to its own mount, and a daemon
	// killed there can never exit (see fs.Mount), so no trial kills it
	// before.
	for deadline := time.Now().Add(pollLimit); !strings.Contains(d.log.String(), `"msg":"mounted"`); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ckptfs mount did not mount %s:\n%s", dir, d.log)
		}
	}
	if !mounted(t, dir) {
		t.Fatalf("ckptfs mount logged mounted, but %s is not a mountpoint", dir)
	}
	return d
}

// wait reaps the daemon once and returns its exit error.
func (d *daemon) wait() error {
	d.waitOnce.Do(func() { d.waitErr = d.cmd.Wait() })
	return d.waitErr
}

// kill sends SIGKILL through the process handle, which cannot hit a
// recycled pid, and reaps the daemon.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill daemon: %v", err)
	}
	d.wait()
}

// stop unmounts with SIGTERM and checks that the daemon exits 0 and takes
// its mount with it.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM daemon: %v", err)
	}
	if err := d.wait(); err != nil {
		t.Errorf("daemon exited with %v after SIGTERM:\n%s", err, d.log)
	}
	if mounted(t, d.dir) {
		t.Errorf("%s still mounted after SIGTERM", d.dir)
	}
}

// phaseWatch samples a target while a daemon works on it: whether it was
// seen frozen (traced) and whether it was seen thawed again afterwards.
type phaseWatch struct {
	mu             sync.Mutex
	frozen, thawed bool
	stop           chan struct{}
	done           chan struct{}
}

func watchPhases(pid int) *phaseWatch {
	w := &phaseWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			traced := tracerOf(pid) > 0
			w.mu.Lock()
			w.frozen = w.frozen || traced
			w.thawed = w.thawed || (w.frozen && !traced)
			w.mu.Unlock()
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return w
}

// state returns what the watch saw so far.
func (w *phaseWatch) state() (frozen, thawed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.frozen, w.thawed
}

// end stops the sampling.
func (w *phaseWatch) end() {
	close(w.stop)
	<-w.done
}

// waitFor waits until cond holds or the write finished.
func waitFor(done <-chan error, cond func() bool) {
	for deadline := time.Now().Add(pollLimit); time.Now().Before(deadline); time.Sleep(200 * time.Microsecond) {
		if len(done) > 0 || cond() {
			return
		}
	}
}

// checkTargetAfterCrash fails unless the target runs on, untraced and not
// stopped, within a second after its daemon died.
func checkTargetAfterCrash(t *testing.T, tg *testproc.MemTarget, trial int) {
	t.Helper()
	if state, tracer := waitRunning(tg.PID, time.Second); state == "T" || state == "t" || state == "gone" || tracer != 0 {
		t.Fatalf("trial %d: target state %s tracer %d a second after the daemon died", trial, state, tracer)
	}
	tg.CheckCounting(t, "trial "+strconv.Itoa(trial))
}

// connectionLost reports whether err is what a request to a FUSE mount
// whose daemon died gets: ECONNABORTED or ENOTCONN, or EIO for an open
// that was in flight.
func connectionLost(err error) bool {
	return errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.EIO)
}

// childrenOf returns the child pids of pid's main thread.
func childrenOf(t *testing.T, pid int) []string {
	t.Helper()
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(children))
}

// capturePhase names the phase of a capture that a daemon kill hit, from
// the daemon's JSON log and what the watch saw.
func capturePhase(log string, frozen, thawed bool) string {
	switch {
	case strings.Contains(log, `"msg":"snapshot saved"`):
		return "committed"
	case thawed || strings.Contains(log, `"msg":"captured"`):
		return "saving"
	case frozen:
		return "frozen"
	default:
		return "before freeze"
	}
}

func TestDaemonKilledDuringCapture(t *testing.T) {
	bin := buildCkptfs(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	tg := testproc.StartMem(t, 512, false)
	rng := rand.New(rand.NewPCG(crashSeed(t), 0))

	phases := map[string]int{}
	leftovers := 0
	for trial := range crashTrials {
		fromThaw := trial%2 == 1
		delay := crashDelay(rng)
		d := startDaemon(t, bin, storeDir)

		w := watchPhases(tg.PID)
		done := make(chan error, 1)
		go func() { done <- os.WriteFile(pidDir(d.dir, tg.PID, "capture"), []byte("1\n"), 0o600) }()
		if fromThaw {
			waitFor(done, func() bool { _, thawed := w.state(); return thawed })
		}
		time.Sleep(delay)
		d.kill(t)
		frozen, thawed := w.state()
		w.end()

		phase := capturePhase(d.log.String(), frozen, thawed)
		phases[phase]++
		t.Logf("trial %d: kill %v after the %s, hit %s", trial, delay.Round(time.Millisecond),
			map[bool]string{false: "write", true: "thaw"}[fromThaw], phase)

		checkTargetAfterCrash(t, tg, trial)
		if err := <-done; err != nil && !connectionLost(err) {
			t.Errorf("trial %d: capture write failed with %v, want ECONNABORTED, ENOTCONN or EIO", trial, err)
		}
		if _, err := os.Stat(pidDir(d.dir, tg.PID)); err == nil {
			t.Errorf("trial %d: the dead daemon's mount still answers", trial)
		}
		if err := unix.Unmount(d.dir, unix.MNT_DETACH); err != nil {
			t.Errorf("trial %d: detach the dead mount: %v", trial, err)
		}

		leftovers += len(tmpEntries(t, storeDir))
		checkRestartedStore(t, bin, storeDir, tg.PID, trial)
	}
	t.Logf("%d trials: %s; %d left work directories, all swept at restart", crashTrials,
		fmtPhases(phases, []string{"before freeze", "frozen", "saving", "committed"}), leftovers)

	// A capture's copy-on-write clone is a child of the target that the
	// daemon reaps by an injected wait4. A daemon killed before that
	// leaves the clone, killed by PTRACE_O_EXITKILL, as a zombie child,
	// which the next operation on the process reaps.
	d := startDaemon(t, bin, storeDir)
	if err := os.WriteFile(filepath.Join(pidDir(d.dir, tg.PID), "capture"), []byte("1"), 0); err != nil {
		t.Fatalf("capture after the trials: %v\n%s", err, d.log)
	}
	kids := childrenOf(t, tg.PID)
	for deadline := time.Now().Add(10 * time.Second); len(kids) != 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		kids = childrenOf(t, tg.PID)
	}
	d.stop(t)
	if len(kids) != 0 {
		t.Errorf("zombie children %v left in the target after the next capture, want none", kids)
	}
}

// checkRestartedStore restarts a daemon on storeDir and fails unless it
// swept every work directory and lists exactly the complete snapshots.
func checkRestartedStore(t *testing.T, bin, storeDir string, pid, trial int) {
	t.Helper()
	d := startDaemon(t, bin, storeDir)
	if tmp := tmpEntries(t, storeDir); len(tmp) != 0 {
		t.Errorf("trial %d: restarted daemon left work directories %v", trial, tmp)
	}

	store, err := snapshot.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := store.List(pid)
	if err != nil {
		t.Fatal(err)
	}
	names := listDir(t, pidDir(d.dir, pid))
	for _, info := range infos {
		if !slices.Contains(names, info.Name) {
			t.Errorf("trial %d: mount lists %v without %s", trial, names, info.Name)
		}
		snap, err := store.Load(info.Process, info.Name)
		if err != nil {
			t.Errorf("trial %d: listed snapshot %s does not load: %v", trial, info.Name, err)
			continue
		}
		if info.Bytes < 512<<20 {
			t.Errorf("trial %d: snapshot %s holds %d bytes, want the whole 512 MiB", trial, info.Name, info.Bytes)
		}
		snap.Close()
	}
	for _, name := range names {
		isControl := slices.Contains([]string{"capture", "restore", "status", "autosave", "latest"}, name)
		if !isControl && !slices.ContainsFunc(infos, func(info snapshot.Info) bool { return info.Name == name }) {
			t.Errorf("trial %d: mount lists %s, which the store does not list", trial, name)
		}
	}
	d.stop(t)
}

// baseSeed is the pattern seed of a safe_mem that has not rewritten its
// memory yet.
const baseSeed = 0x5afe0001

// restoreTrials is the number of daemon kills during a restore.
const restoreTrials = 16

// rollbackMargin is how far the counter of a restore trial's target runs
// ahead of its value at the snapshot before the restore, in counts of
// about a millisecond of running time.
const rollbackMargin = 800

func TestDaemonKilledDuringRestore(t *testing.T) {
	bin := buildCkptfs(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	tg := testproc.StartMem(t, 512, false)
	rng := rand.New(rand.NewPCG(crashSeed(t), 0))

	becomeSubreaper(t)
	d := startDaemon(t, bin, storeDir)
	before := tg.Counter(t)
	if err := os.WriteFile(pidDir(d.dir, tg.PID, "capture"), []byte("base\n"), 0o600); err != nil {
		t.Fatalf("capture base: %v\n%s", err, d.log)
	}
	d.stop(t)

	outcomes := map[string]int{}
	phases := map[string]int{}
	for trial := range restoreTrials {
		tg.Touch(t)
		current := tg.Counter(t)
		// With the counter far above its value at the snapshot, a rollback
		// shows however long the checks after it take.
		for current < before+rollbackMargin {
			time.Sleep(10 * time.Millisecond)
			current = tg.Counter(t)
		}
		// A restore of 512 MiB keeps the target frozen for most of a
		// second, its page writes coming last, so kills counted from the
		// freeze spread over a whole second.
		fromFreeze := trial%2 == 1
		delay := crashDelay(rng)
		if fromFreeze {
			delay = time.Duration(rng.Int64N(int64(time.Second)))
		}
		d := startDaemon(t, bin, storeDir)

		w := watchPhases(tg.PID)
		done := make(chan error, 1)
		go func() { done <- os.WriteFile(pidDir(d.dir, tg.PID, "restore"), []byte("base\n"), 0o600) }()
		if fromFreeze {
			waitFor(done, func() bool { frozen, _ := w.state(); return frozen })
		}
		time.Sleep(delay)
		d.kill(t)
		workers := waitOrphanedWorkers(t)
		frozen, _ := w.state()
		w.end()

		phase := restorePhase(d.log.String(), frozen)
		phases[phase]++
		checkTargetAfterCrash(t, tg, trial)
		outcome := restoreOutcome(t, tg, before, current)
		outcomes[outcome]++
		t.Logf("trial %d: kill %v after the %s, hit %s, %d worker(s) went on: %s", trial, delay.Round(time.Millisecond),
			map[bool]string{false: "write", true: "freeze"}[fromFreeze], phase, workers, outcome)

		if err := <-done; err != nil && !connectionLost(err) {
			t.Errorf("trial %d: restore write failed with %v, want ECONNABORTED, ENOTCONN or EIO", trial, err)
		}
		if err := unix.Unmount(d.dir, unix.MNT_DETACH); err != nil {
			t.Errorf("trial %d: detach the dead mount: %v", trial, err)
		}
	}
	t.Logf("%d trials: %s; outcomes: %s", restoreTrials,
		fmtPhases(phases, []string{"before freeze", "frozen", "restored"}),
		fmtPhases(outcomes, []string{"as before", "rolled back", "half restored"}))
}

// becomeSubreaper makes the test process the reaper of its orphaned
// descendants until the test ends, so that a restore worker whose daemon
// died becomes its child, which the test may wait for.
func becomeSubreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become child subreaper: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
			t.Errorf("stop being child subreaper: %v", err)
		}
	})
}

// waitOrphanedWorkers waits for the restore workers that a dead daemon
// left, which the subreaper test process has inherited, and returns how
// many there were. A worker that runs longer than pollLimit fails the
// test.
func waitOrphanedWorkers(t *testing.T) int {
	t.Helper()
	children, err := testproc.Children(os.Getpid())
	if err != nil {
		t.Fatalf("list children: %v", err)
	}
	var workers []int
	for _, pid := range children {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.HasPrefix(string(cmdline), "ckptfs-restore-worker\x00") {
			workers = append(workers, pid)
		}
	}

	for _, pid := range workers {
		done := make(chan error, 1)
		go func() {
			var status unix.WaitStatus
			_, err := unix.Wait4(pid, &status, 0, nil)
			if err == nil && !status.Exited() {
				err = fmt.Errorf("worker ended with status %v", status)
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("restore worker %d: %v", pid, err)
			}
		case <-time.After(pollLimit):
			t.Fatalf("restore worker %d still runs %v after its daemon died", pid, pollLimit)
		}
	}
	return len(workers)
}

// restorePhase names the phase of a restore that a daemon kill hit.
func restorePhase(log string, frozen bool) string {
	switch {
	case strings.Contains(log, `"msg":"restored"`):
		return "restored"
	case frozen:
		return "frozen"
	default:
		return "before freeze"
	}
}

// restoreOutcome classifies the target after a restore was cut short:
// "as before" (memory and counter as they were), "rolled back" (both at the
// snapshot), or "half restored" (an error). before is the
// counter just before the snapshot was taken and current the counter
// before the restore began.
func restoreOutcome(t *testing.T, tg *testproc.MemTarget, before, current int) string {
	t.Helper()
	counter := tg.Counter(t)
	seeds := tg.Seeds(t)
	_, atSnapshot := seeds[baseSeed]

	switch {
	case len(seeds) == 1 && !atSnapshot && counter >= current:
		return "as before"
	case len(seeds) == 1 && atSnapshot && counter >= before && counter < current:
		return "rolled back"
	}

	// The worker completes or undoes the restore whatever happens to the
	// daemon, so a mix of both states is a failure.
	t.Errorf("target half restored: counter %d (%d at the snapshot, %d before the restore), memory seeds %v",
		counter, before, current, seeds)
	return "half restored"
}
