package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// Job is one restore to run in a worker.
type Job struct {
	// Process is the process to roll back. The worker checks after the
	// freeze that its pid still belongs to it.
	Process snapshot.ProcessID

	// Store is the URL of the store (see snapshot.OpenURL), Snapshot the
	// name of the snapshot, and Captured its capture time. The worker
	// fails with ENOENT when the snapshot it loads under that name was
	// captured at another time, because the name was reused meanwhile.
	Store    string
	Snapshot string
	Captured time.Time

	// Parts selects what to restore, as for engine.Op.Restore.
	Parts []string

	// Tracker, when not nil, is lent to the worker for the restore and
	// settled when it ends. Image is the snapshot's image, which becomes
	// the tracker's pending base after a full restore.
	Tracker *engine.Tracker
	Image   *snapshot.Image

	// SelfWrite, when not nil, is the write(2) through which the process
	// requested this restore itself, which returned before the restore
	// began. A restore that fails makes that write return its errno (see
	// engine.Op.FailSelfWrite), so that the process learns of the failure.
	SelfWrite *SelfWrite
}

// SelfWrite is a write(2) of Bytes bytes by thread TID.
type SelfWrite struct {
	TID   int    `json:"tid"`
	Bytes uint64 `json:"bytes"`
}

// Runner runs restores in a worker process. It starts the worker at its
// first restore and keeps it for the next ones, whose memory is then
// already in place, and starts another when the worker died. Its methods
// are safe for concurrent use, and restores of different processes run
// in the worker at the same time.
type Runner struct {
	log *slog.Logger

	mu     sync.Mutex
	srv    *server // nil before the first restore and after the worker died
	nextID uint64
	closed bool
}

// NewRunner returns a Runner that logs the records of its worker to log
// (nil discards them).
func NewRunner(log *slog.Logger) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{log: log}
}

// server is one worker process and the connection to it.
type server struct {
	cmd  *exec.Cmd
	conn *net.UnixConn
	log  *slog.Logger

	wmu sync.Mutex // serializes requests on conn

	mu   sync.Mutex
	runs map[uint64]*Restore
	dead bool

	done chan struct{} // closed once the worker exited and its pipes ended
}

// Restore is a restore running in a worker, from Start to Wait.
type Restore struct {
	job  Job
	id   uint64
	srv  *server
	lent *engine.TrackerState // nil when no tracker is lent
	// oneShot is the Runner that package-level Start made for this
	// restore alone, closed by Wait.
	oneShot *Runner

	seized chan struct{} // closed when the worker has frozen the process
	ended  chan struct{} // closed when the result came or the worker died
	read   atomic.Int64
	result *result // set before ended is closed, nil when none came
}

// Start runs job in a worker process of its own, which exits when the
// restore ends, as Runner.Start does. The worker logs to log.
func Start(job Job, log *slog.Logger) (*Restore, error) {
	rn := NewRunner(log)
	r, err := rn.Start(job)
	if err != nil {
		rn.Close()
		return nil, err
	}
	r.oneShot = rn
	return r, nil
}

// Start hands job to the worker and returns once the worker has frozen
// the process, so that the caller may reply to a request that the process
// itself waits on. When Start fails the process was not touched: the
// worker could not start, load the snapshot or freeze the process, and
// the error is the worker's, wrapping the errnos of engine.Begin and
// snapshot.Store.Load. Call Wait after a Start that succeeded.
func (rn *Runner) Start(job Job) (*Restore, error) {
	if job.Process.PID == os.Getpid() {
		return nil, &engine.RejectError{Errno: unix.EPERM, Reason: fmt.Sprintf("pid %d is the ckptfs daemon itself", job.Process.PID)}
	}
	srv, id, err := rn.server()
	if err != nil {
		return nil, err
	}

	r := &Restore{job: job, id: id, srv: srv, seized: make(chan struct{}), ended: make(chan struct{})}
	req := request{
		ID:        id,
		Process:   job.Process,
		Store:     job.Store,
		Snapshot:  job.Snapshot,
		Captured:  job.Captured,
		Parts:     job.Parts,
		SelfWrite: job.SelfWrite,
		LogLevel:  lowestLevel(rn.log),
	}
	var uffd *os.File
	if job.Tracker != nil {
		state, f, ok, err := job.Tracker.Lend()
		if err != nil {
			rn.log.Debug("write tracking not lent to the restore worker", "pid", job.Process.PID, "err", err)
		}
		if ok {
			r.lent, req.Tracking, req.HasUffd, uffd = &state, &state, true, f
		}
	}

	err = srv.send(r, req, uffd)
	if uffd != nil {
		uffd.Close()
	}
	if err != nil {
		r.settle(r.lent)
		return nil, err
	}

	select {
	case <-r.seized:
		return r, nil
	case <-r.ended:
		_, err := r.Wait()
		if err == nil {
			err = fmt.Errorf("restore worker of pid %d reported success without freezing it: %w", job.Process.PID, unix.EIO)
		}
		return nil, err
	}
}

// Close ends the worker once the restores it runs are done, and waits
// for it. The Runner starts no restore after Close.
func (rn *Runner) Close() {
	rn.mu.Lock()
	srv := rn.srv
	rn.srv, rn.closed = nil, true
	rn.mu.Unlock()
	if srv == nil {
		return
	}
	if !srv.alive() {
		<-srv.done
		return
	}
	if err := srv.conn.CloseWrite(); err != nil {
		rn.log.Warn("ending the restore worker failed", "worker", srv.cmd.Process.Pid, "err", err)
	}
	<-srv.done
}

// server returns the running worker, starting one when none runs, and
// the ID of the next request.
func (rn *Runner) server() (*server, uint64, error) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	if rn.closed {
		return nil, 0, fmt.Errorf("restore worker already closed: %w", unix.EINVAL)
	}
	if rn.srv != nil && rn.srv.alive() {
		rn.nextID++
		return rn.srv, rn.nextID, nil
	}
	srv, err := startServer(rn.log)
	if err != nil {
		return nil, 0, err
	}
	rn.srv = srv
	rn.nextID++
	return srv, rn.nextID, nil
}

// startServer starts a worker process and the goroutines that read its
// events and log records.
func startServer(log *slog.Logger) (*server, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create socket for the restore worker: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "worker")
	defer theirs.Close()
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("connect to the restore worker: %w", err)
	}
	conn := fc.(*net.UnixConn)
	logR, logW, err := os.Pipe()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("create pipe for the restore worker: %w", err)
	}
	defer logW.Close()

	// NOTE: run through an explicit loader (ld.so ckptfs, valgrind), this
	// process's /proc/self/exe is the loader, which cannot start the
	// worker: restores then fail before they touch the process.
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{workerArg0}
	cmd.Env = append(os.Environ(), envWorker+"="+workerRestore)
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{theirs, logW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		conn.Close()
		logR.Close()
		return nil, fmt.Errorf("start the restore worker: %w", err)
	}

	srv := &server{cmd: cmd, conn: conn, log: log, runs: map[uint64]*Restore{}, done: make(chan struct{})}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		forwardLog(logR, log)
	}()
	go func() {
		srv.readEvents()
		if err := cmd.Wait(); err != nil {
			log.Warn("restore worker exited", "worker", cmd.Process.Pid, "err", err)
		}
		<-logDone
		close(srv.done)
	}()
	return srv, nil
}

// alive reports whether the worker still reads requests.
func (s *server) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.dead
}

// send registers r and sends its request, with the userfaultfd uffd (nil
// for none) on the first byte of the line.
func (s *server) send(r *Restore, req request, uffd *os.File) error {
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode restore request: %w", err)
	}
	line = append(line, '\n')

	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return fmt.Errorf("restore worker (pid %d) exited: %w", s.cmd.Process.Pid, unix.EIO)
	}
	s.runs[r.id] = r
	s.mu.Unlock()

	s.wmu.Lock()
	defer s.wmu.Unlock()
	var oob []byte
	if uffd != nil {
		oob = unix.UnixRights(int(uffd.Fd()))
	}
	n, _, err := s.conn.WriteMsgUnix(line, oob, nil)
	if err == nil && n < len(line) {
		_, err = s.conn.Write(line[n:])
	}
	if err != nil {
		s.forget(r.id)
		return fmt.Errorf("send the restore request to the worker (pid %d): %w", s.cmd.Process.Pid, err)
	}
	return nil
}

// forget drops restore id from the restores the worker runs.
func (s *server) forget(id uint64) {
	s.mu.Lock()
	delete(s.runs, id)
	s.mu.Unlock()
}

// readEvents hands the worker's events to their restores until the
// connection ends, and then ends the restores still running: the worker
// died.
func (s *server) readEvents() {
	lines := bufio.NewScanner(s.conn)
	lines.Buffer(nil, 64<<20)
	for lines.Scan() {
		var ev event
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			s.log.Warn("restore worker sent an invalid event", "worker", s.cmd.Process.Pid, "err", err)
			continue
		}
		s.mu.Lock()
		r := s.runs[ev.ID]
		if ev.Result != nil {
			delete(s.runs, ev.ID)
		}
		s.mu.Unlock()
		if r == nil {
			s.log.Warn("restore worker sent an event for no restore", "worker", s.cmd.Process.Pid, "id", ev.ID)
			continue
		}
		r.handle(ev)
	}

	s.mu.Lock()
	s.dead = true
	runs := s.runs
	s.runs = map[uint64]*Restore{}
	s.mu.Unlock()
	s.conn.Close()
	for _, r := range runs {
		close(r.ended)
	}
}

// handle records one event of the worker.
func (r *Restore) handle(ev event) {
	switch {
	case ev.Seized:
		close(r.seized)
	case ev.Read > 0:
		r.read.Store(ev.Read)
	case ev.Result != nil:
		r.result = ev.Result
		close(r.ended)
	}
}

// Read returns the number of bytes of saved memory the worker has read.
func (r *Restore) Read() int64 { return r.read.Load() }

// Wait waits for the restore to end and returns the worker's report or
// error, as engine.Op.Restore would. It settles the lent tracker.
func (r *Restore) Wait() (*engine.RestoreReport, error) {
	<-r.ended
	if r.oneShot != nil {
		r.oneShot.Close()
	}

	res := r.result
	if res == nil {
		worker := r.srv.cmd.Process.Pid
		select {
		case <-r.seized:
		default:
			r.settle(r.lent)
			return nil, fmt.Errorf("restore worker (pid %d) exited before it froze pid %d, which it left untouched: %w",
				worker, r.job.Process.PID, unix.EIO)
		}
		// NOTE: a worker that died after the freeze and before its result
		// may have left the process partly restored. Only a bug or a kill
		// of the worker itself gets here.
		r.settle(nil)
		return nil, fmt.Errorf("restore worker (pid %d) of pid %d ended without a result, and the process may be partly "+
			"restored; restore a snapshot again to bring it to a known state: %w", worker, r.job.Process.PID, unix.EIO)
	}
	r.settle(res.Tracking)
	if res.Error != nil {
		return nil, res.Error.decode()
	}
	if res.Report == nil {
		res.Report = &engine.RestoreReport{}
	}
	return res.Report, nil
}

// settle gives the lent tracker back, with back as the worker's state of
// it (nil when unknown).
func (r *Restore) settle(back *engine.TrackerState) {
	if r.lent == nil {
		return
	}
	if err := r.job.Tracker.Settle(back, r.job.Image); err != nil {
		r.srv.log.Warn("taking write tracking back from the restore worker failed", "pid", r.job.Process.PID, "err", err)
	}
}

// lowestLevel returns the lowest standard level log is enabled for.
func lowestLevel(log *slog.Logger) slog.Level {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log.Enabled(context.Background(), level) {
			return level
		}
	}
	return slog.LevelError
}
