package fs

import (
	"errors"
	"github.com/ckptfs/ckptfs/internal/errnos"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
	"github.com/ckptfs/ckptfs/internal/testproc"
)

// wantRefusal fails unless the status file of pid and the mount log both
// report the last write as failed with errno and a reason containing each
// of reasons.
func wantRefusal(t *testing.T, m *testMount, pid int, errno unix.Errno, reasons ...string) {
	t.Helper()
	status := m.read(pid, "status")
	prefix := "result: failed: " + errnos.Name(errno) + ": "
	if !strings.Contains(status, prefix) {
		t.Errorf("status of pid %d lacks %q:\n%s", pid, prefix, status)
	}
	log := m.log.String()
	if !strings.Contains(log, "errno="+errnos.Name(errno)) {
		t.Errorf("log lacks errno=%s", errnos.Name(errno))
	}
	for _, reason := range reasons {
		if !strings.Contains(status, reason) {
			t.Errorf("status of pid %d does not say %q:\n%s", pid, reason, status)
		}
		// The text handler quotes the err value, escaping its quotes.
		quoted := strconv.Quote(reason)
		if !strings.Contains(log, reason) && !strings.Contains(log, quoted[1:len(quoted)-1]) {
			t.Errorf("log does not say %q", reason)
		}
	}
}

func TestRefuseDaemon(t *testing.T) {
	m := newMount(t)
	daemon := os.Getpid()
	if slices.Contains(listDir(t, m.dir), strconv.Itoa(daemon)) {
		t.Errorf("the daemon's pid %d is listed", daemon)
	}
	wantErrno(t, "capture of the daemon", m.write("1\n", daemon, "capture"), unix.EPERM)
	wantRefusal(t, m, daemon, unix.EPERM, "ckptfs daemon itself")
	wantErrno(t, "restore of the daemon", m.write("snap-1\n", daemon, "restore"), unix.ENOENT)
}

func TestRefuseKernelThread(t *testing.T) {
	m := newMount(t)
	const kthreadd = 2
	st, err := engine.ReadStatus(kthreadd)
	if err != nil || !st.Kthread {
		t.Fatalf("pid 2 is not a kernel thread: %+v %v", st, err)
	}

	if slices.Contains(listDir(t, m.dir), "2") {
		t.Error("kthreadd is listed")
	}
	if _, err := os.Stat(m.path(kthreadd)); !errors.Is(err, unix.ENOENT) {
		t.Errorf("stat of kthreadd's directory: %v, want ENOENT", err)
	}
	wantErrno(t, "capture of kthreadd", m.write("1\n", kthreadd, "capture"), unix.ENOENT)

	// The engine rejects it in checkTarget, before its goroutine exists,
	// so no ptrace request is ever made.
	_, err = engine.Begin(kthreadd, nil)
	var reject *engine.RejectError
	if !errors.As(err, &reject) || reject.Errno != unix.EPERM || !strings.Contains(err.Error(), "kernel thread") {
		t.Errorf("engine.Begin(2) = %v, want an EPERM RejectError naming a kernel thread", err)
	}
	if st, err := engine.ReadStatus(kthreadd); err != nil || st.TracerPid != 0 {
		t.Errorf("kthreadd after the refusal: %+v %v", st, err)
	}
}

func TestRefuseZombie(t *testing.T) {
	m := newMount(t)
	parent := testproc.Start(t, testproc.Build(t, "cap_zombie"))
	zombie, err := strconv.Atoi(parent.Expect("zombie "))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(pollLimit); ; time.Sleep(time.Millisecond) {
		if st, err := engine.ReadStatus(zombie); err == nil && st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not become a zombie", zombie)
		}
	}

	if slices.Contains(listDir(t, m.dir), strconv.Itoa(zombie)) {
		t.Errorf("zombie %d is listed", zombie)
	}
	wantErrno(t, "capture of a zombie", m.write("1\n", zombie, "capture"), unix.ESRCH)
	wantRefusal(t, m, zombie, unix.ESRCH, "is a zombie")
}

func TestRefuseTraced(t *testing.T) {
	m := newMount(t)
	tracer := testproc.Start(t, testproc.Build(t, "safe_tracer"))
	child, err := strconv.Atoi(tracer.Expect("child "))
	if err != nil {
		t.Fatal(err)
	}
	// The child dies with the tracer (PR_SET_PDEATHSIG) when the test
	// kills it.

	wantErrno(t, "capture of a traced process", m.write("1\n", child, "capture"), unix.EPERM)
	wantRefusal(t, m, child, unix.EPERM, "already traced by pid "+strconv.Itoa(tracer.PID)+" (safe_tracer)")
	if got := tracerOf(child); got != tracer.PID {
		t.Errorf("tracer of pid %d is %d after the refusal, want %d", child, got, tracer.PID)
	}
}

func TestRefuseBadRequests(t *testing.T) {
	m := newMount(t)
	tg := startSafeTarget(t, 0)
	m.mustWrite("taken\n", tg.PID, "capture")

	tests := []struct {
		file, data string
		errno      unix.Errno
		reason     string
	}{
		{"capture", "taken\n", unix.EEXIST, "already has a snapshot named taken"},
		{"capture", "two words\n", unix.EINVAL, `capture request "two words"`},
		{"capture", "-dash\n", unix.EINVAL, `capture request "-dash"`},
		{"capture", "../escape\n", unix.EINVAL, `capture request "../escape"`},
		{"capture", "latest\n", unix.EINVAL, `capture request "latest"`},
		{"capture", strings.Repeat("n", 65) + "\n", unix.EINVAL, "capture request"},
		{"capture", "\x00\x01\x02", unix.EINVAL, "capture request"},
		{"capture", strings.Repeat("x", 5000), unix.EINVAL, "longer than 4096"},
		{"capture", "auto-7\n", unix.EINVAL, "reserved for autosave"},
		{"restore", "missing\n", unix.ENOENT, "missing"},
		{"restore", "\n", unix.EINVAL, "empty restore request"},
		{"restore", "taken everything\n", unix.EINVAL, `unknown part "everything"`},
		{"restore", "bad/name\n", unix.EINVAL, `restore request "bad/name"`},
	}
	for _, tt := range tests {
		err := m.write(tt.data, tg.PID, tt.file)
		wantErrno(t, tt.file+" "+strconv.Quote(tt.data), err, tt.errno)
		wantRefusal(t, m, tg.PID, tt.errno, tt.reason)
	}
	if !tg.Alive() || tg.counter(t) != 0 {
		t.Error("target changed after the refused writes")
	}
	if infos, err := m.store.Snapshots(identify(t, tg.PID)); err != nil || len(infos) != 1 {
		t.Errorf("store holds %v (%v), want only the first snapshot", infos, err)
	}
}
