package engine

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// countAfter reads counter lines until one is above n and returns it.
func countAfter(t *testing.T, p *testproc.Proc, n uint64) uint64 {
	t.Helper()
	for {
		v, err := strconv.ParseUint(p.Expect("count "), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if v > n {
			return v
		}
	}
}

func TestCaptureLeavesRunning(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	countAfter(t, p, 0)

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if img.JobStopped {
		t.Errorf("a running process was recorded as job-stopped")
	}
	if img.Frozen <= 0 {
		t.Errorf("frozen = %v", img.Frozen)
	}

	p.Drain()
	last := countAfter(t, p, 0)
	countAfter(t, p, last)
	if st := p.State(); st != "R" && st != "S" {
		t.Errorf("state after capture = %q, want running", st)
	}
}

func TestCaptureKeepsJobStop(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	countAfter(t, p, 0)
	if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "T")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if !img.JobStopped {
		t.Errorf("a stopped process was not recorded as job-stopped")
	}
	// Give a wrongly resumed process time to show it.
	time.Sleep(50 * time.Millisecond)
	if st := p.State(); st != "T" {
		t.Errorf("state after capture = %q, want T", st)
	}

	if err := unix.Kill(p.PID, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	p.Drain()
	countAfter(t, p, 0)
}

// waitState polls until the target's state letter is want.
func waitState(t *testing.T, p *testproc.Proc, want string) {
	t.Helper()
	for range 1000 {
		if p.State() == want {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("pid %d state %q, want %q", p.PID, p.State(), want)
}

func TestBeginRejectsSelf(t *testing.T) {
	_, err := Begin(unix.Getpid(), nil)
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Begin(self) = %v, want an EPERM RejectError", err)
	}
}

func TestBeginRejectsZombie(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_zombie"))
	zombie, err := strconv.Atoi(p.Expect("zombie "))
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if st, err := ReadStatus(zombie); err == nil && st.State == 'Z' {
			break
		}
		time.Sleep(time.Millisecond)
	}

	_, err = Capture(zombie, nil)
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), "zombie") {
		t.Fatalf("Capture(zombie) = %v, want an ESRCH RejectError naming a zombie", err)
	}
}

func TestBeginRejectsGone(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := Capture(cmd.Process.Pid, nil); !errors.Is(err, unix.ESRCH) {
		t.Fatalf("Capture(exited pid) = %v, want ESRCH", err)
	}
}

func TestBeginRejectsTraced(t *testing.T) {
	p := startBlocked(t, "cap_marker")
	p.Expect("ready")

	// Seize the target from a locked goroutine, which stays its tracer
	// until the test releases it.
	tracer := make(chan int)
	release := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := ptraceSeize(p.PID); err != nil {
			t.Errorf("seize from test: %v", err)
			close(tracer)
			return
		}
		tracer <- unix.Gettid()
		<-release
		if err := ptraceInterrupt(p.PID); err != nil {
			t.Errorf("interrupt from test: %v", err)
		}
		if _, err := waitTid(p.PID); err != nil {
			t.Errorf("wait from test: %v", err)
		}
		if err := ptraceDetach(p.PID, 0); err != nil {
			t.Errorf("detach from test: %v", err)
		}
	}()
	tid, ok := <-tracer
	if !ok {
		t.FailNow()
	}
	t.Cleanup(func() { close(release); <-finished })

	_, err := Capture(p.PID, nil)
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Capture(traced) = %v, want an EPERM RejectError", err)
	}
	// The tracer is thread tid of this test process; the error names the
	// process.
	if !strings.Contains(err.Error(), "traced by pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "engine.test") {
		t.Errorf("error %q does not name the process %d (engine.test) of tracer thread %d", err, os.Getpid(), tid)
	}
}

func TestFreezeAbortsOnExec(t *testing.T) {
	p, stdin := startWithStdin(t, "cap_exec")
	p.Expect("ready")

	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(op.Close)

	// Let the frozen target read its byte and call execve.
	err = op.do(func() error {
		if err := op.waitStops(); err != nil {
			return err
		}
		if _, err := stdin.Write([]byte{1}); err != nil {
			return err
		}
		th := op.threads[0]
		if err := ptraceCont(th.tid, 0); err != nil {
			return err
		}
		th.stopped = false
		return op.waitStops()
	})
	if !errors.Is(err, errExec) {
		t.Fatalf("freeze across execve = %v, want errExec", err)
	}

	op.Close()
	for range 1000 {
		if comm := commOf(p.PID); comm == "sleep" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if comm := commOf(p.PID); comm != "sleep" {
		t.Errorf("comm after detach = %q, want sleep", comm)
	}
	if st, err := ReadStatus(p.PID); err != nil || st.TracerPid != 0 {
		t.Errorf("status after Close = %+v, %v, want untraced", st, err)
	}
}
