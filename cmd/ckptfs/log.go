package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"golang.org/x/term"
)

// setupLogger builds a.log from --log-level and --log-json: JSON lines with
// --log-json, otherwise tint's text, colored when stderr is a terminal.
func (a *app) setupLogger() error {
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
