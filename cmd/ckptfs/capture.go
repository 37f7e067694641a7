package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

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
	if err := snapshot.ValidName(name); err != nil {
		return fmt.Errorf("invalid snapshot name %q: %w", name, err)
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
		return t.fail(err)
	}

	stop := startProgress(a.stderr, fmt.Sprintf("capturing pid %d", pid))
	img, err := engine.Capture(pid, a.log)
	if err != nil {
		stop()
		return t.fail(err)
	}

	info, err := store.Save(img, name)
	stop()
	if err != nil {
		return t.fail(fmt.Errorf("save to %s: %w", store.Dir(), err))
	}

	a.log.Info("captured", "pid", pid, "snapshot", info.Name, "frozen", info.Frozen,
		"bytes", info.Bytes, "stored", info.Stored, "duration", time.Since(start))
	fmt.Fprintln(a.stdout, info.Name)
	return nil
}
