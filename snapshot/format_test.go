package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// validIndex returns the index of a saved test image.
func validIndex(t testing.TB) *index {
	t.Helper()
	s, _ := openTestStore(t)
	img := testImage(1000, 30)
	if _, err := s.Save(img, "x"); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return load(t, s, img.Process, "x").index
}

func TestIndexRoundTrip(t *testing.T) {
	x := validIndex(t)
	encoded := x.encode()
	parsed, err := parseIndex(encoded)
	if err != nil {
		t.Fatalf("parseIndex: %v", err)
	}
	if !bytes.Equal(parsed.encode(), encoded) {
		t.Errorf("index changed through encode and parse")
	}
}

func TestParseIndexRejects(t *testing.T) {
	good := validIndex(t).encode()
	mutate := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(good))
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"future version", mutate(func(b []byte) []byte { b[8] = 2; return b })},
		{"truncated", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"huge frame count", mutate(func(b []byte) []byte { b[19] = 0xff; return b })},
		{"frame gap", mutate(func(b []byte) []byte { b[indexHeaderSize+frameEntrySize] ^= 1; return b })},
		{"zero compressed length", mutate(func(b []byte) []byte {
			copy(b[indexHeaderSize+8:], []byte{0, 0, 0, 0})
			return b
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseIndex(tt.data); !errors.Is(err, ErrCorrupt) {
				t.Errorf("parseIndex = %v, want ErrCorrupt", err)
			}
		})
	}
}

func FuzzParseIndex(f *testing.F) {
	f.Add(validIndex(f).encode())
	f.Add((&index{}).encode())
	f.Add((&index{regions: [][]extent{{{Off: 0, Len: 4096, Kind: extentZero}}, nil}}).encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := parseIndex(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("parseIndex error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(x.encode(), data) {
			t.Fatalf("accepted index does not encode back to its input")
		}
	})
}

func validManifest(t testing.TB) []byte {
	t.Helper()
	img := testImage(1001, 31)
	m := &manifest{Version: manifestVersion, Info: newInfo(img, "snap-1")}
	for _, name := range dataFiles {
		m.Files = append(m.Files, fileEntry{Name: name, Size: 1234, Hash: 0xfedcba9876543210})
	}
	data, err := encodeManifest(m)
	if err != nil {
		t.Fatalf("encodeManifest: %v", err)
	}
	return data
}

func TestManifestRoundTrip(t *testing.T) {
	data := validManifest(t)
	m, err := parseManifest(data)
	if err != nil {
		t.Fatalf("parseManifest: %v", err)
	}
	again, err := encodeManifest(m)
	if err != nil {
		t.Fatalf("encodeManifest: %v", err)
	}
	if !bytes.Equal(again, data) {
		t.Errorf("manifest changed through parse and encode:\n%s\n%s", data, again)
	}
	if m.file(memoryFile).Hash != 0xfedcba9876543210 {
		t.Errorf("memory hash = %x", m.file(memoryFile).Hash)
	}
}

func TestParseManifestRejects(t *testing.T) {
	good := validManifest(t)
	header, body, _ := bytes.Cut(good, []byte{'\n'})
	if _, err := parseManifest(withHeader(body)); err != nil {
		t.Fatalf("parseManifest of an intact body with a new header: %v", err)
	}

	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"no header", body},
		{"flipped body byte", append(append(bytes.Clone(header), '\n'), bytes.Replace(body, []byte("target"), []byte("tArget"), 1)...)},
		{"future version", bytes.Replace(good, []byte("ckptfs-manifest 1 "), []byte("ckptfs-manifest 2 "), 1)},
		{"uppercase hash", append(append(bytes.ToUpper(header), '\n'), body...)},
		{"unknown field", withHeader(bytes.Replace(body, []byte(`"version"`), []byte(`"extra": 1, "version"`), 1))},
		{"trailing JSON", withHeader(append(bytes.Clone(body), []byte("{}")...))},
		{"bad name", withHeader(bytes.Replace(body, []byte(`"snap-1"`), []byte(`"latest"`), 1))},
		{"missing file", withHeader(bytes.Replace(body, []byte(`"maps"`), []byte(`"mapz"`), 1))},
		{"stored set", withHeader(bytes.Replace(body, []byte(`"stored": 0`), []byte(`"stored": 5`), 1))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseManifest(tt.data); !errors.Is(err, ErrCorrupt) {
				t.Errorf("parseManifest = %v, want ErrCorrupt", err)
			}
		})
	}
}

// withHeader puts a correct header on an arbitrary body, so a test reaches
// the checks behind the hash.
func withHeader(body []byte) []byte {
	header := fmt.Sprintf("%s %d xxh64=%016x\n", manifestMagic, manifestVersion, xxhash.Sum64(body))
	return append([]byte(header), body...)
}

func FuzzParseManifest(f *testing.F) {
	f.Add(validManifest(f))
	f.Add([]byte("ckptfs-manifest 1 xxh64=0000000000000000\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("parseManifest error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		encoded, err := encodeManifest(m)
		if err != nil {
			t.Fatalf("encodeManifest of an accepted manifest: %v", err)
		}
		again, err := parseManifest(encoded)
		if err != nil {
			t.Fatalf("re-encoded manifest rejected: %v", err)
		}
		reencoded, err := encodeManifest(again)
		if err != nil || !bytes.Equal(reencoded, encoded) {
			t.Fatalf("manifest not stable through encode and parse: %v", err)
		}
	})
}
