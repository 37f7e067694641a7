package engine

import (
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

func TestCaptureSignalState(t *testing.T) {
	p := startBlocked(t, "cap_signal")
	handler := parseAddr(t, p.Expect("handler "))
	altstack := parseAddr(t, p.Expect("altstack "))
	p.Expect("ready")

	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}

	usr1 := img.Signals.Actions[unix.SIGUSR1-1]
	if usr1.Handler != handler {
		t.Errorf("SIGUSR1 handler = %#x, want %#x", usr1.Handler, handler)
	}
	const saOnstack, saRestorer = 0x08000000, 0x04000000
	if usr1.Flags&saOnstack == 0 || usr1.Flags&saRestorer == 0 || usr1.Restorer == 0 {
		t.Errorf("SIGUSR1 flags %#x restorer %#x, want SA_ONSTACK and glibc's restorer", usr1.Flags, usr1.Restorer)
	}
	if usr1.Mask != 1<<(unix.SIGUSR2-1) {
		t.Errorf("SIGUSR1 mask = %#x, want SIGUSR2 only", usr1.Mask)
	}
	if h := img.Signals.Actions[unix.SIGUSR2-1].Handler; h != sigIgn {
		t.Errorf("SIGUSR2 handler = %#x, want SIG_IGN", h)
	}
	if h := img.Signals.Actions[unix.SIGTERM-1].Handler; h != 0 {
		t.Errorf("SIGTERM handler = %#x, want SIG_DFL", h)
	}

	alt := img.Threads[0].AltStack
	if alt.SP != altstack || alt.Size != 65536 || alt.Flags != 0 {
		t.Errorf("altstack = %+v, want sp %#x size 65536 flags 0", alt, altstack)
	}
}

func TestCaptureLosesNoSignal(t *testing.T) {
	p := startBlocked(t, "cap_signal")
	p.Expect("ready")

	// A signal sent just before the freeze may reach the thread before
	// its interrupt; either way the handler must run exactly once.
	for i := 1; i <= 20; i++ {
		waitInRead(t, p)
		if err := unix.Kill(p.PID, unix.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		if _, err := Capture(p.PID, testLogger(t)); err != nil {
			t.Fatalf("Capture %d: %v", i, err)
		}
		if got := p.Expect("usr1 "); got != strconv.Itoa(i) {
			t.Fatalf("after signal %d the target counted %s", i, got)
		}
	}
}

func TestCaptureWhileSpawningThreads(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_spawn"))
	p.Expect("spawned ")

	for i := range 10 {
		img, err := Capture(p.PID, nil)
		if err != nil {
			t.Fatalf("Capture %d: %v", i, err)
		}
		if img.Threads[0].TID != p.PID {
			t.Fatalf("capture %d: first thread %d, want main %d", i, img.Threads[0].TID, p.PID)
		}
	}
	p.Drain()
	p.Expect("spawned ")
	p.Expect("spawned ")
}

func TestFreezeDeliversEarlySignal(t *testing.T) {
	p := startBlocked(t, "cap_signal")
	p.Expect("ready")
	waitInRead(t, p)

	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(op.Close)

	// Stop the thread, queue SIGUSR1 and resume it: it runs straight
	// into a signal-delivery stop, which waitStops must pass on.
	err = op.do(func() error {
		if err := op.waitStops(); err != nil {
			return err
		}
		th := op.threads[0]
		if err := unix.Tgkill(p.PID, th.tid, unix.SIGUSR1); err != nil {
			return err
		}
		if err := ptraceCont(th.tid, 0); err != nil {
			return err
		}
		th.stopped = false
		return op.waitStops()
	})
	if err != nil {
		t.Fatalf("freeze with a signal: %v", err)
	}

	img, err := op.Capture()
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if got := p.Expect("usr1 "); got != "1" {
		t.Errorf("the target counted %s signals, want 1", got)
	}
	if img.Threads[0].Regs.Rip == 0 {
		t.Errorf("no registers captured")
	}
}
