package fs

import (
	"fmt"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStatusFailureHints(t *testing.T) {
	cases := []struct {
		errno unix.Errno
		want  string
	}{
		{unix.EBUSY, "hint: another capture or restore"},
		{unix.ENOENT, "hint: ls this directory"},
		{unix.EEXIST, "hint: choose another name"},
		{unix.ENOSPC, "hint: free space in the store"},
	}
	for _, c := range cases {
		rec := opRecord{Kind: "capture", Err: fmt.Errorf("capture pid 7: %w", c.errno)}
		text := string(rec.render())
		if !strings.Contains(text, "result: failed: "+errnos.Name(c.errno)+": ") {
			t.Errorf("%v: status lacks the result line:\n%s", c.errno, text)
		}
		if !strings.Contains(text, c.want) {
			t.Errorf("%v: status lacks %q:\n%s", c.errno, c.want, text)
		}
	}

	ok := opRecord{Kind: "capture"}
	if text := string(ok.render()); strings.Contains(text, "hint:") {
		t.Errorf("status of a success has a hint:\n%s", text)
	}
}
