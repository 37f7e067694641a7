package engine

import (
	"errors"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// TestRestoreCapturedInLoader captures /bin/sleep right after exec, while
// the dynamic loader still runs, and restores it once the process has
// mapped libc and registered its rseq area: restore must end that
// registration before it unmaps the area. Restore may reject the image
// before changing anything (libc has mapped a shared file over the
// loader's private mapping), but the process must survive every trial.
func TestRestoreCapturedInLoader(t *testing.T) {
	const trials = 20
	restored, inLoader := 0, 0
	for trial := range trials {
		p := testproc.Start(t, "/bin/sleep", "1000")
		// os/exec returns once the exec has closed the descriptors, which can
		// be before the exec ends: the capture then sees the exec and stops.
		img, err := Capture(p.PID, testLogger(t))
		for errors.Is(err, errExec) {
			img, err = Capture(p.PID, testLogger(t))
		}
		if err != nil {
			t.Fatalf("trial %d: capture: %v", trial, err)
		}
		if img.Threads[0].Rseq.Addr == 0 {
			inLoader++
		}
		_, err = Restore(p.PID, img, imageMemory{img}, nil, testLogger(t))
		var reject *RejectError
		switch {
		case err == nil:
			restored++
		case !errors.As(err, &reject):
			t.Fatalf("trial %d: restore: %v", trial, err)
		}
		checkRunning(t, p)

		// A restored process that cannot run faults at its first return to
		// user space; a second capture catches it after it ran on.
		if _, err := Capture(p.PID, testLogger(t)); err != nil {
			t.Fatalf("trial %d: capture after restore: %v", trial, err)
		}
		checkRunning(t, p)
		p.Kill()
	}
	if restored == 0 || inLoader == 0 {
		t.Fatalf("of %d trials, %d captured before rseq registration and %d restored; want some of each", trials, inLoader, restored)
	}
	t.Logf("%d of %d trials captured before rseq registration; %d restored, the rest rejected before any change", inLoader, trials, restored)
}
