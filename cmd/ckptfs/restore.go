package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/engine/worker"
	"github.com/ckptfs/ckptfs/snapshot"
)

func (a *app) restoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restore PID NAME [PART...]",
		Short: "Roll a running process back to one of its snapshots",
		Long: "Restore rolls process PID back in place to its snapshot NAME, or to its newest\n" +
			"snapshot when NAME is latest. Without PART the\n" +
			"restore is full; with PARTs only those are rolled back:\n" +
			"  memory    contents of private memory except thread stacks\n" +
			"  layout    the set of mappings, protections and brk\n" +
			"  threads   registers, xstate and stack of every thread\n" +
			"  fds       descriptor table and offsets\n" +
			"  signals   handlers, mask, altstack, pending signals and timers\n" +
			"  START-END or a mapping name from maps ([heap], [stack], a file path):\n" +
			"            the contents of that one region\n" +
			"Shared memory, file contents and other processes are left as they are; the\n" +
			"command prints what it left alone. A snapshot is restored only onto the process\n" +
			"it was taken from (same PID and start time), never onto a later process that\n" +
			"reuses the PID.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := argsWithPID(2, -1)(cmd, args); err != nil {
				return err
			}
			// A restore may name an autosave, so only the form is checked.
			if args[1] != "latest" {
				if err := snapshot.ValidName(args[1]); err != nil {
					return err
				}
			}
			return checkParts(args[2:])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.restore(mustPID(args), args[1], args[2:])
		},
	}
	a.addStoreFlag(cmd)
	return cmd
}

// restore rolls process pid back to its snapshot name, only the given parts
// when parts is not empty.
func (a *app) restore(pid int, name string, parts []string) error {
	t := target{op: "restore", pid: pid, snapshot: name, store: a.storeDir}
	start := time.Now()

	store, err := a.openStore()
	if err != nil {
		return err
	}
	info, img, err := a.loadForRestore(store, t)
	if err != nil {
		return err
	}
	name, t.snapshot = info.Name, info.Name // latest resolved

	if len(parts) == 0 {
		parts = nil
	}
	var run atomic.Pointer[worker.Restore]
	read := func() int64 {
		if r := run.Load(); r != nil {
			return r.Read()
		}
		return 0
	}
	stop := startProgress(a.stderr, fmt.Sprintf("restoring pid %d to %s", pid, name), runBytes(img), read)
	report, err := a.rollBack(t, store, info, img, parts, &run)
	stop()
	if err != nil {
		return err
	}

	a.log.Info("restored", "pid", pid, "snapshot", name, "parts", describeParts(parts),
		"left_alone", len(report.LeftAlone), "duration", time.Since(start))
	a.printReport(pid, name, report)
	return nil
}

// rollBack restores the parts of the snapshot info onto process t.pid in
// a restore worker, which completes or undoes the restore even when this
// command is interrupted or killed, and stores the worker in run for the
// progress bar.
func (a *app) rollBack(t target, store *snapshot.Store, info snapshot.Info, img *snapshot.Image, parts []string, run *atomic.Pointer[worker.Restore]) (*engine.RestoreReport, error) {
	// From its start, the worker goes on without this command.
	stop := a.waitThroughSignals(t.pid)
	defer stop()

	r, err := worker.Start(worker.Job{
		Process:  info.Process,
		Store:    store.URL(),
		Snapshot: info.Name,
		Captured: info.Captured,
		Parts:    parts,
	}, a.log)
	if err != nil {
		return nil, t.wrap(err)
	}
	run.Store(r)

	report, err := r.Wait()
	if err != nil {
		f := t.fail(fmt.Errorf("snapshot %q: %w", t.snapshot, err))
		if errors.Is(err, unix.EOPNOTSUPP) {
			f.hint = refusalHint(t.pid, img, parts)
		}
		return nil, f
	}
	return report, nil
}

// waitThroughSignals catches SIGINT, SIGTERM and SIGHUP until the
// returned function is called. The restore worker completes or undoes the
// restore whatever happens to this command, so the command waits for the
// outcome and reports it, instead of exiting while the process is still
// frozen. It says so on the first signal.
func (a *app) waitThroughSignals(pid int) (stop func()) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case sig := <-signals:
			fmt.Fprintf(a.stderr, "ckptfs: %s: the restore of process %d cannot stop halfway, waiting for it to complete or be undone\n",
				unix.SignalName(sig.(syscall.Signal)), pid)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(signals)
		close(done)
		wg.Wait()
	}
}

// describeParts returns the parts of a restore for the log: "all" for a full
// restore.
func describeParts(parts []string) string {
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}

// loadForRestore reads the description and image of snapshot t.snapshot of
// the process running now with pid t.pid; the restore worker loads its
// memory. A snapshot taken of an earlier process that had the same pid is
// an error: the running process is a different one.
func (a *app) loadForRestore(store *snapshot.Store, t target) (snapshot.Info, *snapshot.Image, error) {
	id, err := engine.Identify(t.pid)
	if err != nil {
		return snapshot.Info{}, nil, t.wrap(err)
	}

	if t.snapshot == "latest" {
		if t.snapshot, err = newestSnapshot(store, id); err != nil {
			return snapshot.Info{}, nil, t.fail(err)
		}
	}

	// LoadImage's errors name the snapshot and the process.
	info, img, err := store.LoadImage(id, t.snapshot)
	if errors.Is(err, unix.ENOENT) {
		if other := a.findOtherIncarnation(store, id, t.snapshot); other != nil {
			return snapshot.Info{}, nil, t.identityFailure(other.Process)
		}
	}
	if err != nil {
		return snapshot.Info{}, nil, t.fail(err)
	}

	if info.Process != id {
		return snapshot.Info{}, nil, t.identityFailure(info.Process)
	}
	return info, img, nil
}

// findOtherIncarnation returns the snapshot named name of a process that had
// id's pid but is not id, or nil when there is none.
func (a *app) findOtherIncarnation(store *snapshot.Store, id snapshot.ProcessID, name string) *snapshot.Info {
	infos, err := store.List(id.PID)
	if err != nil {
		a.log.Debug("list snapshots to explain a missing one", "pid", id.PID, "err", err)
		return nil
	}
	for i := range infos {
		if infos[i].Name == name && infos[i].Process != id {
			return &infos[i]
		}
	}
	return nil
}

// identityFailure reports that the snapshot belongs to process earlier, not
// to the process that has the pid now.
func (t target) identityFailure(earlier snapshot.ProcessID) *failure {
	return &failure{
		err: fmt.Errorf("%s: the snapshot was taken of an earlier process with pid %d "+
			"(start time %d), and pid %d is now a different process",
			t, earlier.PID, earlier.StartTime, t.pid),
		hint: "a snapshot is restored only onto the process it was taken from; " +
			"'ckptfs list' shows it as exited",
	}
}

// printReport prints what a restore did not roll back.
func (a *app) printReport(pid int, name string, report *engine.RestoreReport) {
	fmt.Fprintf(a.stdout, "restored pid %d to snapshot %s\n", pid, name)
	for _, item := range report.LeftAlone {
		fmt.Fprintf(a.stdout, "left alone: %s\n", item)
	}
	for _, w := range report.Warnings {
		fmt.Fprintf(a.stderr, "ckptfs: warning: %s\n", w)
	}
}

// newestSnapshot returns the name of the newest snapshot of process id, or
// an error wrapping ENOENT when it has none.
func newestSnapshot(store *snapshot.Store, id snapshot.ProcessID) (string, error) {
	infos, err := store.Snapshots(id)
	if err != nil {
		return "", err
	}
	if len(infos) == 0 {
		return "", fmt.Errorf("process %d has no snapshot to restore: %w", id.PID, unix.ENOENT)
	}
	return infos[len(infos)-1].Name, nil
}
