package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// autoPrefix starts the names of snapshots taken by autosave; users may not
// give such names themselves.
const autoPrefix = "auto-"

func (a *app) captureCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "capture PID [NAME]",
		Short: "Snapshot a running process into the store",
		Long: "Capture freezes process PID, copies its state into the store as snapshot NAME,\n" +
			"lets it run again and prints the snapshot's name. Without NAME the snapshot is\n" +
			"named snap-N, counting up per process. NAME matches [A-Za-z0-9][A-Za-z0-9._-]{0,63},\n" +
			"is not a control name (capture, restore, status, autosave, latest, self) and does\n" +
			"not start with \"auto-\", which autosave uses.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := argsWithPID(1, 2)(cmd, args); err != nil {
				return err
			}
			if len(args) == 2 {
				return checkUserName(args[1])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return a.capture(mustPID(args), name)
		},
	}
	a.addStoreFlag(cmd)
	return cmd
}

// checkUserName checks a snapshot name given on the command line.
func checkUserName(name string) error {
	// ValidName's errors start with "invalid snapshot name" and the name.
	if err := snapshot.ValidName(name); err != nil {
		return err
	}
	if strings.HasPrefix(name, autoPrefix) {
		return fmt.Errorf("invalid snapshot name %q: names starting with %q are reserved for autosave", name, autoPrefix)
	}
	return nil
}

// capture snapshots process pid as name ("" for the next snap-N) and prints
// the name of the new snapshot.
func (a *app) capture(pid int, name string) error {
	t := target{op: "capture", pid: pid, snapshot: name, store: a.storeDir}
	start := time.Now()

	store, err := a.openStore()
	if err != nil {
		return err
	}

	img, mem, err := a.captureImage(t)
	if err != nil {
		return err
	}

	// The copy-on-write capture took about 23 ms for 1 GiB when measured,
	// so saving the memory is what lasts and the bar follows its bytes.
	src := &countingReader{src: mem}
	stop := startProgress(a.stderr, fmt.Sprintf("capturing pid %d", pid), runBytes(img), src.Done)
	info, err := store.SaveFrom(img, name, src)
	if closeErr := mem.Close(); closeErr != nil {
		a.log.Warn("release the copy-on-write clone", "pid", pid, "err", closeErr)
	}
	stop()
	if err != nil {
		// Save's errors name the process but not the snapshot, except the
		// one of a taken name, which names the snapshot and its directory.
		if name != "" && !errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("snapshot %q: %w", name, err)
		}
		return t.fail(err)
	}

	a.log.Info("captured", "pid", pid, "snapshot", info.Name, "frozen", info.Frozen,
		"bytes", info.Bytes, "stored", info.Stored, "duration", time.Since(start))
	fmt.Fprintln(a.stdout, info.Name)
	return nil
}

// captureImage freezes and captures process t.pid, returning its memory as
// a copy-on-write clone to read after the thaw; closing it ends the op. It
// calls engine.Begin and Op.CaptureCOW itself rather than
// engine.CaptureCOW because Begin's errors, such as a missing
// /proc/PID/status, lack the operation, which the capture's own errors
// start with.
func (a *app) captureImage(t target) (*snapshot.Image, *engine.COWMemory, error) {
	op, err := engine.Begin(t.pid, a.log)
	if err != nil {
		return nil, nil, t.wrap(err)
	}

	img, mem, err := op.CaptureCOW()
	if err != nil {
		op.Close()
		return nil, nil, t.fail(err)
	}
	return img, mem, nil
}
