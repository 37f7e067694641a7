package snapshot

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// ErrCorrupt is wrapped by every error about stored data that fails its
// checks: a checksum, a length, or a format rule. It wraps unix.EIO, so a
// caller that maps errors to errno values reports an I/O error.
var ErrCorrupt = fmt.Errorf("snapshot data corrupt: %w", unix.EIO)

// Names of the parts of a snapshot: its manifest and the data files the
// manifest lists. In a bucket each is an object. In a directory the
// manifest is a file and the others are sections of one data file.
const (
	manifestFile = "manifest"
	imageFile    = "image.json"
	mapsFile     = "maps"
	indexFile    = "index"
	memoryFile   = "memory"
)

// dataFiles are the files a manifest lists, in the order it lists them and
// a local data file holds them.
var dataFiles = []string{memoryFile, imageFile, mapsFile, indexFile}

const (
	manifestMagic   = "ckptfs-manifest"
	manifestVersion = 2

	// maxManifestSize bounds what readManifest reads; a real manifest is
	// well under 4 KiB.
	maxManifestSize = 1 << 20
)

// manifest is the part of a snapshot written last, which commits it. Its
// first line is "ckptfs-manifest VERSION xxh64=HASH", where HASH is the
// xxhash64 of the JSON body that follows, so a damaged manifest is detected
// before any of its fields is used.
type manifest struct {
	Version int         `json:"version"`
	Info    Info        `json:"info"` // Stored is always zero here
	Files   []fileEntry `json:"files"`

	// Data is the id of the snapshot's data: the name of its data file in
	// a directory, of its upload in a bucket. Ids are random and never
	// reused, unlike snapshot names.
	Data string `json:"data"`

	// Sources are the ids of the data of other snapshots whose frames the
	// index uses, as in the index's sources table.
	Sources []string `json:"sources,omitempty"`
}

// fileEntry records the size and xxhash64 of one file of a snapshot.
type fileEntry struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
	Hash uint64 `json:"xxh64,string"`
}

// encodeManifest returns the bytes of the manifest file for m.
func encodeManifest(m *manifest) ([]byte, error) {
	body, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	body = append(body, '\n')

	header := fmt.Sprintf("%s %d xxh64=%016x\n", manifestMagic, m.Version, xxhash.Sum64(body))
	return append([]byte(header), body...), nil
}

// parseManifest decodes and checks the bytes of a manifest file. Every error
// wraps ErrCorrupt.
func parseManifest(data []byte) (*manifest, error) {
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("manifest of %d bytes exceeds %d: %w", len(data), maxManifestSize, ErrCorrupt)
	}
	header, body, ok := bytes.Cut(data, []byte{'\n'})
	if !ok {
		return nil, fmt.Errorf("manifest has no header line: %w", ErrCorrupt)
	}

	version, hash, err := parseManifestHeader(string(header))
	if err != nil {
		return nil, err
	}
	if got := xxhash.Sum64(body); got != hash {
		return nil, fmt.Errorf("manifest body has hash %016x, expected %016x from the header: %w", got, hash, ErrCorrupt)
	}

	m := &manifest{}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return nil, fmt.Errorf("decode manifest: %v: %w", err, ErrCorrupt)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("manifest has data after its JSON body: %w", ErrCorrupt)
	}
	if m.Version != version {
		return nil, fmt.Errorf("manifest body has version %d, expected %d from the header: %w", m.Version, version, ErrCorrupt)
	}

	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// parseManifestHeader parses "ckptfs-manifest 1 xxh64=0123456789abcdef".
func parseManifestHeader(header string) (version int, hash uint64, err error) {
	fields := strings.Split(header, " ")
	if len(fields) != 3 || fields[0] != manifestMagic {
		return 0, 0, fmt.Errorf("manifest header %.80q is not %q: %w", header, manifestMagic+" VERSION xxh64=HASH", ErrCorrupt)
	}
	if fields[1] != strconv.Itoa(manifestVersion) {
		return 0, 0, fmt.Errorf("manifest format version %.20q is not the supported %d: %w", fields[1], manifestVersion, ErrCorrupt)
	}

	hex, ok := strings.CutPrefix(fields[2], "xxh64=")
	if !ok || len(hex) != 16 || strings.ToLower(hex) != hex {
		return 0, 0, fmt.Errorf("manifest header hash %.40q is not 16 lowercase hex digits: %w", fields[2], ErrCorrupt)
	}
	hash, err = strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("manifest header hash %q: %v: %w", hex, err, ErrCorrupt)
	}
	return manifestVersion, hash, nil
}

// check applies the rules the JSON decoder cannot.
func (m *manifest) check() error {
	if err := ValidName(m.Info.Name); err != nil {
		return fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if m.Info.Stored != 0 {
		return fmt.Errorf("manifest records a stored size: %w", ErrCorrupt)
	}
	if m.Info.Threads < 0 || m.Info.Regions < 0 || m.Info.Process.PID <= 0 {
		return fmt.Errorf("manifest has a negative count or a pid below 1: %w", ErrCorrupt)
	}

	if !validDataID(m.Data) {
		return fmt.Errorf("manifest data id %.40q is not %d lowercase hex digits: %w", m.Data, dataIDLen, ErrCorrupt)
	}
	seen := map[string]bool{m.Data: true}
	for _, id := range m.Sources {
		if !validDataID(id) || seen[id] {
			return fmt.Errorf("manifest source %.40q is not %d lowercase hex digits or repeats an id: %w", id, dataIDLen, ErrCorrupt)
		}
		seen[id] = true
	}

	if len(m.Files) != len(dataFiles) {
		return fmt.Errorf("manifest lists %d files, expected %d: %w", len(m.Files), len(dataFiles), ErrCorrupt)
	}
	for i, name := range dataFiles {
		if m.Files[i].Name != name {
			return fmt.Errorf("manifest file %d is %.40q, expected %q: %w", i, m.Files[i].Name, name, ErrCorrupt)
		}
	}
	return nil
}

// file returns the entry of the named file.
func (m *manifest) file(name string) fileEntry {
	for _, entry := range m.Files {
		if entry.Name == name {
			return entry
		}
	}
	panic("snapshot: manifest checked without file " + name)
}

// readAtMost reads a whole file that must not exceed limit bytes.
func readAtMost(path string, limit int64) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer file.Close()

	data, err := io.ReadAll(io.LimitReader(file, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s exceeds %d bytes: %w", path, limit, ErrCorrupt)
	}
	return data, nil
}

// checkContents checks the size and hash of the contents of one file listed
// in a manifest; where names the file in the error.
func checkContents(where string, data []byte, entry fileEntry) error {
	if uint64(len(data)) != entry.Size {
		return fmt.Errorf("%s is %d bytes, expected %d from the manifest: %w", where, len(data), entry.Size, ErrCorrupt)
	}
	if got := xxhash.Sum64(data); got != entry.Hash {
		return fmt.Errorf("%s has hash %016x, expected %016x from the manifest: %w", where, got, entry.Hash, ErrCorrupt)
	}
	return nil
}

// dataIDLen is the number of hex digits of a data id.
const dataIDLen = 32

// newDataID returns a new random data id.
func newDataID() string {
	random := make([]byte, dataIDLen/2)
	rand.Read(random)
	return hex.EncodeToString(random)
}

// validDataID reports whether id is dataIDLen lowercase hex digits.
func validDataID(id string) bool {
	if len(id) != dataIDLen {
		return false
	}
	for _, c := range []byte(id) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
