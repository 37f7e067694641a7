package fs

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// selfScript captures the shell itself, then restores it once. The marker
// file, which a restore does not roll back, shows the second pass that the
// restore happened. After the restore the shell goes on from the return of
// its capture write with x=1 again.
const selfScript = `
mnt=$1 mark=$2
x=1
echo 1 > "$mnt/self/capture"
echo "after capture x=$x"
if [ ! -e "$mark" ]; then
	: > "$mark"
	x=2
	echo snap-1 > "$mnt/self/restore"
	echo "restore returned x=$x"
fi
echo "end x=$x"
`

func TestSelfCaptureAndRestoreFromBash(t *testing.T) {
	m := newMount(t)
	mark := filepath.Join(t.TempDir(), "restored")

	// timeout(1) ends the shell if a self-operation deadlocks, and
	// testproc's line timeout fails the test before that.
	cmd := exec.Command("timeout", "60", "bash", "-c", selfScript, "bash", m.dir, mark)
	sh := testproc.StartCmd(t, cmd)

	want := []string{"after capture x=1", "after capture x=1", "end x=1"}
	for i, line := range want {
		if got := sh.Line(); got != line {
			t.Fatalf("line %d: %q, want %q\nmount status of the shell:\n%s", i+1, got, line, lastStatus(m))
		}
	}

	// The snapshot's point is the return of the shell's write(2) of "1\n".
	infos, err := m.store.List(0)
	if err != nil || len(infos) != 1 {
		t.Fatalf("store lists %v (%v), want the shell's one snapshot", infos, err)
	}
	snap, err := m.store.Load(infos[0].Process, "snap-1")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	regs := snap.Image.Threads[0].Regs
	if regs.Orig_rax != 1 || regs.Rax != 2 {
		t.Errorf("snapshot registers orig_rax %d rax %d, want write(2) returning 2", regs.Orig_rax, regs.Rax)
	}
}

// lastStatus returns the text of every status record the mount holds.
func lastStatus(m *testMount) string {
	m.srv.state.mu.Lock()
	defer m.srv.state.mu.Unlock()
	text := ""
	for _, ps := range m.srv.state.procs {
		if rec, _ := ps.snapshotState(); rec != nil {
			text += string(rec.render())
		}
	}
	return text
}

// selfFailScript captures the shell while it holds a pipe on fd 7, closes
// the pipe, and requests its own restore, which the restore must reject
// after it froze the shell: a closed pipe cannot be reopened. The writer
// of the pipe exits at once, so the script leaves no process behind.
const selfFailScript = `
exec 2>&1
mnt=$1
exec 7< <(:)
echo 1 > "$mnt/self/capture"
exec 7<&-
if echo snap-1 > "$mnt/self/restore"; then
	echo "restore write succeeded"
else
	echo "restore write failed"
fi
`

func TestSelfRestoreFailureReachesWriter(t *testing.T) {
	m := newMount(t)
	cmd := exec.Command("timeout", "60", "bash", "-c", selfFailScript, "bash", m.dir)
	sh := testproc.StartCmd(t, cmd)

	var lines []string
	for len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "restore write ") {
		lines = append(lines, sh.Line())
	}
	if got := lines[len(lines)-1]; got != "restore write failed" {
		t.Fatalf("shell printed %q, want the restore write to fail\nmount status of the shell:\n%s", lines, lastStatus(m))
	}
	if !strings.Contains(strings.Join(lines, "\n"), "Operation not supported") {
		t.Errorf("shell printed %q, want the write's EOPNOTSUPP", lines)
	}

	// The worker's result reaches the status file just after the shell
	// has gone on.
	deadline := time.Now().Add(pollLimit)
	for strings.Contains(lastStatus(m), "result: running") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if status := lastStatus(m); !strings.Contains(status, "fd 7") {
		t.Errorf("status %q, want the reason naming fd 7", status)
	}
}

// selfLatestScript captures the shell and at once reads its latest link
// with a command of its own, ten times over.
const selfLatestScript = `
mnt=$1
for i in 1 2 3 4 5 6 7 8 9 10; do
	echo "s$i" > "$mnt/self/capture"
	echo "latest $(readlink "$mnt/$$/latest")"
done
`

func TestSelfCaptureVisibleAtOnce(t *testing.T) {
	m := newMount(t)
	cmd := exec.Command("timeout", "60", "bash", "-c", selfLatestScript, "bash", m.dir)
	sh := testproc.StartCmd(t, cmd)

	for i := 1; i <= 10; i++ {
		if got, want := sh.Line(), fmt.Sprintf("latest s%d", i); got != want {
			t.Errorf("after capture %d the shell read %q, want %q", i, got, want)
		}
	}
}
