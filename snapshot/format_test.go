package snapshot

import (
	"bytes"
	"encoding/binary"
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

// linkedIndex returns an index whose frames lie in its own memory and in
// the data of two other snapshots.
func linkedIndex() *index {
	return &index{
		sources: []string{"00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"},
		frames: []frameEntry{
			{FileOff: 0, CLen: 100, ULen: 8192, Hash: 1},
			{FileOff: 100, CLen: 60, ULen: 4096, Hash: 2},
			{FileOff: 4096, CLen: 50, ULen: 4096, Hash: 3, Source: 2},
			{FileOff: 0, CLen: 70, ULen: 8192, Hash: 4, Source: 1},
		},
		regions: [][]extent{
			{
				{Off: 0, Len: 8192, Frame: 3, Kind: extentData},
				{Off: 8192, Len: 4096, Frame: 0, FrameOff: 4096, Kind: extentData},
				{Off: 12288, Len: 4096, Kind: extentZero},
			},
			{{Off: 4096, Len: 4096, Frame: 2, Kind: extentData}, {Off: 8192, Len: 4096, Frame: 1, Kind: extentData}},
		},
	}
}

func TestIndexRoundTrip(t *testing.T) {
	for _, x := range []*index{validIndex(t), linkedIndex()} {
		encoded := x.encode()
		parsed, err := parseIndex(encoded)
		if err != nil {
			t.Fatalf("parseIndex: %v", err)
		}
		if !bytes.Equal(parsed.encode(), encoded) {
			t.Errorf("index changed through encode and parse")
		}
	}
	for _, x := range []*index{validIndex(t), linkedIndex()} {
		packed, err := packIndex(x)
		if err != nil {
			t.Fatal(err)
		}
		unpacked, err := unpackIndex(packed)
		if err != nil {
			t.Fatalf("unpackIndex: %v", err)
		}
		if !bytes.Equal(unpacked.encode(), x.encode()) {
			t.Errorf("index changed through packIndex and unpackIndex")
		}
	}
	if _, err := unpackIndex(validIndex(t).encode()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("unpackIndex of an uncompressed index = %v, want ErrCorrupt", err)
	}
	if got := linkedIndex().dataSize(); got != 160 {
		t.Errorf("dataSize of the linked index = %d, want its own frames' 160", got)
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
		{"future version", mutate(func(b []byte) []byte { b[8] = indexVersion + 1; return b })},
		{"truncated", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"huge frame count", mutate(func(b []byte) []byte { b[19] = 0xff; return b })},
		{"frame gap", mutate(func(b []byte) []byte { b[indexHeaderSize+frameEntrySize] ^= 1; return b })},
		{"zero compressed length", mutate(func(b []byte) []byte {
			copy(b[indexHeaderSize+8:], []byte{0, 0, 0, 0})
			return b
		})},
	}
	linked := linkedIndex().encode()
	frame := func(k int) int { return indexHeaderSize + 2*sourceEntrySize + k*frameEntrySize }
	mutateLinked := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(linked))
	}
	tests = append(tests, []struct {
		name string
		data []byte
	}{
		{"header padding", mutateLinked(func(b []byte) []byte { b[28] = 1; return b })},
		{"repeated source", mutateLinked(func(b []byte) []byte {
			copy(b[indexHeaderSize+sourceEntrySize:], b[indexHeaderSize:indexHeaderSize+sourceEntrySize])
			return b
		})},
		{"source out of range", mutateLinked(func(b []byte) []byte { b[frame(2)+24] = 3; return b })},
		{"own frame after another's", mutateLinked(func(b []byte) []byte {
			// Frame 2 becomes the second own frame, at the offset that
			// follows frame 0, but after frame 1 of source 1.
			b[frame(1)+24] = 1
			binary.LittleEndian.PutUint64(b[frame(2):], 100)
			b[frame(2)+24] = 0
			return b
		})},
		{"frame padding", mutateLinked(func(b []byte) []byte { b[frame(3)+28] = 1; return b })},
		{"frame offset past 2^62", mutateLinked(func(b []byte) []byte { b[frame(3)+7] = 0x80; return b })},
	}...)
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
	f.Add(linkedIndex().encode())
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
	img.Base = "snap-0"
	m := &manifest{Version: manifestVersion, Info: newInfo(img, "snap-1"), Data: "0123456789abcdef0123456789abcdef",
		Sources: []string{"00112233445566778899aabbccddeeff"}}
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
		{"future version", bytes.Replace(good, []byte("ckptfs-manifest 2 "), []byte("ckptfs-manifest 3 "), 1)},
		{"uppercase hash", append(append(bytes.ToUpper(header), '\n'), body...)},
		{"unknown field", withHeader(bytes.Replace(body, []byte(`"version"`), []byte(`"extra": 1, "version"`), 1))},
		{"trailing JSON", withHeader(append(bytes.Clone(body), []byte("{}")...))},
		{"bad name", withHeader(bytes.Replace(body, []byte(`"snap-1"`), []byte(`"latest"`), 1))},
		{"missing file", withHeader(bytes.Replace(body, []byte(`"maps"`), []byte(`"mapz"`), 1))},
		{"stored set", withHeader(bytes.Replace(body, []byte(`"stored": 0`), []byte(`"stored": 5`), 1))},
		{"no data id", withHeader(bytes.Replace(body, []byte(`"0123456789abcdef0123456789abcdef"`), []byte(`""`), 1))},
		{"source repeats data id", withHeader(bytes.Replace(body, []byte(`"00112233445566778899aabbccddeeff"`),
			[]byte(`"0123456789abcdef0123456789abcdef"`), 1))},
		{"uppercase source", withHeader(bytes.Replace(body, []byte(`"00112233445566778899aabbccddeeff"`),
			[]byte(`"00112233445566778899AABBCCDDEEFF"`), 1))},
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
	f.Add([]byte("ckptfs-manifest 2 xxh64=0000000000000000\n{}"))
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
