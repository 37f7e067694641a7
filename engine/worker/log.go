package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
)

// forwardLog logs each record the worker writes to f, as slog's JSON
// handler encodes them, through log, keeping the order of the attributes.
func forwardLog(f *os.File, log *slog.Logger) {
	defer f.Close()

	lines := bufio.NewScanner(f)
	lines.Buffer(nil, 1<<20)
	for lines.Scan() {
		level, msg, attrs, err := parseRecord(lines.Bytes())
		if err != nil {
			log.Warn("restore worker wrote an invalid log record", "record", lines.Text(), "err", err)
			continue
		}
		log.LogAttrs(context.Background(), level, msg, attrs...)
	}
}

// parseRecord decodes one record of slog's JSON handler into its level,
// message and other attributes, dropping the time: the parent's handler
// stamps its own.
func parseRecord(line []byte) (slog.Level, string, []slog.Attr, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return 0, "", nil, errors.New("not a JSON object")
	}

	var (
		level slog.Level
		msg   string
		attrs []slog.Attr
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return 0, "", nil, err
		}
		key, _ := tok.(string)
		var value any
		if err := dec.Decode(&value); err != nil {
			return 0, "", nil, err
		}

		switch key {
		case slog.TimeKey:
		case slog.LevelKey:
			text, _ := value.(string)
			if err := level.UnmarshalText([]byte(text)); err != nil {
				return 0, "", nil, err
			}
		case slog.MessageKey:
			msg, _ = value.(string)
		default:
			attrs = append(attrs, slog.Any(key, value))
		}
	}
	return level, msg, attrs, nil
}
