package engine

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// reexecScript prints "ready", waits for a line on stdin, then runs itself
// again with execve, so the process keeps its pid, executable and (with
// address randomization off) every address.
const reexecScript = `
import os, sys
print("ready", flush=True)
sys.stdin.readline()
os.execv(sys.executable, [sys.executable, "-c", "import time; print('again', flush=True); time.sleep(600)"])
`

func TestRestoreRejectsSameProgramExec(t *testing.T) {
	cmd := exec.Command("setarch", "x86_64", "-R", "/usr/bin/python3", "-c", reexecScript)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testproc.StartCmd(t, cmd)
	p.Expect("ready")
	img := captureImage(t, p.PID)
	if img.ExecID == "" {
		t.Fatal("capture recorded no exec id")
	}

	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	p.Expect("again")
	_, err = Restore(p.PID, img, imageMemory{img}, nil, testLogger(t))
	var rej *RejectError
	if !errors.As(err, &rej) || !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "called execve") {
		t.Fatalf("restore after execve of the same program: %v, want EOPNOTSUPP naming execve", err)
	}
	if state := p.State(); state != "S" && state != "R" {
		t.Errorf("state %q after the rejected restore, want running or sleeping", state)
	}
}
