package testproc

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MemTarget is a running safe_mem: a large mapping whose page k holds
// seed + k in every 8-byte word, and a counter that goes up about once
// per millisecond.
type MemTarget struct {
	*Proc
	stdin io.WriteCloser
	Addr  uint64 // start of the mapping
	Size  uint64
}

// StartMem starts safe_mem with mib MiB, filled with random bytes when
// random is set, and waits until every page is written.
func StartMem(t testing.TB, mib int, random bool) *MemTarget {
	t.Helper()
	args := []string{strconv.Itoa(mib)}
	if random {
		args = append(args, "random")
	}
	cmd := exec.Command(Build(t, "safe_mem"), args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })
	mem := p.Expect("mem ")
	addr, err := strconv.ParseUint(strings.TrimPrefix(mem, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("parse mapping address %q: %v", mem, err)
	}
	p.Expect("ready")
	return &MemTarget{Proc: p, stdin: stdin, Addr: addr, Size: uint64(mib) << 20}
}

// Seeds reads the target's mapping through /proc/PID/mem and counts its
// pages by pattern seed. A mapping written whole by one fill has one seed.
func (mt *MemTarget) Seeds(t testing.TB) map[uint64]int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", mt.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	counts := map[uint64]int{}
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < mt.Size; off += uint64(len(buf)) {
		if _, err := f.ReadAt(buf, int64(mt.Addr+off)); err != nil {
			t.Fatalf("read memory of pid %d at %#x: %v", mt.PID, mt.Addr+off, err)
		}
		for page := 0; page < len(buf); page += 4096 {
			word := binary.LittleEndian.Uint64(buf[page:])
			counts[word-(off+uint64(page))/4096]++
		}
	}
	return counts
}

// Counter returns the target's counter.
func (mt *MemTarget) Counter(t testing.TB) int {
	t.Helper()
	if _, err := io.WriteString(mt.stdin, "g"); err != nil {
		t.Fatalf("send g to pid %d: %v", mt.PID, err)
	}
	n, err := strconv.Atoi(mt.Expect("counter "))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Touch makes the target write every page again with a new pattern, its
// seed 0x100 above the last one.
func (mt *MemTarget) Touch(t testing.TB) {
	t.Helper()
	if _, err := io.WriteString(mt.stdin, "t"); err != nil {
		t.Fatalf("send t to pid %d: %v", mt.PID, err)
	}
	mt.Expect("touched")
}

// CheckCounting fails unless the target replies and its counter goes up,
// and returns the counter.
func (mt *MemTarget) CheckCounting(t testing.TB, what string) int {
	t.Helper()
	first := mt.Counter(t)
	time.Sleep(20 * time.Millisecond)
	second := mt.Counter(t)
	if second <= first {
		t.Errorf("%s: counter stays at %d, want the target counting", what, first)
	}
	return second
}
