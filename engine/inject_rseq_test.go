package engine

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// TestInjectionAbortsRseqSection freezes a thread spinning inside an rseq
// critical section and injects a call: the thread must leave through the
// section's abort handler, as after any preemption, instead of spinning on
// in a section the kernel no longer tracks.
func TestInjectionAbortsRseqSection(t *testing.T) {
	const trials = 5
	p := testproc.Start(t, testproc.Build(t, "inj_rseq"))
	var start, end, counter uint64
	if _, err := fmt.Sscanf(p.Expect("cs "), "%x %x %x", &start, &end, &counter); err != nil {
		t.Fatalf("parse section range: %v", err)
	}

	for trial := range trials {
		before := injectInSection(t, p.PID, start, end, counter)

		// Lines printed before the freeze may still be in the pipe.
		for {
			var n uint64
			if _, err := fmt.Sscan(p.Expect("abort "), &n); err != nil {
				t.Fatalf("trial %d: parse abort count: %v", trial, err)
			}
			if n > before {
				break
			}
		}
	}
}

// injectInSection freezes pid until its thread is stopped inside the
// section [start, end), injects getpid there and thaws it. It returns the
// abort count read from counter while the thread was frozen.
func injectInSection(t *testing.T, pid int, start, end, counter uint64) uint64 {
	t.Helper()
	for range 1000 {
		op, err := Begin(pid, testLogger(t))
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		var aborts [8]byte
		inside := false
		err = op.do(func() error {
			if err := op.waitStops(); err != nil {
				return err
			}
			regs, err := op.threads[0].getRegs()
			if err != nil {
				return err
			}
			if regs.Rip < start || regs.Rip >= end {
				return nil
			}
			inside = true
			if err := op.readMem(counter, aborts[:]); err != nil {
				return err
			}
			_, err = op.syscall(op.threads[0], unix.SYS_GETPID)
			return err
		})
		op.Close()
		if err != nil {
			t.Fatal(err)
		}
		if inside {
			return binary.LittleEndian.Uint64(aborts[:])
		}
	}
	t.Fatalf("pid %d never stopped inside its rseq section %#x-%#x", pid, start, end)
	return 0
}
