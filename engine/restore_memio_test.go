package engine

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestPageCollector(t *testing.T) {
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, pageSize) }
	c := newPageCollector(4)
	c.add(0x10000, page('a'))
	c.add(0x11000, page('b'))
	c.add(0x13000, page('c'))
	c.add(0x14000, page('d'))

	want := []memChunk{
		{0x10000, append(page('a'), page('b')...)},
		{0x13000, append(page('c'), page('d')...)},
	}
	if len(c.chunks) != len(want) {
		t.Fatalf("%d chunks, want %d", len(c.chunks), len(want))
	}
	for i, w := range want {
		if c.chunks[i].addr != w.addr || !bytes.Equal(c.chunks[i].data, w.data) {
			t.Errorf("chunk %d at %#x with %d bytes, want %#x with %d bytes of %q", i, c.chunks[i].addr, len(c.chunks[i].data), w.addr, len(w.data), w.data[:1])
		}
	}
	if cap(c.buf) != 4*pageSize {
		t.Errorf("buffer capacity %d after adding 4 pages, want %d: the buffer grew", cap(c.buf), 4*pageSize)
	}
}

// TestWriteChunksReadOnly writes one batch of chunks into a writable and
// a read-only private mapping. process_vm_writev stops at the read-only
// page, and the rest of the batch goes through /proc/PID/mem.
func TestWriteChunksReadOnly(t *testing.T) {
	p, ready := startMemory(t)
	p.send(t, "change", "changed ")
	a, c := parseAddr(t, ready["a"]), parseAddr(t, ready["c"])
	if line := mapsLine(t, p.PID, c); !strings.Contains(line, " r--p ") {
		t.Fatalf("region C after change: %q, want r--p", line)
	}

	chunks := []memChunk{
		{a, bytes.Repeat([]byte{'1'}, pageSize)},
		{c, bytes.Repeat([]byte{'2'}, 2*pageSize)},
		{a + pageSize, bytes.Repeat([]byte{'3'}, pageSize)},
	}
	op, err := Begin(p.PID, testLogger(t))
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	err = op.do(func() error {
		if err := op.waitStops(); err != nil {
			return err
		}
		return op.writeChunks(chunks)
	})
	op.Close()
	if err != nil {
		t.Fatalf("write chunks: %v", err)
	}

	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, ch := range chunks {
		got := make([]byte, len(ch.data))
		if _, err := mem.ReadAt(got, int64(ch.addr)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ch.data) {
			t.Errorf("memory at %#x after the write does not hold the %d bytes of %q written", ch.addr, len(ch.data), ch.data[:1])
		}
	}
	checkRunning(t, p.Proc)
}
