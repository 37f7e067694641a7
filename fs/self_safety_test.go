package fs

import (
	"os/exec"
	"path/filepath"
	"testing"

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
