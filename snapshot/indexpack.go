package snapshot

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// maxIndexSize bounds the decompressed size of an index file: 32 bytes an
// extent, and a 1 GiB process whose pages alternate between compressible
// and incompressible ones needs one extent a page, 8 MiB.
const maxIndexSize = 1 << 30

// indexDecoder decompresses index files, whose limit differs from that of
// the memory frames.
var indexDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxIndexSize))
})

// packIndex returns the index file of x: its encoding, compressed with
// zstd. The extents repeat a few patterns, so the file is many times
// smaller than the encoding, which matters most to an incremental
// snapshot: it lists an extent for every page it shares with its base.
func packIndex(x *index) ([]byte, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd encoder: %w", err)
	}
	return enc.EncodeAll(x.encode(), nil), nil
}

// unpackIndex decompresses and parses an index file. Every error wraps
// ErrCorrupt.
func unpackIndex(b []byte) (*index, error) {
	dec, err := indexDecoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd decoder: %w", err)
	}
	raw, err := dec.DecodeAll(b, nil)
	if err != nil {
		return nil, fmt.Errorf("decompress index: %v: %w", err, ErrCorrupt)
	}
	return parseIndex(raw)
}
