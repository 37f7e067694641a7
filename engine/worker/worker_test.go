package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/testproc"
	"github.com/ckptfs/ckptfs/snapshot"
)

// envParent makes the test binary start the restore worker for the job in
// its value (JSON), print "seized" once the worker holds the process, and
// wait to be killed: the parent whose death the worker must survive.
const envParent = "CKPTFS_TEST_WORKER_PARENT"

// firstSeed is the pattern seed safe_mem writes first; each touch adds
// 0x100.
const firstSeed = 0x5afe0001

func TestMain(m *testing.M) {
	Main()
	if spec := os.Getenv(envParent); spec != "" {
		runParent(spec)
	}
	os.Exit(m.Run())
}

// runParent starts the restore job in spec and waits forever.
func runParent(spec string) {
	var job Job
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Fprintf(os.Stderr, "decode job: %v\n", err)
		os.Exit(2)
	}
	if _, err := Start(job, nil); err != nil {
		fmt.Fprintf(os.Stderr, "start: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("seized")
	select {}
}

// checkUntraced fails the test unless pid runs, not stopped and not traced.
func checkUntraced(t *testing.T, pid int) {
	t.Helper()
	st, err := engine.ReadStatus(pid)
	if err != nil {
		t.Fatalf("read status of pid %d: %v", pid, err)
	}
	if st.TracerPid != 0 {
		t.Errorf("pid %d still traced by %d", pid, st.TracerPid)
	}
	if st.State == 'T' || st.State == 't' {
		t.Errorf("pid %d left in state %c", pid, st.State)
	}
}

// captured is a snapshot "base" of a memTarget saved in a new store.
type captured struct {
	store *snapshot.Store
	info  *snapshot.Info
	img   *snapshot.Image
}

func captureBase(t *testing.T, mt *testproc.MemTarget) captured {
	t.Helper()
	store, err := snapshot.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := engine.Capture(mt.PID, nil)
	if err != nil {
		t.Fatalf("capture pid %d: %v", mt.PID, err)
	}
	info, err := store.Save(img, "base")
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	return captured{store: store, info: info, img: img}
}

func (c captured) job(parts ...string) Job {
	return Job{
		Process:  c.img.Process,
		Store:    c.store.URL(),
		Snapshot: c.info.Name,
		Captured: c.info.Captured,
		Parts:    parts,
	}
}

func TestRestoreRollsBackMemoryAndCounter(t *testing.T) {
	mt := testproc.StartMem(t, 32, false)
	atCapture := mt.Counter(t)
	c := captureBase(t, mt)
	mt.Touch(t)
	time.Sleep(50 * time.Millisecond) // the counter goes up about once a millisecond
	before := mt.Counter(t)

	r, err := Start(c.job(), nil)
	if err != nil {
		t.Fatalf("start restore: %v", err)
	}
	report, err := r.Wait()
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if report == nil {
		t.Fatal("restore returned no report")
	}
	if r.Read() == 0 {
		t.Error("worker reported no saved memory read")
	}

	checkUntraced(t, mt.PID)
	if seeds := mt.Seeds(t); len(seeds) != 1 || seeds[firstSeed] == 0 {
		t.Errorf("memory seeds after restore %v, want only %#x", seeds, firstSeed)
	}
	if after := mt.Counter(t); after >= before || after < atCapture {
		t.Errorf("counter %d after restore, want in [%d, %d)", after, atCapture, before)
	}
}

func TestRestoreErrorsKeepErrno(t *testing.T) {
	mt := testproc.StartMem(t, 4, false)
	c := captureBase(t, mt)

	unknown := c.job()
	unknown.Snapshot = "missing"
	replaced := c.job()
	replaced.Captured = c.info.Captured.Add(-time.Second)
	gone := c.job()
	gone.Process.StartTime++
	tests := []struct {
		name  string
		job   Job
		errno unix.Errno
	}{
		{"unknown snapshot", unknown, unix.ENOENT},
		{"replaced snapshot", replaced, unix.ENOENT},
		{"other process", gone, unix.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(tc.job, nil)
			if !errors.Is(err, tc.errno) {
				t.Errorf("Start: %v, want %v", err, tc.errno)
			}
			checkUntraced(t, mt.PID)
		})
	}
}

func TestRestoreRejectionIsRejectError(t *testing.T) {
	mt := testproc.StartMem(t, 4, false)
	c := captureBase(t, mt)

	r, err := Start(c.job("0-1000"), nil)
	if err != nil {
		t.Fatalf("start restore: %v", err)
	}
	_, err = r.Wait()
	var reject *engine.RejectError
	if !errors.As(err, &reject) || reject.Errno != unix.EINVAL {
		t.Fatalf("restore of part 0-1000: %v, want a RejectError with EINVAL", err)
	}
	if !strings.Contains(err.Error(), "0-1000") {
		t.Errorf("error %q does not name the part", err)
	}
	checkUntraced(t, mt.PID)
}

func TestRestoreDaemonItselfRejected(t *testing.T) {
	id, err := engine.Identify(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(Job{Process: id, Store: t.TempDir(), Snapshot: "base"}, nil)
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("restore of the calling process: %v, want EPERM", err)
	}
}

func TestRestoreSurvivesParentKill(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become child subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

	mt := testproc.StartMem(t, 128, false)
	c := captureBase(t, mt)
	mt.Touch(t)
	before := mt.Counter(t)

	spec, err := json.Marshal(c.job())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), envParent+"="+string(spec))
	parent := testproc.StartCmd(t, cmd)
	parent.Expect("seized")
	if err := parent.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	parent.Cmd.Wait()

	// The worker, orphaned, is now a child of this process.
	orphans, err := testproc.Children(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var worker int
	for _, pid := range orphans {
		if pid != mt.PID {
			worker = pid
		}
	}
	if worker == 0 {
		t.Fatalf("no orphaned worker among children %v; the restore ended before the kill", orphans)
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", worker)); err != nil || string(comm) != workerComm+"\n" {
		t.Errorf("worker %d is called %q (%v), want %q", worker, comm, err, workerComm)
	}
	var status unix.WaitStatus
	if _, err := unix.Wait4(worker, &status, 0, nil); err != nil || !status.Exited() || status.ExitStatus() != 0 {
		t.Fatalf("worker %d: wait %v, status %v", worker, err, status)
	}

	checkUntraced(t, mt.PID)
	if seeds := mt.Seeds(t); len(seeds) != 1 || seeds[firstSeed] == 0 {
		t.Errorf("memory seeds after the restore whose parent died %v, want only %#x", seeds, firstSeed)
	}
	if after := mt.Counter(t); after >= before {
		t.Errorf("counter %d after restore, want below %d", after, before)
	}
}

func TestParseRecordKeepsAttributes(t *testing.T) {
	line := []byte(`{"time":"2026-12-05T01:00:00Z","level":"WARN","msg":"restore failed","pid":42,"err":"no such process","size":1099511627776}`)
	level, msg, attrs, err := parseRecord(line)
	if err != nil {
		t.Fatal(err)
	}
	if level != slog.LevelWarn {
		t.Errorf("level %v, want WARN", level)
	}
	if msg != "restore failed" {
		t.Errorf("message %q", msg)
	}
	var got []string
	for _, a := range attrs {
		got = append(got, a.String())
	}
	if want := "pid=42 err=no such process size=1099511627776"; strings.Join(got, " ") != want {
		t.Errorf("attributes %q, want %q", strings.Join(got, " "), want)
	}
}

func TestParseRecordRejectsGarbage(t *testing.T) {
	for _, line := range []string{"", "[1]", `{"level":"LOUD"}`, `{"msg":`} {
		if _, _, _, err := parseRecord([]byte(line)); err == nil {
			t.Errorf("parseRecord(%q) succeeded", line)
		}
	}
}

func TestErrorRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		errnos  []unix.Errno
		corrupt bool
	}{
		{"wrapped errno", fmt.Errorf("freeze pid 7: %w", unix.ESRCH), []unix.Errno{unix.ESRCH}, false},
		{"joined", errors.Join(fmt.Errorf("a: %w", unix.ENOSPC), unix.EIO), []unix.Errno{unix.ENOSPC, unix.EIO}, false},
		{"corrupt", fmt.Errorf("load: %w", snapshot.ErrCorrupt), []unix.Errno{unix.EIO}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w wireError
			raw, err := json.Marshal(encodeError(tc.err))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &w); err != nil {
				t.Fatal(err)
			}
			got := w.decode()
			if got.Error() != tc.err.Error() {
				t.Errorf("message %q, want %q", got, tc.err)
			}
			for _, errno := range tc.errnos {
				if !errors.Is(got, errno) {
					t.Errorf("decoded error does not match %v", errno)
				}
			}
			if errors.Is(got, snapshot.ErrCorrupt) != tc.corrupt {
				t.Errorf("matches ErrCorrupt: %v, want %v", errors.Is(got, snapshot.ErrCorrupt), tc.corrupt)
			}
		})
	}

	reject := encodeError(fmt.Errorf("restore pid 3: %w", &engine.RejectError{Errno: unix.EOPNOTSUPP, Reason: "shadow stack"}))
	var re *engine.RejectError
	if got := reject.decode(); !errors.As(got, &re) || re.Errno != unix.EOPNOTSUPP {
		t.Errorf("rejection decoded as %#v, want a RejectError with EOPNOTSUPP", got)
	}
}

// TestMainIgnoresStrayVariable runs this test binary with the worker's
// environment variable but not as a worker: it must run its tests.
func TestMainIgnoresStrayVariable(t *testing.T) {
	cmd := exec.Command("/proc/self/exe", "-test.run=^TestParseRecordRejectsGarbage$", "-test.v")
	cmd.Env = append(os.Environ(), envWorker+"="+workerRestore)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestParseRecordRejectsGarbage") {
		t.Errorf("test binary with %s set: %v\n%s", envWorker, err, out)
	}
}

func TestRunnerKeepsOneWorker(t *testing.T) {
	mt := testproc.StartMem(t, 8, false)
	c := captureBase(t, mt)
	rn := NewRunner(nil)
	defer rn.Close()

	var (
		workers []int
		last    *Restore
	)
	for range 2 {
		mt.Touch(t)
		r, err := rn.Start(c.job())
		if err != nil {
			t.Fatalf("start restore: %v", err)
		}
		if _, err := r.Wait(); err != nil {
			t.Fatalf("restore: %v", err)
		}
		workers, last = append(workers, r.srv.cmd.Process.Pid), r
		if seeds := mt.Seeds(t); len(seeds) != 1 || seeds[firstSeed] == 0 {
			t.Errorf("memory seeds after restore %v, want only %#x", seeds, firstSeed)
		}
	}
	if workers[0] != workers[1] {
		t.Errorf("restores ran in workers %v, want one worker for both", workers)
	}

	// A worker that died is replaced at the next restore.
	if err := syscall.Kill(workers[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-last.srv.done
	mt.Touch(t)
	r, err := rn.Start(c.job())
	if err != nil {
		t.Fatalf("start restore after the worker died: %v", err)
	}
	if _, err := r.Wait(); err != nil {
		t.Fatalf("restore after the worker died: %v", err)
	}
	if r.srv.cmd.Process.Pid == workers[0] {
		t.Errorf("restore ran in the dead worker %d", workers[0])
	}
	checkUntraced(t, mt.PID)
}

func TestRunnerRestoresConcurrently(t *testing.T) {
	rn := NewRunner(nil)
	defer rn.Close()
	var targets []*testproc.MemTarget
	var snaps []captured
	for range 3 {
		mt := testproc.StartMem(t, 16, false)
		targets = append(targets, mt)
		snaps = append(snaps, captureBase(t, mt))
		mt.Touch(t)
	}

	errs := make(chan error, len(targets))
	for i := range targets {
		go func() {
			r, err := rn.Start(snaps[i].job())
			if err == nil {
				_, err = r.Wait()
			}
			errs <- err
		}()
	}
	for range targets {
		if err := <-errs; err != nil {
			t.Errorf("concurrent restore: %v", err)
		}
	}
	for _, mt := range targets {
		checkUntraced(t, mt.PID)
		if seeds := mt.Seeds(t); len(seeds) != 1 || seeds[firstSeed] == 0 {
			t.Errorf("pid %d: memory seeds after restore %v, want only %#x", mt.PID, seeds, firstSeed)
		}
	}
}
