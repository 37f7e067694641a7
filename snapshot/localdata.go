package snapshot

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

const (
	// dataFilePrefix starts the name of a data file in a process
	// directory; the data id follows. The dot keeps it apart from
	// snapshot names.
	dataFilePrefix = ".data-"

	// workDataFile is the data file inside a work directory, before the
	// commit gives it its id.
	workDataFile = "data"
)

func dataFileName(id string) string { return dataFilePrefix + id }

// dataFile is the data file of a save, written into a work directory.
type dataFile struct {
	files []fileEntry // manifest entries of its sections
	index *index

	// synced reports when the file is on disk. The commit waits for it
	// only when it has written the manifest, so the two syncs overlap.
	synced *pendingSync
}

// writeData writes the data file of a snapshot into dir and starts syncing
// it: the zstd frames of the runs of img read from src, then image.json,
// maps and the index, back to back in the order of dataFiles. With link
// set, the runs marked Base are not read: the index points at the frames
// link found for them.
func writeData(dir string, img *Image, src MemorySource, link *baseLink) (*dataFile, error) {
	path := filepath.Join(dir, workDataFile)
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return nil, fmt.Errorf("create data file %s: %w", path, err)
	}

	out := bufio.NewWriterSize(&writebackFile{file: file}, writeBuffer)
	files, x, err := writeSections(out, img, src, link)
	if err == nil {
		err = out.Flush()
	}
	if err != nil {
		_ = file.Close() // the caller deletes the work directory
		return nil, fmt.Errorf("write data file %s: %w", path, err)
	}
	return &dataFile{files: files, index: x, synced: syncInBackground(file)}, nil
}

const (
	// writeBuffer gathers the small compressed frames into fewer writes.
	writeBuffer = 1 << 20

	// writebackStep is how many bytes of a data file are written before
	// the kernel is asked to start writing them to disk, so that the
	// final sync waits only for the last part instead of all of it.
	writebackStep = 16 << 20
)

// writebackFile writes to a data file and starts the kernel's writeback of
// every writebackStep bytes written.
type writebackFile struct {
	file          *os.File
	written, sent int64
}

func (w *writebackFile) Write(p []byte) (int, error) {
	n, err := w.file.Write(p)
	w.written += int64(n)
	if w.written-w.sent >= writebackStep {
		// Only a hint: a failure shows again in the sync that follows.
		_ = unix.SyncFileRange(int(w.file.Fd()), w.sent, w.written-w.sent, unix.SYNC_FILE_RANGE_WRITE)
		w.sent = w.written
	}
	return n, err
}

// writeSections writes the memory frames and the metadata to out.
func writeSections(out io.Writer, img *Image, src MemorySource, link *baseLink) ([]fileEntry, *index, error) {
	memory := newHashWriter(memoryFile, out)
	x, err := encodeMemory(&memory, img, src, link != nil)
	if err != nil {
		return nil, nil, err
	}
	if link != nil {
		x.addLinked(link)
	}

	meta, err := json.Marshal(img)
	if err != nil {
		return nil, nil, fmt.Errorf("encode image metadata: %w", err)
	}
	packed, err := packIndex(x)
	if err != nil {
		return nil, nil, err
	}
	files := []fileEntry{memory.entry()}
	for _, section := range []struct {
		name string
		data []byte
	}{{imageFile, meta}, {mapsFile, img.Maps}, {indexFile, packed}} {
		if _, err := out.Write(section.data); err != nil {
			return nil, nil, fmt.Errorf("write %s: %w", section.name, err)
		}
		files = append(files, fileEntry{Name: section.name, Size: uint64(len(section.data)), Hash: xxhash.Sum64(section.data)})
	}
	return files, x, nil
}

// dataSize returns the size of a data file holding files back to back.
func dataSize(files []fileEntry) uint64 {
	var size uint64
	for _, entry := range files {
		size += entry.Size
	}
	return size
}

// sectionOffset returns where the section of the named file starts in the
// data file of m.
func sectionOffset(m *manifest, name string) uint64 {
	var off uint64
	for _, entry := range m.Files {
		if entry.Name == name {
			break
		}
		off += entry.Size
	}
	return off
}

// readInfo reads and checks the manifest file proc/name, which must
// describe the snapshot name of process id, and checks that its data file
// has the size the manifest gives and that the data files it points into
// exist. Info.Stored is the size of the manifest and the data file. A
// missing manifest, or an entry that is not a regular file, gives an error
// wrapping os.ErrNotExist; any other damage one wrapping ErrCorrupt.
func readInfo(proc, name string, id ProcessID) (Info, *manifest, error) {
	path := filepath.Join(proc, name)
	stat, err := os.Lstat(path)
	if err != nil {
		return Info{}, nil, err
	}
	if !stat.Mode().IsRegular() {
		return Info{}, nil, fmt.Errorf("%s is a %v, not a manifest: %w", path, stat.Mode().Type(), os.ErrNotExist)
	}

	data, err := readAtMost(path, maxManifestSize)
	if err != nil {
		return Info{}, nil, err
	}
	m, err := parseManifest(data)
	if err != nil {
		return Info{}, nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	if m.Info.Name != name || m.Info.Process != id {
		return Info{}, nil, fmt.Errorf("manifest %s describes snapshot %q of pid %d start time %d: %w",
			path, m.Info.Name, m.Info.Process.PID, m.Info.Process.StartTime, ErrCorrupt)
	}

	size, err := checkDataFiles(proc, m)
	if err != nil {
		return Info{}, nil, fmt.Errorf("snapshot %s: %w", path, err)
	}
	info := m.Info
	info.Stored = uint64(len(data)) + size
	return info, m, nil
}

// checkDataFiles checks the data file of m and the presence of its
// sources, and returns the size of the data file.
func checkDataFiles(proc string, m *manifest) (uint64, error) {
	path := filepath.Join(proc, dataFileName(m.Data))
	stat, err := os.Lstat(path)
	if err != nil {
		return 0, fmt.Errorf("data file: %v: %w", err, ErrCorrupt)
	}
	if want := dataSize(m.Files); !stat.Mode().IsRegular() || uint64(stat.Size()) != want {
		return 0, fmt.Errorf("data file %s is %d bytes (type %v), expected %d from the manifest: %w",
			path, stat.Size(), stat.Mode().Type(), want, ErrCorrupt)
	}

	for _, id := range m.Sources {
		if _, err := os.Lstat(filepath.Join(proc, dataFileName(id))); err != nil {
			return 0, fmt.Errorf("data file of another snapshot it points into: %v: %w", err, ErrCorrupt)
		}
	}
	return uint64(stat.Size()), nil
}

// openLocal opens the data file of the committed snapshot proc/name, whose
// manifest is m, reads and checks its metadata, and opens the data files
// of other snapshots that its index points into.
func openLocal(proc string, info Info, m *manifest) (*Snapshot, error) {
	data, err := openData(proc, m.Data)
	if err != nil {
		return nil, err
	}
	img, x, err := readMetadata(m, func(entry fileEntry) ([]byte, error) {
		return readSection(data, sectionOffset(m, entry.Name), entry)
	})
	if err != nil {
		data.Close()
		return nil, err
	}

	var sources []memoryObject
	for _, id := range x.sources {
		source, err := openData(proc, id)
		if err != nil {
			closeAll(data, sources)
			return nil, err
		}
		sources = append(sources, source)
	}

	snap, err := newSnapshot(filepath.Join(proc, info.Name), info, m, img, x, data, sources)
	if err != nil {
		closeAll(data, sources)
		return nil, err
	}
	return snap, nil
}

// openData opens the data file with the given id in proc. A missing file
// gives an error wrapping ErrCorrupt: a manifest names it.
func openData(proc, id string) (*os.File, error) {
	path := filepath.Join(proc, dataFileName(id))
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open data file %s: %v: %w", path, err, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("open data file %s: %w", path, err)
	}
	return file, nil
}

// closeAll closes the files of a failed load, dropping their errors
// because the load already failed.
func closeAll(data memoryObject, sources []memoryObject) {
	_ = data.Close()
	for _, source := range sources {
		_ = source.Close()
	}
}

// readSection reads the section of entry at off in a data file and checks
// its size and hash.
func readSection(file *os.File, off uint64, entry fileEntry) ([]byte, error) {
	data := make([]byte, entry.Size)
	if _, err := file.ReadAt(data, int64(off)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s of %s lies past the end of the file: %w", entry.Name, file.Name(), ErrCorrupt)
		}
		return nil, fmt.Errorf("read %s of %s: %w", entry.Name, file.Name(), err)
	}
	if err := checkContents(entry.Name+" of "+file.Name(), data, entry); err != nil {
		return nil, err
	}
	return data, nil
}
