package fs

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

const nobody = 65534

func TestAccessAsNobody(t *testing.T) {
	m := newMount(t)
	rootTarget := startTarget(t, 0)
	m.mustWrite("1\n", rootTarget.PID, "capture")

	// A shell running as nobody lists the mount, tries the root process and
	// its snapshot, captures a child of its own, then captures itself.
	script := `
mnt=$1 root=$2
ls "$mnt"; echo listed
echo 1 > "$mnt/$root/capture" && echo "root-capture ok" || echo "root-capture failed"
cat "$mnt/$root/snap-1/info" > /dev/null && echo "root-read ok" || echo "root-read failed"
sleep 1000 & child=$!
echo "child $child"
echo 1 > "$mnt/$child/capture" && echo "child-capture ok" || echo "child-capture failed"
kill $child
echo 1 > "$mnt/self/capture"; echo "self $?"
read x
`
	cmd := exec.Command("sh", "-c", script, "sh", m.dir, strconv.Itoa(rootTarget.PID))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	sh := testproc.StartCmd(t, cmd)
	t.Cleanup(func() { stdin.Close() })

	var listed []string
	for line := sh.Line(); line != "listed"; line = sh.Line() {
		listed = append(listed, line)
	}
	if slices.Contains(listed, strconv.Itoa(rootTarget.PID)) {
		t.Errorf("nobody sees root's pid %d in %v", rootTarget.PID, listed)
	}
	if !slices.Contains(listed, strconv.Itoa(sh.PID)) || !slices.Contains(listed, "self") {
		t.Errorf("nobody's listing %v lacks its own pid %d or self", listed, sh.PID)
	}

	if got := sh.Line(); got != "root-capture failed" {
		t.Errorf("nobody's capture of a root process: %s", got)
	}
	if got := sh.Line(); got != "root-read failed" {
		t.Errorf("nobody's read of a root snapshot: %s", got)
	}
	child, err := strconv.Atoi(sh.Expect("child "))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if got := sh.Line(); got != "child-capture ok" {
		t.Errorf("nobody's capture of its own child: %s\n%s", got, stderr)
	}
	if got := sh.Expect("self "); got != "0" {
		t.Errorf("nobody's self-capture exited %s\n%s", got, stderr)
	}
	if !strings.Contains(stderr.String(), "Permission denied") {
		t.Errorf("stderr does not report EACCES:\n%s", stderr)
	}

	status := keyValues(m.waitStatus(sh.PID))
	if status["result"] != "ok" {
		t.Fatalf("self-capture as nobody: %v", status)
	}
	fi, err := os.Stat(m.path(sh.PID, "snap-1", "info"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || fi.Mode().Perm() != 0o400 {
		t.Errorf("snapshot info owned by %d mode %v, want %d 0400", st.Uid, fi.Mode(), nobody)
	}
}
