package engine

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// beginStopped freezes a fresh cap_counter and waits for its stops.
func beginStopped(t testing.TB) (*Op, *testproc.Proc) {
	t.Helper()
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	p.Expect("count ")

	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(op.Close)
	if err := op.do(op.waitStops); err != nil {
		t.Fatalf("wait for stops: %v", err)
	}
	return op, p
}

func TestInjectedSyscall(t *testing.T) {
	op, p := beginStopped(t)

	err := op.do(func() error {
		before, err := op.threads[0].getRegs()
		if err != nil {
			return err
		}
		got, err := op.syscall(op.threads[0], unix.SYS_GETPID)
		if err != nil {
			return err
		}
		if int(got) != p.PID {
			t.Errorf("injected getpid = %d, want %d", got, p.PID)
		}

		_, err = op.syscall(op.threads[0], unix.SYS_CLOSE, ^uintptr(0))
		if !errors.Is(err, unix.EBADF) {
			t.Errorf("injected close(-1) = %v, want EBADF", err)
		}

		after, err := op.threads[0].getRegs()
		if err != nil {
			return err
		}
		if after != before {
			t.Errorf("registers changed by injection:\n%+v\nwant\n%+v", after, before)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestScratchReadWrite(t *testing.T) {
	op, _ := beginStopped(t)

	err := op.do(func() error {
		addr, err := op.scratch()
		if err != nil {
			return err
		}
		if err := op.writeMem(addr, []byte("scratch")); err != nil {
			return err
		}
		got := make([]byte, 7)
		if err := op.readMem(addr, got); err != nil {
			return err
		}
		if string(got) != "scratch" {
			t.Errorf("scratch reads back %q", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSigmaskRoundTrip(t *testing.T) {
	op, _ := beginStopped(t)

	err := op.do(func() error {
		th := op.threads[0]
		old, err := th.getSigmask()
		if err != nil {
			return err
		}
		want := old | 1<<(unix.SIGUSR1-1)
		if err := th.setSigmask(want); err != nil {
			return err
		}
		got, err := th.getSigmask()
		if err != nil {
			return err
		}
		if got != want {
			t.Errorf("mask = %#x, want %#x", got, want)
		}
		return th.setSigmask(old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func BenchmarkInjectedGetpid(b *testing.B) {
	op, _ := beginStopped(b)
	err := op.do(func() error {
		for b.Loop() {
			if _, err := op.syscall(op.threads[0], unix.SYS_GETPID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

func BenchmarkCaptureIdle(b *testing.B) {
	p := testproc.Start(b, testproc.Build(b, "cap_counter"))
	p.Expect("count ")
	var frozen int64
	for b.Loop() {
		img, err := Capture(p.PID, nil)
		if err != nil {
			b.Fatal(err)
		}
		frozen += int64(img.Frozen)
	}
	b.ReportMetric(float64(frozen)/float64(b.N)/1e3, "frozen-us/op")
}
