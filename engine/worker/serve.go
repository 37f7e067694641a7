package worker

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"github.com/ckptfs/ckptfs/snapshot"
)

// progressInterval is how often a worker reports the bytes it has read.
const progressInterval = 100 * time.Millisecond

// Main runs this process as a restore worker, and exits, when Start
// started it as one. Otherwise it returns at once.
func Main() {
	kind, set := os.LookupEnv(envWorker)
	if !set {
		return
	}
	os.Unsetenv(envWorker)
	if kind != workerRestore || len(os.Args) != 1 || os.Args[0] != workerArg0 {
		// Not started by Start: the variable came from elsewhere, and the
		// command runs as usual.
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)

	// Run from /proc/self/exe, the worker would be called "exe" in ps and
	// in the messages that name a process's tracer. Writing the comm of
	// the process renames its main thread, whichever thread writes.
	_ = os.WriteFile("/proc/self/comm", []byte(workerComm), 0)

	events := &eventWriter{enc: json.NewEncoder(os.NewFile(fdEvents, "events"))}
	log := slog.New(slog.NewJSONHandler(os.NewFile(fdLog, "log"), &slog.HandlerOptions{Level: &levelVar}))

	var req request
	if err := json.NewDecoder(os.NewFile(fdRequest, "request")).Decode(&req); err != nil {
		err = fmt.Errorf("restore worker: read the request: %w", err)
		fmt.Fprintf(os.Stderr, "%s: %v\n", workerArg0, err)
		events.send(event{Result: &result{Error: encodeError(err)}})
		os.Exit(2)
	}

	levelVar.Set(req.LogLevel)
	var uffd *os.File
	if req.Tracking != nil {
		uffd = os.NewFile(fdUffd, "userfaultfd")
	}
	if err := serve(req, uffd, events, log); err != nil {
		// The restore did not begin, so the lent tracking goes back as
		// it came.
		events.send(event{Result: &result{Error: encodeError(err), Tracking: req.Tracking}})
	}
	os.Exit(0)
}

// levelVar is the worker's log level, set from the request.
var levelVar slog.LevelVar

// serve runs the restore that req describes and sends its result, or
// returns an error when the restore could not begin.
func serve(req request, uffd *os.File, events *eventWriter, log *slog.Logger) error {
	store, err := snapshot.OpenURL(req.Store, log)
	if err != nil {
		return err
	}
	snap, err := store.Load(req.Process, req.Snapshot)
	if err != nil {
		return err
	}
	defer snap.Close()
	if !req.Captured.IsZero() && !snap.Info.Captured.Equal(req.Captured) {
		return fmt.Errorf("snapshot %q of pid %d was replaced by one captured at %s; request the restore again: %w",
			req.Snapshot, req.Process.PID, snap.Info.Captured.Format(time.RFC3339Nano), unix.ENOENT)
	}

	op, err := engine.Begin(req.Process.PID, log)
	if err != nil {
		return fmt.Errorf("freeze pid %d: %w", req.Process.PID, err)
	}
	defer op.Close()
	if cur, err := engine.Identify(req.Process.PID); err != nil || cur != req.Process {
		return fmt.Errorf("pid %d exited and now belongs to a new process: %w", req.Process.PID, unix.ESRCH)
	}
	events.send(event{Seized: true})

	var tracker *engine.Tracker
	if req.Tracking != nil {
		tracker, err = engine.AdoptTracker(req.Process, *req.Tracking, uffd, snap.Image)
		if err != nil {
			log.Debug("restoring without write tracking", "pid", req.Process.PID, "err", err)
		} else if err := op.Track(tracker); err != nil {
			log.Debug("restoring without write tracking", "pid", req.Process.PID, "err", err)
		}
	}

	if w := req.SelfWrite; w != nil {
		op.FailSelfWrite(w.TID, w.Bytes, func(err error) unix.Errno { return errnos.Of(err) })
	}

	mem := &countingReader{src: snap}
	stop := reportProgress(mem, events)
	report, err := op.Restore(snap.Image, mem, req.Parts)
	stop()
	op.Close()
	if n := mem.read.Load(); n > 0 {
		events.send(event{Read: n})
	}

	res := &result{Report: report}
	if err != nil {
		res.Report, res.Error = nil, encodeError(err)
	}
	if tracker != nil {
		state, err := tracker.Handback()
		if err != nil {
			log.Warn("closing the borrowed write tracking failed", "pid", req.Process.PID, "err", err)
		}
		res.Tracking = &state
	}
	events.send(event{Result: res})
	return nil
}

// eventWriter sends events to the parent, one JSON line each. Errors are
// dropped: a parent that died reads nothing more, and the worker goes on.
type eventWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *eventWriter) send(ev event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.enc.Encode(ev)
}

// countingReader counts the bytes of saved memory read through it.
type countingReader struct {
	src  snapshot.MemoryReader
	read atomic.Int64
}

func (c *countingReader) ReadRegion(i int, p []byte, off uint64) error {
	if err := c.src.ReadRegion(i, p, off); err != nil {
		return err
	}
	c.read.Add(int64(len(p)))
	return nil
}

// reportProgress sends the count of mem every progressInterval until the
// returned function is called.
func reportProgress(mem *countingReader, events *eventWriter) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(progressInterval)
		defer tick.Stop()
		var sent int64
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if n := mem.read.Load(); n > sent {
				events.send(event{Read: n})
				sent = n
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
