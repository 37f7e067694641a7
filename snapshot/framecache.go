package snapshot

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// cacheFrames is the number of decompressed frames a Snapshot keeps: 4 MiB
// of frames of frameSize. A FUSE read of 128 KiB spans two frames, and
// restore compares 256 KiB pieces on each CPU.
const cacheFrames = 64

// cachedFrame is one entry of a Snapshot's frame cache.
type cachedFrame struct {
	frame uint32
	buf   *frameBuf
}

// frameBuf holds the decompressed bytes of one frame. Its buffer goes back
// to framePool when the last user lets go of it: the cache, and each
// reader copying out of it.
type frameBuf struct {
	data []byte
	refs int // protected by Snapshot.mu
}

// decodedPool and readPool keep the buffers of decompressed and compressed
// frames between reads. Without them, each frame read allocates and clears
// fresh memory, which costs more than decompressing it.
var (
	decodedPool = sync.Pool{New: func() any { b := make([]byte, 0, frameSize); return &b }}
	readPool    = sync.Pool{New: func() any { b := make([]byte, 0, frameSize); return &b }}
)

// frame returns the decompressed bytes of frame n, from the cache when
// there. The caller must not modify them and calls release when done.
func (s *Snapshot) frame(n uint32) (*frameBuf, error) {
	if buf := s.cached(n); buf != nil {
		return buf, nil
	}

	// Two readers missing the same frame both decode it. That costs only
	// time, and keeps the lock free while decoding.
	data, err := s.decodeFrame(n)
	if err != nil {
		return nil, err
	}
	buf := &frameBuf{data: data, refs: 2} // the cache's and the caller's

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cache {
		if c.frame == n {
			c.buf.refs++
			buf.refs = 0
			recycle(buf.data)
			return c.buf, nil
		}
	}
	if len(s.cache) == cacheFrames {
		s.unref(s.cache[len(s.cache)-1].buf)
		s.cache = s.cache[:len(s.cache)-1]
	}
	s.cache = append(s.cache, cachedFrame{})
	copy(s.cache[1:], s.cache[:len(s.cache)-1])
	s.cache[0] = cachedFrame{frame: n, buf: buf}
	return buf, nil
}

// cached returns frame n from the cache, moved to the front, or nil.
func (s *Snapshot) cached(n uint32) *frameBuf {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range s.cache {
		if c.frame == n {
			copy(s.cache[1:k+1], s.cache[:k])
			s.cache[0] = c
			c.buf.refs++
			return c.buf
		}
	}
	return nil
}

// release ends a use of buf that frame returned.
func (s *Snapshot) release(buf *frameBuf) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unref(buf)
}

// unref drops one reference to buf and recycles its bytes after the last.
//
// Precondition: s.mu held.
func (s *Snapshot) unref(buf *frameBuf) {
	if buf.refs--; buf.refs == 0 {
		recycle(buf.data)
		buf.data = nil
	}
}

// recycle returns a frame buffer of the usual size to decodedPool.
func recycle(data []byte) {
	if cap(data) == frameSize {
		data = data[:0]
		decodedPool.Put(&data)
	}
}

// decodeFrame reads, decompresses and checks frame n, from this
// snapshot's memory or from that of the snapshot it points into.
func (s *Snapshot) decodeFrame(n uint32) ([]byte, error) {
	f := s.index.frames[n]
	memory, where := s.memory, "the memory"
	if f.Source != 0 {
		memory, where = s.sources[f.Source-1], "the memory of data "+s.index.sources[f.Source-1]
	}
	compressedp := readPool.Get().(*[]byte)
	defer readPool.Put(compressedp)
	compressed := grow(*compressedp, int(f.CLen))
	*compressedp = compressed[:0]
	if _, err := memory.ReadAt(compressed, int64(f.FileOff)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("frame %d lies past the end of %s: %w", n, where, ErrCorrupt)
		}
		return nil, fmt.Errorf("read frame %d from %s: %w", n, where, err)
	}

	dec, err := decoder()
	if err != nil {
		return nil, fmt.Errorf("create zstd decoder: %w", err)
	}
	var dst []byte
	if f.ULen <= frameSize {
		dst = *decodedPool.Get().(*[]byte)
	} else {
		dst = make([]byte, 0, f.ULen)
	}
	data, err := dec.DecodeAll(compressed, dst[:0])
	if err == nil && len(data) != int(f.ULen) {
		err = fmt.Errorf("frame %d decompressed to %d bytes, expected %d from the index", n, len(data), f.ULen)
	} else if err == nil && xxhash.Sum64(data) != f.Hash {
		err = fmt.Errorf("frame %d has hash %016x, expected %016x from the index", n, xxhash.Sum64(data), f.Hash)
	}
	if err != nil {
		recycle(dst)
		return nil, fmt.Errorf("decompress frame %d: %v: %w", n, err, ErrCorrupt)
	}
	return data, nil
}

// grow returns b resized to n bytes, reallocated when its capacity is
// smaller.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}
