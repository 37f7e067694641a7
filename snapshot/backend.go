package snapshot

import (
	"io"
	"log/slog"
	"sync"
)

// backend keeps the snapshots of a Store: a local directory (dirStore) or a
// prefix of an S3 bucket (s3Store). The Store checks names and images before
// it calls a backend and sorts the lists a backend returns. The contract
// every backend keeps is in the package documentation, under Backends.
type backend interface {
	// saveImage commits img as snapshot name of its process, or as the
	// next snap-N when name is "", reading its memory from src. img and
	// name are already checked.
	saveImage(img *Image, name string, src MemorySource) (*Info, error)

	// listSnapshots returns the committed snapshots of every process, or
	// of the processes with that pid when pid is not 0, in any order.
	listSnapshots(pid int) ([]Info, error)

	// processSnapshots returns the committed snapshots of p in any order,
	// and an empty list when p has none.
	processSnapshots(p ProcessID) ([]Info, error)

	// loadSnapshot opens a committed snapshot; name is already checked.
	loadSnapshot(p ProcessID, name string) (*Snapshot, error)
	// loadImage reads a committed snapshot's description and image
	// without its memory; name is already checked.
	loadImage(p ProcessID, name string) (Info, *Image, error)

	// removeSnapshot deletes a committed snapshot; name is already checked.
	removeSnapshot(p ProcessID, name string) error

	// location returns the directory or URL that Store.Dir reports.
	location() string

	// linksBase reports whether saveImage stores an image with a Base by
	// pointing at the base's frames. When it does not, the Store gives
	// saveImage a source that reads Base runs from the base instead.
	linksBase() bool
}

// memoryObject is the stored memory file of a loaded snapshot. A Snapshot
// reads one frame at a time from it, at the offsets of the index, possibly
// from several goroutines at once.
type memoryObject interface {
	io.ReaderAt
	io.Closer
}

// warnings logs each damaged snapshot or process directory at Warn the first
// time a Store meets it, so that listing it again repeats nothing.
type warnings struct {
	log *slog.Logger

	// mu protects seen.
	mu sync.Mutex
	// seen holds the paths or keys already logged.
	seen map[string]bool
}

func newWarnings(log *slog.Logger) warnings {
	return warnings{log: log, seen: map[string]bool{}}
}

// warnOnce logs a damaged item at Warn the first time it is met.
func (w *warnings) warnOnce(path, msg string, err error) {
	w.mu.Lock()
	seen := w.seen[path]
	w.seen[path] = true
	w.mu.Unlock()

	if !seen {
		w.log.Warn(msg, "path", path, "err", err)
	}
}
