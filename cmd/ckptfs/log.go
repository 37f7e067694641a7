package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// setupLogger builds a.log for cmd from --log-level and --log-json: JSON
// lines with --log-json, otherwise tint's text, colored when stderr is a
// terminal.
func (a *app) setupLogger(cmd *cobra.Command) error {
	if a.logLevel == "" {
		a.logLevel = defaultLogLevel(cmd)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(a.logLevel)); err != nil || !knownLevel(a.logLevel) {
		return fmt.Errorf("invalid --log-level %q: expected debug, info, warn or error", a.logLevel)
	}

	if a.logJSON {
		a.log = slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: level}))
		return nil
	}
	a.log = slog.New(tint.NewHandler(a.stderr, &tint.Options{
		Level:      level,
		TimeFormat: "15:04:05.000",
		NoColor:    !isTerminal(a.stderr),
	}))
	return nil
}

// defaultLogLevel returns the level used without --log-level: info for the
// mount, which runs as a service and logs each operation, and warn for the
// one-shot commands, whose result line on stdout reports what they did.
func defaultLogLevel(cmd *cobra.Command) string {
	if cmd.Name() == "mount" {
		return "info"
	}
	return "warn"
}

// knownLevel reports whether name is one of the four documented levels;
// slog itself also accepts forms such as "info+2".
func knownLevel(name string) bool {
	switch strings.ToLower(name) {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
