package fs

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRestoreAfterSetuid(t *testing.T) {
	m := newMount(t)
	asNobody := newProber(t, nobody)
	tg := startSafeTarget(t, 0)
	m.mustWrite("as-root\n", tg.PID, "capture")

	if got := tg.command(t, "u", "uid "); got != "65534" {
		t.Fatalf("target reports uid %s after dropping to nobody", got)
	}

	// The live process is nobody's now, and dumpable, so nobody may act on
	// it. The snapshot still belongs to root.
	listed, res := asNobody.list(m.dir)
	if res != "ok" || !slices.Contains(listed, strconv.Itoa(tg.PID)) {
		t.Errorf("nobody's listing after the setuid: %v %s, want pid %d", listed, res, tg.PID)
	}
	wantResult(t, "nobody restores root's snapshot", asNobody.result("write", m.path(tg.PID, "restore"), "as-root\n"), "err EPERM")
	status := m.read(tg.PID, "status")
	if !strings.Contains(status, "result: failed: EPERM: ") || !strings.Contains(status, "uid 65534 may not use a snapshot of uid 0") {
		t.Errorf("status after nobody's restore of root's snapshot:\n%s", status)
	}
	wantResult(t, "nobody reads root's snapshot", asNobody.result("read", m.path(tg.PID, "as-root", "info")), "err EACCES")

	// Root may use both, but the credentials cannot be rolled back.
	wantErrno(t, "root restores across the setuid", m.write("as-root\n", tg.PID, "restore"), unix.EOPNOTSUPP)
	status = m.read(tg.PID, "status")
	if !strings.Contains(status, "result: failed: EOPNOTSUPP: ") || !strings.Contains(status, "changed credentials") {
		t.Errorf("status after root's restore across the setuid:\n%s", status)
	}
	if !strings.Contains(m.log.String(), "errno=EOPNOTSUPP") {
		t.Error("log does not record the EOPNOTSUPP of the restore")
	}

	// A snapshot taken after the setuid belongs to nobody and restores.
	wantResult(t, "nobody captures the process", asNobody.result("write", m.path(tg.PID, "capture"), "as-nobody\n"), "ok")
	if uid, mode := ownerMode(t, m.path(tg.PID, "as-nobody", "info")); uid != nobody || mode != 0o400 {
		t.Errorf("nobody's snapshot info: owner %d mode %v", uid, mode)
	}
	tg.command(t, "i", "counter ")
	wantResult(t, "nobody restores its snapshot", asNobody.result("write", m.path(tg.PID, "restore"), "as-nobody\n"), "ok")
	if got := tg.counter(t); got != 0 {
		t.Errorf("counter %d after nobody's restore, want 0", got)
	}
}

func TestRestoreAfterExec(t *testing.T) {
	m := newMount(t)
	for _, c := range []struct {
		name    string
		command string
		reason  string
	}{
		{"same executable", "e", "called execve since the snapshot"},
		{"other executable", "x", "ran another program since the snapshot"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg := startSafeTarget(t, 0)
			m.mustWrite("1\n", tg.PID, "capture")
			tg.send(t, c.command)
			if c.command == "e" {
				tg.Expect("ready")
			} else {
				waitComm(t, tg.PID, "sleep")
			}

			wantErrno(t, "restore after execve", m.write("snap-1\n", tg.PID, "restore"), unix.EOPNOTSUPP)
			status := m.read(tg.PID, "status")
			if !strings.Contains(status, "result: failed: EOPNOTSUPP: ") || !strings.Contains(status, c.reason) {
				t.Errorf("status after restore across execve:\n%s", status)
			}
			if state, tracer := waitRunning(tg.PID, time.Second); state != "S" || tracer != 0 {
				t.Errorf("after the refused restore: state %s tracer %d, want S and untraced", state, tracer)
			}
			if c.command == "e" && tg.counter(t) != 0 {
				t.Error("re-executed target changed")
			}
		})
	}
}
