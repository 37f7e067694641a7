package engine

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// queuedMask is the pending mask rst_queues shows after "p": SIGUSR1,
// SIGUSR2 and SIGRTMIN+1 (glibc's SIGRTMIN is 34).
const queuedMask = "400000a00"

// gotLines reads the "got SIGNO VALUE" lines rst_queues prints until
// "unblocked".
func gotLines(t *testing.T, p *commanded) []string {
	t.Helper()
	if _, err := p.in.Write([]byte("u\n")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		line := p.Line()
		if line == "unblocked" {
			return got
		}
		got = append(got, strings.TrimPrefix(line, "got "))
	}
}

func TestRestorePendingSignals(t *testing.T) {
	p := startCommanded(t, "rst_queues")
	p.Expect("ready")
	p.send(t, "p", "queued")
	img := captureImage(t, p.PID)

	if got := p.send(t, "d", "drained "); got != "4" {
		t.Fatalf("drained %s signals after the capture, want 4", got)
	}
	restoreImage(t, p.Proc, img)

	if got := p.send(t, "P", "pending "); got != queuedMask {
		t.Errorf("pending mask after restore %s, want %s", got, queuedMask)
	}
	// Handlers run in the order the kernel nests their frames; the two
	// values of SIGRTMIN+1 keep their queue order.
	got := gotLines(t, p)
	sorted := slices.Sorted(slices.Values(got))
	if want := []string{"10 0", "12 0", "35 42", "35 43"}; !slices.Equal(sorted, want) {
		t.Errorf("signals delivered after restore %q, want %q in any order", got, want)
	}
	if first, second := slices.Index(got, "35 42"), slices.Index(got, "35 43"); first > second {
		t.Errorf("signals delivered after restore %q: value 43 before 42", got)
	}
}

func TestRestoreClearsSignalsQueuedSince(t *testing.T) {
	p := startCommanded(t, "rst_queues")
	p.Expect("ready")
	img := captureImage(t, p.PID)

	p.send(t, "p", "queued")
	restoreImage(t, p.Proc, img)

	if got := p.send(t, "P", "pending "); got != "0" {
		t.Errorf("pending mask after restore %s, want 0", got)
	}
	if got := gotLines(t, p); len(got) != 0 {
		t.Errorf("signals delivered after restore %q, want none", got)
	}
}

func TestRestorePartWithoutSignalsKeepsPending(t *testing.T) {
	p := startCommanded(t, "rst_queues")
	p.Expect("ready")
	img := captureImage(t, p.PID)

	p.send(t, "p", "queued")
	if _, err := Restore(p.PID, img, imageMemory{img}, []string{"memory"}, testLogger(t)); err != nil {
		t.Fatalf("restore memory of pid %d: %v", p.PID, err)
	}
	if got := p.send(t, "P", "pending "); got != queuedMask {
		t.Errorf("pending mask after a memory-only restore %s, want %s", got, queuedMask)
	}
}

// millis parses the numbers of a reply line.
func millis(t *testing.T, line string) []int64 {
	t.Helper()
	var out []int64
	for _, f := range strings.Fields(line) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("parse %q in %q: %v", f, line, err)
		}
		out = append(out, n)
	}
	return out
}

func TestRestoreIntervalTimer(t *testing.T) {
	p := startCommanded(t, "rst_queues")
	p.Expect("ready")
	p.send(t, "i", "armed")
	img := captureImage(t, p.PID)
	if real := img.Signals.ITimers[0]; real.Interval.Seconds() != 7 || real.Value.Seconds() > 50 || real.Value.Seconds() < 45 {
		t.Errorf("captured ITIMER_REAL %+v, want about 50 s left with a 7 s period", real)
	}

	p.send(t, "k", "disarmed")
	restoreImage(t, p.Proc, img)

	v := millis(t, p.send(t, "I", "itimer "))
	if v[0] > 50000 || v[0] < 45000 || v[1] != 7000 {
		t.Errorf("ITIMER_REAL after restore: %d ms left, period %d ms; want about 50000 and 7000", v[0], v[1])
	}
}

func TestRestorePosixTimers(t *testing.T) {
	p := startCommanded(t, "rst_queues")
	p.Expect("ready")
	id := p.send(t, "t", "timer ")
	img := captureImage(t, p.PID)
	if len(img.Signals.Timers) != 1 {
		t.Fatalf("captured timers %+v, want 1", img.Signals.Timers)
	}
	if tm := img.Signals.Timers[0]; strconv.Itoa(int(tm.ID)) != id || tm.Signal != 36 || tm.SigValue != 0x77 || tm.Clock != 1 {
		t.Errorf("captured timer %+v, want ID %s, signal 36, value 0x77, CLOCK_MONOTONIC", tm, id)
	}

	other := p.send(t, "c", "timer ")
	p.send(t, "x", "deleted ")
	restoreImage(t, p.Proc, img)

	timers, err := os.ReadFile(fmt.Sprintf("/proc/%d/timers", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, line := range strings.Split(string(timers), "\n") {
		if rest, ok := strings.CutPrefix(line, "ID: "); ok {
			ids = append(ids, rest)
		}
	}
	if !slices.Equal(ids, []string{id}) {
		t.Errorf("timers after restore:\n%s\nwant only timer %s, not %s", timers, id, other)
	}
	if !strings.Contains(string(timers), "signal: 36/0000000000000077\n") {
		t.Errorf("timers after restore:\n%s\nwant signal 36 with value 0x77", timers)
	}
	v := millis(t, p.send(t, "g", "posix "))
	if strconv.Itoa(int(v[0])) != id || v[1] > 100000 || v[1] < 95000 || v[2] != 3000 {
		t.Errorf("timer after restore: %v, want ID %s with about 100000 ms left and a 3000 ms period", v, id)
	}
}
