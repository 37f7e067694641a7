package fs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// pagesTarget is a running trk_pages, whose buffer of 256 pages the test
// rewrites page by page over its stdin.
type pagesTarget struct {
	*testproc.Proc
	in   io.WriteCloser
	addr uint64
}

func startPagesTarget(t *testing.T) *pagesTarget {
	t.Helper()
	cmd := exec.Command(testproc.Build(t, "trk_pages"))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { in.Close() })
	addr, _, _ := strings.Cut(strings.TrimPrefix(p.Expect("ready addr="), "0x"), " ")
	return &pagesTarget{Proc: p, in: in, addr: parseHex(t, addr)}
}

// do sends one command and returns the rest of the reply line.
func (pt *pagesTarget) do(t *testing.T, command, reply string) string {
	t.Helper()
	if _, err := io.WriteString(pt.in, command+"\n"); err != nil {
		t.Fatalf("send %q to pid %d: %v", command, pt.PID, err)
	}
	return pt.Expect(reply)
}

// page reads page i of the buffer from the memory file of a snapshot.
func (pt *pagesTarget) page(t *testing.T, m *testMount, snap string, i int) []byte {
	t.Helper()
	region := containing(t, parseMaps(t, m.read(pt.PID, snap, "maps")), pt.addr)
	f, err := os.Open(m.path(pt.PID, snap, "memory", fmt.Sprintf("%x-%x", region.start, region.end)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, int64(pt.addr-region.start)+int64(i)*4096); err != nil {
		t.Fatalf("read page %d of %s: %v", i, snap, err)
	}
	return buf
}

func TestIncrementalSnapshots(t *testing.T) {
	m := newMount(t)
	pt := startPagesTarget(t)

	m.mustWrite("a", pt.PID, "capture")
	pt.do(t, "w 3 200", "wrote")
	pt.do(t, "z 50", "dropped")
	m.mustWrite("b", pt.PID, "capture")

	a, b := keyValues(m.read(pt.PID, "a", "info")), keyValues(m.read(pt.PID, "b", "info"))
	if a["base"] != "" || b["base"] != "a" {
		t.Fatalf("info base: a %q, b %q; want none and a", a["base"], b["base"])
	}
	if b["base_captured"] != a["captured"] {
		t.Errorf("b has base_captured %q, want a's captured %q", b["base_captured"], a["captured"])
	}
	if got := pt.page(t, m, "b", 3); !bytes.Equal(got, bytes.Repeat([]byte{200}, 4096)) {
		t.Errorf("page 3 of b starts %d, want 200s", got[0])
	}
	if got := pt.page(t, m, "b", 7); !bytes.Equal(got, bytes.Repeat([]byte{8}, 4096)) {
		t.Errorf("page 7 of b (kept from a) starts %d, want 8s", got[0])
	}
	if got := pt.page(t, m, "b", 50); !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("dropped page 50 of b starts %d, want zeros", got[0])
	}

	// Roll back to b after more writes, then remove a: b stays whole.
	want := pt.do(t, "sum", "sum ")
	pt.do(t, "w 3 1", "wrote")
	pt.do(t, "w 9 1", "wrote")
	m.mustWrite("latest", pt.PID, "restore")
	if got := pt.do(t, "sum", "sum "); got != want {
		t.Errorf("hash after restoring latest (b) %s, want %s", got, want)
	}
	if got := keyValues(m.read(pt.PID, "status"))["snapshot"]; got != "b" {
		t.Errorf("status names snapshot %q after restoring latest, want b", got)
	}
	if err := os.Remove(m.path(pt.PID, "a")); err != nil {
		t.Fatalf("rmdir a: %v", err)
	}
	if got := pt.page(t, m, "b", 7); got[0] != 8 {
		t.Errorf("page 7 of b after removing a starts %d, want 8", got[0])
	}

	// The next capture is relative to b, the snapshot restored last.
	pt.do(t, "w 4 44", "wrote")
	m.mustWrite("c", pt.PID, "capture")
	if base := keyValues(m.read(pt.PID, "c", "info"))["base"]; base != "b" {
		t.Errorf("c has base %q, want b", base)
	}

	// With its base removed, a capture is full again.
	if err := os.Remove(m.path(pt.PID, "c")); err != nil {
		t.Fatalf("rmdir c: %v", err)
	}
	m.mustWrite("d", pt.PID, "capture")
	if base := keyValues(m.read(pt.PID, "d", "info"))["base"]; base != "" {
		t.Errorf("d has base %q after its base was removed, want a full snapshot", base)
	}
	if got := pt.page(t, m, "d", 4); got[0] != 44 {
		t.Errorf("page 4 of d starts %d, want 44", got[0])
	}
}
