package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
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

	// Log receives the worker's log records. Nil discards them.
	Log *slog.Logger
}

// SelfWrite is a write(2) of Bytes bytes by thread TID.
type SelfWrite struct {
	TID   int    `json:"tid"`
	Bytes uint64 `json:"bytes"`
}

// Restore is a restore running in a worker, from Start to Wait.
type Restore struct {
	job  Job
	cmd  *exec.Cmd
	lent *engine.TrackerState // nil when no tracker is lent

	seized  chan struct{} // closed when the worker has frozen the process
	ended   chan struct{} // closed when the event pipe is at its end
	logDone chan struct{} // closed when the log pipe is at its end
	read    atomic.Int64
	result  *result // set before ended is closed, nil when none came
}

// Start runs a worker for job and returns once the worker has frozen the
// process, so that the caller may reply to a request that the
// process itself waits on. When Start fails the process was not touched: the
// worker could not start, load the snapshot or freeze the process, and
// the error is the worker's, wrapping the errnos of engine.Begin and
// snapshot.Store.Load. Call Wait after a Start that succeeded.
func Start(job Job) (*Restore, error) {
	if job.Log == nil {
		job.Log = slog.New(slog.DiscardHandler)
	}
	if job.Process.PID == os.Getpid() {
		return nil, &engine.RejectError{Errno: unix.EPERM, Reason: fmt.Sprintf("pid %d is the ckptfs daemon itself", job.Process.PID)}
	}

	r := &Restore{job: job, seized: make(chan struct{}), ended: make(chan struct{}), logDone: make(chan struct{})}
	req := request{
		Process:   job.Process,
		Store:     job.Store,
		Snapshot:  job.Snapshot,
		Captured:  job.Captured,
		Parts:     job.Parts,
		SelfWrite: job.SelfWrite,
		LogLevel:  lowestLevel(job.Log),
	}
	var uffd *os.File
	if job.Tracker != nil {
		state, f, ok, err := job.Tracker.Lend()
		if err != nil {
			job.Log.Debug("write tracking not lent to the restore worker", "pid", job.Process.PID, "err", err)
		}
		if ok {
			r.lent, req.Tracking, uffd = &state, &state, f
		}
	}

	err := r.spawn(req, uffd)
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

// spawn starts the worker with req and the goroutines that read its
// events and log records.
func (r *Restore) spawn(req request, uffd *os.File) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode restore request: %w", err)
	}
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create pipe for the restore worker: %w", err)
	}
	defer reqR.Close()
	evR, evW, err := os.Pipe()
	if err != nil {
		reqW.Close()
		return fmt.Errorf("create pipe for the restore worker: %w", err)
	}
	defer evW.Close()
	logR, logW, err := os.Pipe()
	if err != nil {
		reqW.Close()
		evR.Close()
		return fmt.Errorf("create pipe for the restore worker: %w", err)
	}
	defer logW.Close()

	// NOTE: run through an explicit loader (ld.so ckptfs, valgrind), this
	// process's /proc/self/exe is the loader, which cannot start the
	// worker: restores then fail before they touch the process.
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{workerArg0}
	cmd.Env = append(os.Environ(), envWorker+"="+workerRestore)
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{reqR, evW, logW}
	if uffd != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, uffd)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		reqW.Close()
		evR.Close()
		logR.Close()
		return fmt.Errorf("start the restore worker: %w", err)
	}
	r.cmd = cmd

	// The request may exceed the pipe's buffer, so it is written while
	// the worker reads. A worker that fails before reading it all reports
	// that itself.
	go func() {
		if _, err := reqW.Write(body); err != nil {
			r.job.Log.Debug("sending the restore request failed", "pid", r.job.Process.PID, "err", err)
		}
		reqW.Close()
	}()

	go r.readEvents(evR)
	go r.forwardLog(logR)
	return nil
}

// readEvents reads the worker's events until the pipe ends.
func (r *Restore) readEvents(f *os.File) {
	defer close(r.ended)
	defer f.Close()

	lines := bufio.NewScanner(f)
	lines.Buffer(nil, 64<<20)
	for lines.Scan() {
		var ev event
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			r.job.Log.Warn("restore worker sent an invalid event", "pid", r.job.Process.PID, "err", err)
			continue
		}
		switch {
		case ev.Seized:
			close(r.seized)
		case ev.Read > 0:
			r.read.Store(ev.Read)
		case ev.Result != nil:
			r.result = ev.Result
		}
	}
}

// Read returns the number of bytes of saved memory the worker has read.
func (r *Restore) Read() int64 { return r.read.Load() }

// Wait waits for the restore to end and returns the worker's report or
// error, as engine.Op.Restore would. It settles the lent tracker.
func (r *Restore) Wait() (*engine.RestoreReport, error) {
	<-r.ended
	exitErr := r.cmd.Wait()
	<-r.logDone

	res := r.result
	if res == nil {
		select {
		case <-r.seized:
		default:
			r.settle(r.lent)
			return nil, fmt.Errorf("restore worker (pid %d) exited before it froze pid %d (%v), which it left untouched: %w",
				r.cmd.Process.Pid, r.job.Process.PID, exitErr, unix.EIO)
		}
		// NOTE: a worker that died after the freeze and before its result
		// may have left the process partly restored. Only a bug or a kill
		// of the worker itself gets here.
		r.settle(nil)
		return nil, fmt.Errorf("restore worker (pid %d) of pid %d ended without a result (%v); "+
			"check the process, which may be partly restored: %w", r.cmd.Process.Pid, r.job.Process.PID, exitErr, unix.EIO)
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
		r.job.Log.Warn("taking write tracking back from the restore worker failed", "pid", r.job.Process.PID, "err", err)
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
