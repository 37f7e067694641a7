package engine

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

func TestCheckUnchangedAfterSetuid(t *testing.T) {
	p, stdin := startWithStdin(t, "safe_target")
	p.Expect("ready")
	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckUnchanged(p.PID, img); err != nil {
		t.Fatalf("CheckUnchanged right after the capture: %v", err)
	}

	if _, err := stdin.Write([]byte("u")); err != nil {
		t.Fatal(err)
	}
	if got := p.Expect("uid "); got != "65534" {
		t.Fatalf("target reports uid %s", got)
	}
	err = CheckUnchanged(p.PID, img)
	var reject *RejectError
	if !errors.As(err, &reject) || reject.Errno != unix.EOPNOTSUPP || !strings.Contains(err.Error(), "changed credentials") {
		t.Errorf("CheckUnchanged after setuid = %v, want an EOPNOTSUPP RejectError naming the credentials", err)
	}
}

func TestCheckUnchangedAfterExec(t *testing.T) {
	p, stdin := startWithStdin(t, "safe_target")
	p.Expect("ready")
	img, err := Capture(p.PID, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}

	// The same executable again: only the AT_RANDOM bytes tell it apart.
	if _, err := stdin.Write([]byte("e")); err != nil {
		t.Fatal(err)
	}
	p.Expect("ready")
	err = CheckUnchanged(p.PID, img)
	if !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "called execve") {
		t.Errorf("CheckUnchanged after execve of the same program = %v, want EOPNOTSUPP naming execve", err)
	}
}

func TestExitingSeesZombie(t *testing.T) {
	if Exiting(os.Getpid()) {
		t.Error("the test process reports itself exiting")
	}
	parent := testproc.Start(t, testproc.Build(t, "cap_zombie"))
	zombie, err := strconv.Atoi(parent.Expect("zombie "))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !Exiting(zombie); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("zombie %d never reported exiting", zombie)
		}
	}
}
