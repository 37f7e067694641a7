package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
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

// idleRelease is how long a worker keeps the memory of its last restore
// before it gives it back to the kernel. A restore soon after then finds
// that memory in place, and an idle mount does not hold the size of the
// processes it restored for long.
const idleRelease = 10 * time.Second

// Main runs this process as a restore worker, and exits, when a Runner
// started it as one. Otherwise it returns at once.
//
// The worker serves the requests of its connection, each in a goroutine,
// until the parent closes the connection or dies. It then finishes the
// restores it has begun and exits.
func Main() {
	kind, set := os.LookupEnv(envWorker)
	if !set {
		return
	}
	os.Unsetenv(envWorker)
	if kind != workerRestore || len(os.Args) != 1 || os.Args[0] != workerArg0 {
		// Not started by a Runner: the variable came from elsewhere, and
		// the command runs as usual.
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)

	// Run from /proc/self/exe, the worker would be called "exe" in ps and
	// in the messages that name a process's tracer. Writing the comm of
	// the process renames its main thread, whichever thread writes.
	_ = os.WriteFile("/proc/self/comm", []byte(workerComm), 0)

	fc, err := net.FileConn(os.NewFile(fdConn, "conn"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: connect to the parent: %v\n", workerArg0, err)
		os.Exit(2)
	}
	w := &worker{
		conn:   fc.(*net.UnixConn),
		log:    slog.New(slog.NewJSONHandler(os.NewFile(fdLog, "log"), &slog.HandlerOptions{Level: &levelVar})),
		stores: map[string]*snapshot.Store{},
	}
	if err := w.serve(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", workerArg0, err)
		w.running.Wait()
		os.Exit(2)
	}
	w.running.Wait()
	os.Exit(0)
}

// levelVar is the worker's log level, set from each request.
var levelVar slog.LevelVar

// worker is the state of a worker process.
type worker struct {
	conn *net.UnixConn
	log  *slog.Logger

	wmu sync.Mutex // serializes events on conn

	running sync.WaitGroup

	idle       sync.Mutex
	active     int    // restores running
	generation uint64 // counts the times active fell to 0

	smu    sync.Mutex
	stores map[string]*snapshot.Store // opened stores by URL
}

// serve reads requests, each a JSON line, with the userfaultfds that come
// as SCM_RIGHTS, until the connection ends, and starts each restore.
func (w *worker) serve() error {
	var (
		pending []byte
		fds     []*os.File
	)
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*16))
	for {
		n, oobn, _, _, err := w.conn.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			received, perr := receivedFiles(oob[:oobn])
			if perr != nil {
				return perr
			}
			fds = append(fds, received...)
		}
		pending = append(pending, buf[:n]...)

		for {
			end := bytes.IndexByte(pending, '\n')
			if end < 0 {
				break
			}
			var req request
			if err := json.Unmarshal(pending[:end], &req); err != nil {
				return fmt.Errorf("decode request: %w", err)
			}
			pending = pending[end+1:]

			var uffd *os.File
			if req.HasUffd {
				if len(fds) == 0 {
					return fmt.Errorf("request %d lends a userfaultfd that did not arrive", req.ID)
				}
				uffd, fds = fds[0], fds[1:]
			}
			w.start(req, uffd)
		}

		if errors.Is(err, io.EOF) || err == nil && n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read requests: %w", err)
		}
	}
}

// receivedFiles returns the descriptors of the SCM_RIGHTS messages in oob.
func receivedFiles(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			return nil, fmt.Errorf("parse control message: %w", err)
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "userfaultfd"))
		}
	}
	return files, nil
}

// start runs the restore req in a goroutine and sends its result.
//
// The memory of a finished restore stays with the worker for idleRelease,
// so that a restore soon after finds it in place. On a VM that hands freed
// memory back to its host, a first touch of memory is several times
// slower. Once no restore has run for that long, the worker collects its
// garbage twice (pooled buffers outlive one collection) and returns its
// free memory.
func (w *worker) start(req request, uffd *os.File) {
	levelVar.Set(req.LogLevel)
	w.running.Add(1)
	w.idle.Lock()
	w.active++
	w.idle.Unlock()
	go func() {
		defer w.running.Done()
		if err := w.restore(req, uffd); err != nil {
			// The restore did not begin, so the lent tracking goes back
			// as it came.
			w.send(event{ID: req.ID, Result: &result{Error: encodeError(err), Tracking: req.Tracking}})
		}
		w.finished()
	}()
}

// finished counts a restore as done and, after the last one, arms the
// release of the worker's memory.
func (w *worker) finished() {
	w.idle.Lock()
	defer w.idle.Unlock()
	w.active--
	if w.active > 0 {
		return
	}
	w.generation++
	generation := w.generation
	time.AfterFunc(idleRelease, func() {
		w.idle.Lock()
		stale := w.active > 0 || w.generation != generation
		w.idle.Unlock()
		if stale {
			return
		}
		runtime.GC()
		runtime.GC()
		debug.FreeOSMemory()
	})
}

// store returns the store at url, opened once for all restores.
func (w *worker) store(url string) (*snapshot.Store, error) {
	w.smu.Lock()
	defer w.smu.Unlock()
	if s, ok := w.stores[url]; ok {
		return s, nil
	}
	s, err := snapshot.OpenURL(url, w.log)
	if err != nil {
		return nil, err
	}
	w.stores[url] = s
	return s, nil
}

// restore runs the restore that req describes and sends its result, or
// returns an error when the restore could not begin.
func (w *worker) restore(req request, uffd *os.File) error {
	defer func() {
		if uffd != nil {
			uffd.Close()
		}
	}()
	store, err := w.store(req.Store)
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

	op, err := engine.Begin(req.Process.PID, w.log)
	if err != nil {
		return fmt.Errorf("freeze pid %d: %w", req.Process.PID, err)
	}
	defer op.Close()
	if cur, err := engine.Identify(req.Process.PID); err != nil || cur != req.Process {
		return fmt.Errorf("pid %d exited and now belongs to a new process: %w", req.Process.PID, unix.ESRCH)
	}
	w.send(event{ID: req.ID, Seized: true})

	var tracker *engine.Tracker
	if req.Tracking != nil && uffd != nil {
		tracker, err = engine.AdoptTracker(req.Process, *req.Tracking, uffd, snap.Image)
		uffd = nil // the tracker owns it, or it is closed
		if err != nil {
			w.log.Debug("restoring without write tracking", "pid", req.Process.PID, "err", err)
		} else if err := op.Track(tracker); err != nil {
			w.log.Debug("restoring without write tracking", "pid", req.Process.PID, "err", err)
		}
	}
	if sw := req.SelfWrite; sw != nil {
		op.FailSelfWrite(sw.TID, sw.Bytes, func(err error) unix.Errno { return errnos.Of(err) })
	}

	mem := &countingReader{src: snap}
	stop := w.reportProgress(req.ID, mem)
	report, err := op.Restore(snap.Image, mem, req.Parts)
	stop()
	op.Close()
	if n := mem.read.Load(); n > 0 {
		w.send(event{ID: req.ID, Read: n})
	}

	res := &result{Report: report}
	if err != nil {
		res.Report, res.Error = nil, encodeError(err)
	}
	if tracker != nil {
		state, err := tracker.Handback()
		if err != nil {
			w.log.Warn("closing the borrowed write tracking failed", "pid", req.Process.PID, "err", err)
		}
		res.Tracking = &state
	}
	w.send(event{ID: req.ID, Result: res})
	return nil
}

// send sends one event to the parent. Errors are dropped: a parent that
// died reads nothing more, and the worker goes on.
func (w *worker) send(ev event) {
	line, err := json.Marshal(ev)
	if err != nil {
		w.log.Error("encoding an event failed", "id", ev.ID, "err", err)
		return
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_, _ = w.conn.Write(append(line, '\n'))
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

// reportProgress sends the count of mem for request id every
// progressInterval until the returned function is called.
func (w *worker) reportProgress(id uint64, mem *countingReader) (stop func()) {
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
				w.send(event{ID: id, Read: n})
				sent = n
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
