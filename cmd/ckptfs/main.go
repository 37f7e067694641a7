// Command ckptfs snapshots live Linux processes and rolls them back in place.
//
// "ckptfs mount" serves the FUSE tree under /ckpt. The other subcommands
// (capture, restore, list, rm) call the engine and the snapshot store
// directly, so they work without a mount and may share a store with one.
//
// Exit status: 0 on success, 1 when an operation failed (stderr names the
// process and the snapshot and what to do next), 2 on a usage error (an
// unknown flag or command, a wrong number of arguments, an invalid PID or
// snapshot name).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ckptfs/ckptfs/engine/worker"
)

// Exit statuses of the command.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	worker.Main()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit status. Errors
// that a subcommand returns as a *failure exit 1; every other error comes
// from cobra's parsing or from an argument check and exits 2.
func run(args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)

	cmd, err := root.ExecuteC()
	if err == nil {
		return exitOK
	}

	var f *failure
	if errors.As(err, &f) {
		// Some errors, such as go-fuse's about fusermount, end in a newline.
		fmt.Fprintf(stderr, "ckptfs: %s\n", strings.TrimSpace(f.err.Error()))
		if f.hint != "" {
			fmt.Fprintf(stderr, "ckptfs: %s\n", f.hint)
		}
		return exitFailed
	}
	fmt.Fprintf(stderr, "ckptfs: %v\n", err)
	fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	return exitUsage
}
