package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

func TestBeginBusyWhileAnotherCkptfsTraces(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	p.Line()
	startHelperTracer(t, p.PID, "injecting")

	op, err := Begin(p.PID, testLogger(t))
	if err == nil {
		op.Close()
		t.Fatal("Begin succeeded on a process another ckptfs traces")
	}
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "another ckptfs") {
		t.Errorf("Begin: %v, want an EBUSY RejectError naming another ckptfs", err)
	}
}

func TestExitedDuringGivesESRCH(t *testing.T) {
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	p.Line()
	cause := fmt.Errorf("read memory: %w", unix.EIO)
	if err := exitedDuring(p.PID, cause); !errors.Is(err, unix.EIO) || errors.Is(err, unix.ESRCH) {
		t.Errorf("exitedDuring of a live process = %v, want the EIO kept", err)
	}

	p.Kill()
	err := exitedDuring(p.PID, cause)
	if !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), "read memory") {
		t.Errorf("exitedDuring of an exited process = %v, want ESRCH keeping the cause's text", err)
	}
}
