package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/snapshot"
)

// Process states in list output.
const (
	stateLive   = "live"   // the captured process (same pid and start time) still runs
	stateExited = "exited" // it exited or is a zombie; the pid may belong to another process now
)

func (a *app) listCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json] [PID]",
		Short: "List the snapshots in the store",
		Long: "List prints every snapshot in the store, of live and exited processes, or only\n" +
			"those of PID. Columns: PID, COMMAND, SNAPSHOT, CAPTURED (local time), MEMORY\n" +
			"(bytes of memory saved, uncompressed), ON DISK (bytes the snapshot takes in the\n" +
			"store), STATE (live while the captured process, same PID and start time, still\n" +
			"runs; exited otherwise). Sizes use binary units (1 KiB = 1024 bytes).",
		Args: argsWithPID(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid := 0
			if len(args) == 1 {
				pid = mustPID(args)
			}
			return a.list(pid, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false,
		"print a JSON array with one object per snapshot instead of a table (sizes in bytes)")
	a.addStoreFlag(cmd)
	return cmd
}

// listEntry is one snapshot in the JSON output of list.
type listEntry struct {
	PID       int       `json:"pid"`
	StartTime uint64    `json:"start_time"` // clock ticks after boot, field 22 of /proc/PID/stat
	UID       uint32    `json:"uid"`
	Command   string    `json:"command"`
	Exe       string    `json:"exe"`
	Snapshot  string    `json:"snapshot"`
	Captured  time.Time `json:"captured"`
	FrozenNS  int64     `json:"frozen_ns"` // how long the process was stopped, in nanoseconds
	Threads   int       `json:"threads"`
	Regions   int       `json:"regions"`
	Memory    uint64    `json:"memory_bytes"` // memory saved, uncompressed
	OnDisk    uint64    `json:"on_disk_bytes"`
	State     string    `json:"state"` // "live" or "exited"
}

// list prints the snapshots of process pid, or of every process when pid is 0.
func (a *app) list(pid int, asJSON bool) error {
	t := target{op: "list", pid: pid, store: a.storeDir}
	store, err := a.openStore()
	if err != nil {
		return err
	}
	infos, err := store.List(pid)
	if err != nil {
		return t.fail(err)
	}

	entries := makeEntries(infos)
	if asJSON {
		return a.printJSON(entries)
	}
	return a.printTable(entries)
}

// makeEntries turns store infos into list entries sorted by pid and capture
// time, with the state of each process checked once.
func makeEntries(infos []snapshot.Info) []listEntry {
	states := map[snapshot.ProcessID]string{}
	entries := make([]listEntry, 0, len(infos))
	for _, info := range infos {
		state, ok := states[info.Process]
		if !ok {
			state = processState(info.Process)
			states[info.Process] = state
		}
		entries = append(entries, listEntry{
			PID: info.Process.PID, StartTime: info.Process.StartTime, UID: info.UID,
			Command: info.Comm, Exe: info.Exe, Snapshot: info.Name, Captured: info.Captured,
			FrozenNS: int64(info.Frozen), Threads: info.Threads, Regions: info.Regions,
			Memory: info.Bytes, OnDisk: info.Stored, State: state,
		})
	}

	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].PID != entries[j].PID {
			return entries[i].PID < entries[j].PID
		}
		return entries[i].Captured.Before(entries[j].Captured)
	})
	return entries
}

// processState returns stateLive when process id still runs: its pid
// exists with the same start time and boot id, and it is not a zombie.
func processState(id snapshot.ProcessID) string {
	now, err := engine.Identify(id.PID)
	if err != nil || now != id {
		return stateExited
	}
	status, err := engine.ReadStatus(id.PID)
	if err != nil || status.State == 'Z' {
		return stateExited
	}
	return stateLive
}

func (a *app) printJSON(entries []listEntry) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(entries); err != nil {
		return &failure{err: fmt.Errorf("write list as JSON: %w", err)}
	}
	return nil
}

func (a *app) printTable(entries []listEntry) error {
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "PID\tCOMMAND\tSNAPSHOT\tCAPTURED\tMEMORY\tON DISK\tSTATE")
	for _, e := range entries {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.PID, e.Command, e.Snapshot,
			e.Captured.Local().Format(time.DateTime), humanBytes(e.Memory), humanBytes(e.OnDisk), e.State)
	}
	if err := w.Flush(); err != nil {
		return &failure{err: fmt.Errorf("write list: %w", err)}
	}
	return nil
}

// humanBytes formats n bytes with a binary unit: 512 B, 3.4 KiB, 12 MiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	value := float64(n)
	suffixes := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for value >= unit && i < len(suffixes)-1 {
		value /= unit
		i++
	}
	if value < 10 {
		return fmt.Sprintf("%.1f %s", value, suffixes[i])
	}
	return fmt.Sprintf("%.0f %s", value, suffixes[i])
}
