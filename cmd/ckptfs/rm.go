package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

func (a *app) rmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm PID NAME",
		Short: "Remove a snapshot from the store",
		Long: "Rm deletes snapshot NAME of process PID from the store. When the process that\n" +
			"runs as PID now has a snapshot NAME, only that one is removed; otherwise every\n" +
			"snapshot NAME of exited processes that had PID is removed.",
		Args: argsWithPID(2, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.remove(mustPID(args), args[1])
		},
	}
	a.addStoreFlag(cmd)
	return cmd
}

// remove deletes snapshot name of process pid.
func (a *app) remove(pid int, name string) error {
	t := target{op: "rm", pid: pid, snapshot: name, store: a.storeDir}
	store, err := a.openStore()
	if err != nil {
		return err
	}

	owners, err := snapshotOwners(store, pid, name)
	if err != nil {
		return t.wrap(err)
	}
	for _, id := range owners {
		// Remove's errors name the snapshot and the process.
		if err := store.Remove(id, name); err != nil {
			return t.fail(err)
		}
		a.log.Info("removed", "pid", pid, "snapshot", name, "start_time", id.StartTime)
	}
	return nil
}

// snapshotOwners returns the processes with pid whose snapshot name rm
// removes: the live process alone when it has one, else every exited one.
// Its errors do not name the process or the snapshot.
func snapshotOwners(store *snapshot.Store, pid int, name string) ([]snapshot.ProcessID, error) {
	infos, err := store.List(pid)
	if err != nil {
		return nil, err
	}

	var owners []snapshot.ProcessID
	for _, info := range infos {
		if info.Name != name {
			continue
		}
		if processState(info.Process) == stateLive {
			return []snapshot.ProcessID{info.Process}, nil
		}
		owners = append(owners, info.Process)
	}
	if len(owners) == 0 {
		return nil, fmt.Errorf("not found in %s: %w", store.Dir(), unix.ENOENT)
	}
	return owners, nil
}
