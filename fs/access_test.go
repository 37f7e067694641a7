package fs

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine"
)

func TestMayPtrace(t *testing.T) {
	const fullCaps = 0x1ffffffffff
	user := func(tgid int, uid uint32) taskCreds {
		return taskCreds{TGID: tgid, UID: [3]uint32{uid, uid, uid}, GID: [3]uint32{uid, uid, uid}}
	}
	root := taskCreds{TGID: 1, CapPrm: fullCaps, CapEff: fullCaps}
	rootNoPtrace := taskCreds{TGID: 1, CapPrm: fullCaps, CapEff: fullCaps &^ capSysPtrace}
	target := func(c taskCreds) ptraceTarget { return ptraceTarget{taskCreds: c, Dumpable: true} }

	// A thread group whose credentials differ from the calling thread's,
	// as after a thread-local setuid(2).
	ownGroup := root
	ownGroup.TGID = 200

	setuidTarget := user(200, 1000)
	setuidTarget.UID[1] = 0 // effective uid root after a set-user-ID exec
	regroupedTarget := user(200, 1000)
	regroupedTarget.GID[2] = 50
	cappedTarget := user(200, 1000)
	cappedTarget.CapPrm = 1 << unix.CAP_NET_BIND_SERVICE
	nondumpable := target(user(200, 1000))
	nondumpable.Dumpable = false
	child := target(user(200, 1000))
	child.Descendant = true

	tests := []struct {
		name   string
		caller taskCreds
		target ptraceTarget
		yama   int
		ok     bool
	}{
		{"same thread group", user(200, 1000), target(ownGroup), 0, true},
		{"same thread group under yama 3", user(200, 1000), target(ownGroup), 3, true},
		{"same user", user(100, 1000), target(user(200, 1000)), 0, true},
		{"other user", user(100, 1000), target(user(200, 1001)), 0, false},
		{"user on root process", user(100, 1000), target(root), 0, false},
		{"effective uid differs", user(100, 1000), target(setuidTarget), 0, false},
		{"saved gid differs", user(100, 1000), target(regroupedTarget), 0, false},
		{"target has capabilities caller lacks", user(100, 1000), target(cappedTarget), 0, false},
		{"not dumpable", user(100, 1000), nondumpable, 0, false},
		{"root on user", root, target(user(200, 1000)), 0, true},
		{"root on not dumpable", root, nondumpable, 0, true},
		{"root without CAP_SYS_PTRACE on capable root", rootNoPtrace, target(root), 0, true},
		{"root without CAP_SYS_PTRACE on user", rootNoPtrace, target(user(200, 1000)), 0, false},
		{"yama 1 non-descendant", user(100, 1000), target(user(200, 1000)), 1, false},
		{"yama 1 descendant", user(100, 1000), child, 1, true},
		{"yama 1 root", root, target(user(200, 1000)), 1, true},
		{"yama 2 same user", user(100, 1000), child, 2, false},
		{"yama 2 root", root, target(user(200, 1000)), 2, true},
		{"yama 3 root", root, target(user(200, 1000)), 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mayPtrace(tt.caller, tt.target, tt.yama)
			if tt.ok && err != nil {
				t.Fatalf("mayPtrace: %v, want allowed", err)
			}
			if !tt.ok && !errors.Is(err, unix.EPERM) {
				t.Fatalf("mayPtrace: %v, want EPERM", err)
			}
		})
	}
}

func TestMayUseSnapshot(t *testing.T) {
	owner := taskCreds{UID: [3]uint32{1000, 1000, 1000}}
	other := taskCreds{UID: [3]uint32{1001, 1001, 1001}}
	root := taskCreds{CapEff: capSysPtrace}

	if err := mayUseSnapshot(owner, 1000); err != nil {
		t.Errorf("owner: %v", err)
	}
	if err := mayUseSnapshot(root, 1000); err != nil {
		t.Errorf("root: %v", err)
	}
	if err := mayUseSnapshot(other, 1000); !errors.Is(err, unix.EPERM) {
		t.Errorf("other user: %v, want EPERM", err)
	}
}

func TestReadTargetOfOwnProcess(t *testing.T) {
	st, err := engine.ReadStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	target, err := readTarget(os.Getpid(), st, os.Getpid(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !target.Dumpable {
		t.Error("test process reported not dumpable")
	}
	if !target.Descendant {
		t.Error("process is not its own descendant")
	}
	if target.TGID != os.Getpid() {
		t.Errorf("TGID %d, want %d", target.TGID, os.Getpid())
	}
}

func TestIsDescendant(t *testing.T) {
	if !isDescendant(os.Getpid(), os.Getppid()) {
		t.Errorf("pid %d is not a descendant of its parent %d", os.Getpid(), os.Getppid())
	}
	if isDescendant(os.Getppid(), os.Getpid()) {
		t.Errorf("parent %d reported a descendant of pid %d", os.Getppid(), os.Getpid())
	}
}

func TestIsDumpableComparesProcOwner(t *testing.T) {
	// /proc/1 belongs to root. Paired with a status whose effective uid is
	// 65534, it looks like a process of uid 65534 that the kernel marked
	// non-dumpable. Paired with root's status, it is dumpable.
	nobody := &engine.Status{UID: [3]uint32{65534, 65534, 65534}}
	dumpable, err := isDumpable(1, nobody)
	if err != nil {
		t.Fatal(err)
	}
	if dumpable {
		t.Error("root-owned /proc/1 with euid 65534 reported dumpable")
	}

	root := &engine.Status{}
	dumpable, err = isDumpable(1, root)
	if err != nil {
		t.Fatal(err)
	}
	if !dumpable {
		t.Error("root-owned /proc/1 with euid 0 reported not dumpable")
	}
}
