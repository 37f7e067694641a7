package engine

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// xstateLenOfSelf returns the NT_X86_XSTATE length the kernel reports for
// a freshly seized cap_counter, read with a buffer of exactly one page
// more than any x86 CPU needs.
func xstateLenOfSelf(t *testing.T) int {
	t.Helper()
	p := testproc.Start(t, testproc.Build(t, "cap_counter"))
	p.Expect("count ")

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := ptraceSeize(p.PID); err != nil {
		t.Fatalf("seize: %v", err)
	}
	if err := ptraceInterrupt(p.PID); err != nil {
		t.Fatalf("interrupt: %v", err)
	}
	if _, err := waitTid(p.PID); err != nil {
		t.Fatalf("wait: %v", err)
	}
	defer func() {
		if err := ptraceDetach(p.PID, 0); err != nil {
			t.Errorf("detach: %v", err)
		}
	}()

	buf := make([]byte, 64<<10)
	n, err := ptraceGetRegset(p.PID, unix.NT_X86_XSTATE, buf)
	if err != nil {
		t.Fatalf("read xstate: %v", err)
	}
	return n
}
