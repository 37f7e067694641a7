package engine

import (
	"strings"
	"testing"
)

func FuzzParseMapsLine(f *testing.F) {
	f.Add("55dbad25b000-55dbad25d000 r--p 00000000 fe:00 247026                     /usr/bin/cat")
	f.Add("7fe3119f4000-7fe311b27000 rw-p 00000000 00:00 0 ")
	f.Add("7f0000000000-7f0000001000 rw-s 00002000 00:01 42                         /tmp/a b (deleted)")
	f.Fuzz(func(t *testing.T, line string) {
		r, err := parseMapsLine(line)
		if err != nil {
			return
		}
		if r.End < r.Start || len(r.Perms) != 4 {
			t.Errorf("parseMapsLine(%q) accepted %+v", line, r)
		}
		if r.Path != "" && !strings.HasSuffix(line, r.Path) {
			t.Errorf("path %q is not the end of %q", r.Path, line)
		}
	})
}

func FuzzParseSmapsFlags(f *testing.F) {
	f.Add([]byte("00400000-00401000 r-xp 00000000 08:01 12 /bin/x\nSize: 4 kB\nVmFlags: rd ex \n"))
	f.Add([]byte("VmFlags: rd\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseSmapsFlags(data)
	})
}

func FuzzParseFdinfo(f *testing.F) {
	f.Add([]byte("pos:\t0\nflags:\t0100002\nmnt_id:\t24\nino:\t3\n"))
	f.Add([]byte("pos:\t-1\nflags:\t9\nmnt_id:\tx\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseFdinfo(data)
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine("cat", map[int]string{22: "5"})))
	f.Add([]byte(statLine("a) (b", nil)))
	f.Add([]byte("1 () R"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseStat(data)
		if err == nil && strings.Count(string(data), "(") == 0 {
			t.Errorf("parseStat(%q) = %+v without a command name", data, st)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Name:\tcat\nState:\tR (running)\nTgid:\t1\nUid:\t0\t0\t0\t0\nUmask:\t0022\n"))
	f.Add([]byte("State:\t\nUid:\t1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseStatus(data)
	})
}

func FuzzPageRuns(f *testing.F) {
	f.Add(pagemapEntries(pmPresent, pmPresent, 0, pmSwapped, pmPresent|pmFileShare), uint64(0), true)
	f.Fuzz(func(t *testing.T, entries []byte, first uint64, anonOnly bool) {
		first %= 1 << 36
		runs := pageRuns(nil, entries, first, anonOnly)
		var prevEnd uint64
		for i, r := range runs {
			if r.Len == 0 || r.Off%pageSize != 0 || r.Len%pageSize != 0 || (i > 0 && r.Off <= prevEnd) {
				t.Fatalf("bad run %d %+v after end %#x", i, r, prevEnd)
			}
			prevEnd = r.Off + r.Len
		}
		if prevEnd > (first+uint64(len(entries)/8))*pageSize {
			t.Fatalf("runs end at %#x beyond the %d entries", prevEnd, len(entries)/8)
		}
	})
}
