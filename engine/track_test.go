package engine

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// trackTarget is a running trk_pages with the tracker that follows it.
type trackTarget struct {
	*commanded
	addr uint64 // start of the page buffer
	tr   *Tracker
}

func startTrackTarget(t *testing.T) *trackTarget {
	t.Helper()
	p := startCommanded(t, "trk_pages")
	ready := fields(p.Expect("ready "))
	addr, err := strconv.ParseUint(strings.TrimPrefix(ready["addr"], "0x"), 16, 64)
	if err != nil {
		t.Fatalf("parse ready line of pid %d: %v", p.PID, err)
	}
	id, err := Identify(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(id)
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracker: %v", err)
		}
	})
	return &trackTarget{commanded: p, addr: addr, tr: tr}
}

// page returns the address of page i of the buffer.
func (tt *trackTarget) page(i int) uint64 { return tt.addr + uint64(i)*pageSize }

// begin freezes the target for one op that uses its tracker.
func (tt *trackTarget) begin(t *testing.T) *Op {
	t.Helper()
	op, err := Begin(tt.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Track(tt.tr); err != nil {
		op.Close()
		t.Fatal(err)
	}
	return op
}

// capture runs a tracked copy-on-write capture and returns its image with
// the bytes of every run read from the capture not marked Base in Data.
func (tt *trackTarget) capture(t *testing.T) *snapshot.Image {
	t.Helper()
	op := tt.begin(t)
	defer op.Close()
	img, mem, err := op.CaptureCOW()
	if err != nil {
		t.Fatalf("tracked capture of pid %d: %v", tt.PID, err)
	}
	return materialize(t, img, mem)
}

// restore runs a tracked restore of img, whose runs carry their bytes.
func (tt *trackTarget) restore(t *testing.T, img *snapshot.Image) {
	t.Helper()
	op := tt.begin(t)
	defer op.Close()
	if _, err := op.Restore(img, imageMemory{img}, nil); err != nil {
		t.Fatalf("tracked restore of pid %d: %v", tt.PID, err)
	}
	checkRunning(t, tt.Proc)
}

// resolve returns a copy of img in which every run marked Base carries
// the bytes base holds at its addresses.
func resolve(t *testing.T, img, base *snapshot.Image) *snapshot.Image {
	t.Helper()
	out := *img
	out.Regions = slices.Clone(img.Regions)
	for i := range out.Regions {
		r := &out.Regions[i]
		r.Runs = slices.Clone(r.Runs)
		for k := range r.Runs {
			run := &r.Runs[k]
			if !run.Base {
				continue
			}
			// Page by page: the base may hold a run in several regions.
			run.Data = make([]byte, run.Len)
			for off := uint64(0); off < run.Len; off += pageSize {
				if err := readAt(base, r.Start+run.Off+off, run.Data[off:off+pageSize]); err != nil {
					t.Fatalf("run %#x+%d marked Base: %v", r.Start+run.Off, run.Len, err)
				}
			}
			run.Base = false
		}
	}
	out.Base = ""
	return &out
}

// readAt copies the saved bytes of img at addr into p, which must lie in
// one run.
func readAt(img *snapshot.Image, addr uint64, p []byte) error {
	for _, r := range img.Regions {
		for _, run := range r.Runs {
			from := r.Start + run.Off
			if from <= addr && addr+uint64(len(p)) <= from+run.Len {
				if run.Data == nil {
					return fmt.Errorf("run at %#x has no bytes", from)
				}
				copy(p, run.Data[addr-from:])
				return nil
			}
		}
	}
	return fmt.Errorf("%#x+%d is not inside one saved run", addr, len(p))
}

// pageFill is a page of the buffer and the byte it is filled with.
type pageFill struct{ page, value int }

// checkPages fails unless each page of want is saved in img, filled with
// its byte.
func (tt *trackTarget) checkPages(t *testing.T, img *snapshot.Image, want []pageFill) {
	t.Helper()
	got := make([]byte, pageSize)
	for _, w := range want {
		if err := readAt(img, tt.page(w.page), got); err != nil {
			t.Errorf("page %d not saved: %v", w.page, err)
			continue
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(w.value)}, pageSize)) {
			t.Errorf("saved page %d starts with %d, want it filled with %d", w.page, got[0], w.value)
		}
	}
}

// bufferRuns returns the runs of the region holding the buffer, as page
// numbers of the buffer, split into those marked Base and the others.
func (tt *trackTarget) bufferRuns(t *testing.T, img *snapshot.Image) (base, written []int) {
	t.Helper()
	for _, r := range img.Regions {
		if r.Start > tt.addr || tt.addr >= r.End {
			continue
		}
		for _, run := range r.Runs {
			for a := r.Start + run.Off; a < r.Start+run.Off+run.Len; a += pageSize {
				if a < tt.addr || a >= tt.page(256) {
					continue
				}
				if run.Base {
					base = append(base, int((a-tt.addr)/pageSize))
				} else {
					written = append(written, int((a-tt.addr)/pageSize))
				}
			}
		}
		return base, written
	}
	t.Fatalf("no region holds the buffer at %#x", tt.addr)
	return nil, nil
}

func TestTrackedCaptureSavesOnlyWrittenPages(t *testing.T) {
	tt := startTrackTarget(t)

	first := tt.capture(t)
	if first.Base != "" {
		t.Fatalf("first capture has base %q, want a full capture", first.Base)
	}
	tt.tr.SetBase("first")

	tt.send(t, "w 3 200", "wrote")
	tt.send(t, "w 100 201", "wrote")
	tt.send(t, "z 50", "dropped")
	second := tt.capture(t)
	if second.Base != "first" {
		t.Fatalf("second capture has base %q, want \"first\"", second.Base)
	}

	base, written := tt.bufferRuns(t, second)
	if !slices.Equal(written, []int{3, 100}) {
		t.Errorf("pages of the buffer saved anew: %v, want [3 100]", written)
	}
	if len(base) != 253 || slices.Contains(base, 50) {
		t.Errorf("%d pages of the buffer marked Base (page 50 among them: %v), want 253 without page 50",
			len(base), slices.Contains(base, 50))
	}

	got := make([]byte, pageSize)
	if err := readAt(second, tt.page(3), got); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{200}, pageSize)) {
		t.Errorf("saved page 3 = %d... (err %v), want 200s", got[0], err)
	}
	full := resolve(t, second, first)
	if err := readAt(full, tt.page(7), got); err != nil || got[0] != 8 {
		t.Errorf("page 7 through the base = %d (err %v), want 8", got[0], err)
	}
}

func TestTrackedRollbackComparesOnlyWrittenPages(t *testing.T) {
	tt := startTrackTarget(t)
	first := tt.capture(t)
	tt.tr.SetBase("first")
	tt.send(t, "w 3 200", "wrote")
	second := resolve(t, tt.capture(t), first)
	tt.tr.SetBase("second")
	want := tt.send(t, "sum", "sum ")

	tt.send(t, "w 7 9", "wrote")
	tt.send(t, "w 3 33", "wrote")
	tt.send(t, "z 5", "dropped")
	tt.send(t, "m", "mapped ")

	// Page 200 was not written since the base, so the rollback must not
	// even look at it: a wrong byte planted there in the image stays out.
	planted := tt.page(200)
	for _, r := range second.Regions {
		for _, run := range r.Runs {
			if from := r.Start + run.Off; from <= planted && planted < from+run.Len {
				run.Data[planted-from] = 0xee
			}
		}
	}

	tt.restore(t, second)
	if got := tt.send(t, "sum", "sum "); got != want {
		t.Errorf("buffer hash after rollback %s, want %s as at the snapshot", got, want)
	}
	for _, c := range []struct{ page, want int }{{3, 200}, {7, 8}, {5, 6}, {200, 200%251 + 1}} {
		line := tt.send(t, fmt.Sprintf("g %d", c.page), fmt.Sprintf("page %d=", c.page))
		if line != strconv.Itoa(c.want) {
			t.Errorf("page %d starts with %s after rollback, want %d", c.page, line, c.want)
		}
	}

	// The rollback made "second" the base again: a capture now saves
	// nothing of the buffer anew.
	tt.tr.SetBase("second")
	third := tt.capture(t)
	if third.Base != "second" {
		t.Fatalf("capture after rollback has base %q, want \"second\"", third.Base)
	}
	if _, written := tt.bufferRuns(t, third); len(written) != 0 {
		t.Errorf("pages of the buffer saved anew after rollback: %v, want none", written)
	}
}

func TestTrackedCaptureOfNewMapping(t *testing.T) {
	tt := startTrackTarget(t)
	first := tt.capture(t)
	tt.tr.SetBase("first")

	line := tt.send(t, "m", "mapped ")
	addr, err := strconv.ParseUint(strings.TrimPrefix(line, "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	second := tt.capture(t)
	full := resolve(t, second, first)
	got := make([]byte, 4*pageSize)
	if err := readAt(full, addr, got); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{'M'}, 4*pageSize)) {
		t.Fatalf("new mapping at %#x saved as %q... (err %v), want 'M's", addr, got[:8], err)
	}

	// Registered by the second capture, it is tracked from then on.
	tt.tr.SetBase("second")
	third := tt.capture(t)
	for _, r := range third.Regions {
		for _, run := range r.Runs {
			if from := r.Start + run.Off; from <= addr && addr < from+run.Len && !run.Base {
				t.Errorf("unchanged new mapping saved anew by the third capture")
			}
		}
	}
}

func TestTrackerCloseEndsRegistration(t *testing.T) {
	tt := startTrackTarget(t)
	tt.capture(t)
	if !strings.Contains(smapsFlags(t, tt.PID, tt.addr), " uw") {
		t.Fatalf("buffer not registered for write tracking: VmFlags %q", smapsFlags(t, tt.PID, tt.addr))
	}
	if err := tt.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if flags := smapsFlags(t, tt.PID, tt.addr); strings.Contains(flags, " uw") {
		t.Errorf("buffer still registered after Close: VmFlags %q", flags)
	}
	tt.send(t, "w 1 1", "wrote")
	checkRunning(t, tt.Proc)
}

// smapsFlags returns the VmFlags line of the mapping that holds addr.
func smapsFlags(t *testing.T, pid int, addr uint64) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	inside := false
	for _, line := range strings.Split(string(data), "\n") {
		var start, end uint64
		if _, err := fmt.Sscanf(line, "%x-%x", &start, &end); err == nil {
			inside = start <= addr && addr < end
		}
		if inside && strings.HasPrefix(line, "VmFlags:") {
			return line
		}
	}
	t.Fatalf("no mapping of pid %d holds %#x", pid, addr)
	return ""
}

func TestPrecopyThenCapture(t *testing.T) {
	tt := startTrackTarget(t)
	first := tt.capture(t)
	tt.tr.SetBase("first")

	tt.send(t, "w 3 200", "wrote")
	tt.send(t, "w 100 201", "wrote")
	tt.send(t, "z 50", "dropped")
	if err := tt.tr.Precopy(); err != nil {
		t.Fatal(err)
	}
	tt.send(t, "w 100 202", "wrote")
	tt.send(t, "w 7 203", "wrote")
	want := tt.send(t, "sum", "sum ")

	second := tt.capture(t)
	if _, written := tt.bufferRuns(t, second); !slices.Equal(written, []int{3, 7, 100}) {
		t.Errorf("pages of the buffer saved anew: %v, want [3 7 100]", written)
	}
	full := resolve(t, second, first)
	tt.checkPages(t, full, []pageFill{{3, 200}, {7, 203}, {100, 202}, {8, 9}})
	got := make([]byte, pageSize)
	if err := readAt(full, tt.page(50), got); err == nil {
		t.Errorf("dropped page 50 saved")
	}

	// Rolling back to the snapshot gives the hash the process had then.
	tt.tr.SetBase("second")
	tt.send(t, "w 9 1", "wrote")
	tt.restore(t, full)
	if got := tt.send(t, "sum", "sum "); got != want {
		t.Errorf("hash after rollback %s, want %s", got, want)
	}
}

func TestPrecopyThenRollback(t *testing.T) {
	tt := startTrackTarget(t)
	first := tt.capture(t)
	tt.tr.SetBase("first")
	want := tt.send(t, "sum", "sum ")

	// Pages written before Precopy no longer show as written to the
	// kernel; the rollback must still bring them back.
	tt.send(t, "w 3 200", "wrote")
	if err := tt.tr.Precopy(); err != nil {
		t.Fatal(err)
	}
	tt.send(t, "w 7 203", "wrote")
	tt.restore(t, first)
	if got := tt.send(t, "sum", "sum "); got != want {
		t.Errorf("hash after rollback %s, want %s", got, want)
	}
}

func TestTrackingStartsOverAfterExec(t *testing.T) {
	p, stdin := startWithStdin(t, "cap_exec")
	p.Expect("ready")
	id, err := Identify(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(id)
	t.Cleanup(func() { tr.Close() })
	tt := &trackTarget{commanded: &commanded{Proc: p}, tr: tr}
	tt.capture(t)
	tr.SetBase("before-exec")

	if _, err := stdin.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if commOf(p.PID) == "sleep" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	waitSyscall(t, p.PID, strconv.Itoa(p.PID), unix.SYS_CLOCK_NANOSLEEP)

	img := tt.capture(t)
	if img.Base != "" {
		t.Errorf("capture after execve has base %q, want a full capture", img.Base)
	}
	if img.Comm != "sleep" {
		t.Errorf("captured comm %q, want sleep", img.Comm)
	}
}

func TestSecondTrackerLeavesFirstAlone(t *testing.T) {
	tt := startTrackTarget(t)
	tt.capture(t)
	tt.tr.SetBase("first")

	// Another daemon tracks the same process: its tracker finds the
	// mappings held and must not write-protect them.
	other := &trackTarget{commanded: tt.commanded, addr: tt.addr, tr: NewTracker(tt.tr.Process())}
	t.Cleanup(func() { other.tr.Close() })
	tt.send(t, "w 3 200", "wrote")
	other.capture(t)
	other.tr.SetBase("other")
	if err := other.tr.Precopy(); err != nil {
		t.Fatal(err)
	}
	other.capture(t)

	second := tt.capture(t)
	if _, written := tt.bufferRuns(t, second); !slices.Equal(written, []int{3}) {
		t.Errorf("pages of the buffer saved anew: %v, want [3]", written)
	}
}

func TestClonePagesShowWritesSinceFork(t *testing.T) {
	tt := startTrackTarget(t)
	op, err := Begin(tt.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	_, mem, err := op.CaptureCOW()
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if mem.clonePID == 0 {
		t.Fatal("CaptureCOW made no clone")
	}

	tt.send(t, "w 3 200", "wrote")
	tt.send(t, "z 50", "dropped")
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", tt.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer pagemap.Close()
	changed, err := changedSinceFork(pagemap, mem.clonePID, []trackedRange{{start: tt.addr, end: tt.page(256)}})
	if err != nil {
		t.Fatal(err)
	}

	want := []span{{tt.page(3), tt.page(4)}, {tt.page(50), tt.page(51)}}
	if !slices.Equal(changed, want) {
		t.Errorf("pages changed since the fork: %x, want %x", changed, want)
	}
}

func TestTrackedCaptureAfterMappingSplitAndMerged(t *testing.T) {
	tt := startTrackTarget(t)
	first := tt.capture(t)
	tt.tr.SetBase("first")

	// The buffer splits in two mappings, then merges back: its bounds
	// differ from those the tracker registered each time, while its pages
	// stay registered.
	tt.send(t, "ro 100 10", "protected")
	second := resolve(t, tt.capture(t), first)
	tt.tr.SetBase("second")
	tt.send(t, "rw 100 10", "protected")
	tt.send(t, "w 3 200", "wrote")
	third := resolve(t, tt.capture(t), second)
	tt.checkPages(t, third, []pageFill{{3, 200}, {7, 8}, {105, 106}})
}
