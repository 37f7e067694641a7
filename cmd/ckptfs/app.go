package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ckptfs/ckptfs/snapshot"
)

// defaultStoreDir is the store used when neither --store nor CKPTFS_STORE
// names one.
const defaultStoreDir = "/var/lib/ckptfs"

// app holds the flags shared by the subcommands and the logger built from
// them before a subcommand runs.
type app struct {
	stdout, stderr io.Writer

	storeDir string
	logLevel string
	logJSON  bool

	log *slog.Logger
}

// rootCommand builds the command tree.
func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "ckptfs",
		Short: "Snapshot live processes and roll them back in place",
		Long: "ckptfs captures the state of a running process (memory, registers, threads,\n" +
			"descriptors, signal state) into a snapshot store, shows each snapshot as files\n" +
			"under a FUSE mount, and rolls the live process back to a snapshot in place.",
		Args:              cobra.NoArgs,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.setupLogger(cmd) },
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("missing command: use one of mount, capture, restore, list, rm, version")
		},
	}

	flags := root.PersistentFlags()
	flags.StringVar(&a.logLevel, "log-level", "",
		"lowest level of log messages written to stderr: debug (with mount, also every FUSE request), info, warn or error; "+
			"the default is info for mount and warn for the other commands, whose result is on stdout")
	flags.BoolVar(&a.logJSON, "log-json", false,
		"write log messages to stderr as one JSON object a line instead of text")

	root.AddCommand(a.mountCommand(), a.captureCommand(), a.restoreCommand(),
		a.listCommand(), a.rmCommand(), versionCommand())
	return root
}

// addStoreFlag adds --store to a subcommand that uses the snapshot store.
func (a *app) addStoreFlag(cmd *cobra.Command) {
	def := defaultStoreDir
	if env := os.Getenv("CKPTFS_STORE"); env != "" {
		def = env
	}
	cmd.Flags().StringVar(&a.storeDir, "store", def,
		"snapshot store: a directory, created with mode 0700 if missing, or s3://BUCKET/PREFIX "+
			"with the endpoint in CKPTFS_S3_ENDPOINT or AWS_ENDPOINT_URL and credentials in AWS_ACCESS_KEY_ID "+
			"and AWS_SECRET_ACCESS_KEY; CKPTFS_STORE sets the default")
}

// openStore opens the store named by --store. Its errors name the store
// already, and come with a hint about the store rather than the process.
func (a *app) openStore() (*snapshot.Store, error) {
	store, err := snapshot.OpenURL(a.storeDir, a.log)
	if err != nil {
		return nil, &failure{err: err, hint: storeHint(a.storeDir, err, os.Geteuid())}
	}
	return store, nil
}

// parsePID parses a PID argument: a positive decimal number.
func parsePID(arg string) (int, error) {
	pid, err := strconv.Atoi(arg)
	if err != nil || pid <= 0 || strings.HasPrefix(arg, "+") {
		return 0, fmt.Errorf("invalid PID %q: expected a positive decimal process id", arg)
	}
	return pid, nil
}

// argsWithPID checks the number of positional arguments (maxArgs -1 for no
// upper bound) and that the first one, when present, is a PID.
func argsWithPID(minArgs, maxArgs int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < minArgs || (maxArgs >= 0 && len(args) > maxArgs) {
			return fmt.Errorf("wrong number of arguments (%d): usage is %q", len(args), cmd.UseLine())
		}
		if len(args) == 0 {
			return nil
		}
		_, err := parsePID(args[0])
		return err
	}
}

// mustPID returns the PID in args[0], which the command's Args check has
// already validated.
func mustPID(args []string) int {
	pid, err := parsePID(args[0])
	if err != nil {
		panic("ckptfs: PID argument not validated: " + err.Error())
	}
	return pid
}
