package engine

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSignalFrameLayout(t *testing.T) {
	regs := unix.PtraceRegs{Rip: 0x401000, Rsp: 0x7ffd0000_1008, Rax: 42, R15: 15, Cs: user64CS, Ss: 0x2b, Eflags: 0x246}
	xstate := make([]byte, 2440)
	binary.LittleEndian.PutUint64(xstate[xcr0Offset:], 0xe7)
	frame := buildSignalFrame(&regs, 0x1234, xstate, 0x7000_0000_0abc, regs.Rsp)

	le := binary.LittleEndian
	end := frame.Addr + uint64(len(frame.Bytes))
	if end != regs.Rsp-redZone {
		t.Errorf("frame ends at %#x, want rsp - red zone %#x", end, regs.Rsp-redZone)
	}
	if frame.Addr%sigframeAlign != 0 {
		t.Errorf("frame at %#x is not 16-byte aligned", frame.Addr)
	}
	if got := le.Uint64(frame.Bytes[0:]); got != 0x7000_0000_0abc {
		t.Errorf("pretcode = %#x, want the restorer", got)
	}
	if got := le.Uint64(frame.Bytes[ucSigmaskOff:]); got != 0x1234 {
		t.Errorf("uc_sigmask = %#x, want 0x1234", got)
	}
	sc := frame.Bytes[mcontextOff:]
	for name, c := range map[string]struct{ off, want uint64 }{
		"rip": {scRip, regs.Rip}, "rsp": {scRsp, regs.Rsp}, "rax": {scRax, 42}, "r15": {scR15, 15}, "eflags": {scEflags, 0x246},
	} {
		if got := le.Uint64(sc[c.off:]); got != c.want {
			t.Errorf("sigcontext %s = %#x, want %#x", name, got, c.want)
		}
	}

	fp := le.Uint64(sc[scFpstate:])
	size, _ := frameXstate(xstate)
	if fp%xsaveAlign != 0 || fp < frame.Addr+sigframeSize || fp+uint64(size)+fpMagic2Size > end {
		t.Fatalf("fpstate at %#x is not a 64-byte aligned area inside the frame %#x-%#x", fp, frame.Addr, end)
	}
	area := frame.Bytes[fp-frame.Addr:]
	if got := le.Uint32(area[fpxSwOff:]); got != fpMagic1 {
		t.Errorf("magic1 = %#x, want %#x", got, fpMagic1)
	}
	if got := le.Uint64(area[fpxSwOff+8:]); got != 0xe7 {
		t.Errorf("xfeatures = %#x, want XCR0 0xe7", got)
	}
	if got := le.Uint32(area[fpxSwOff+16:]); got != uint32(size) {
		t.Errorf("xstate_size = %d, want %d", got, size)
	}
	if got := le.Uint32(area[size:]); got != fpMagic2 {
		t.Errorf("magic2 = %#x, want %#x", got, fpMagic2)
	}
}

func TestRescueRegsRearmsRestart(t *testing.T) {
	eintr, restartBlock := int64(unix.EINTR), int64(errRestartRestartBlock)
	stopped := unix.PtraceRegs{Rip: 0x1002, Rax: uint64(-restartBlock), Orig_rax: unix.SYS_CLOCK_NANOSLEEP}
	got := rescueRegs(stopped, syscallInsn)
	if got.Rip != 0x1000 || got.Rax != unix.SYS_CLOCK_NANOSLEEP {
		t.Errorf("interrupted clock_nanosleep resumes at %#x with rax %d, want 0x1000 and its number", got.Rip, got.Rax)
	}

	stopped.Orig_rax = unix.SYS_RESTART_SYSCALL
	got = rescueRegs(stopped, syscallInsn)
	if got.Rip != 0x1002 || got.Rax != uint64(-eintr) {
		t.Errorf("interrupted restart_syscall resumes at %#x with rax %d, want 0x1002 and -EINTR", got.Rip, int64(got.Rax))
	}
}

// TestCloneChildExitsUntraced injects a clone as the copy-on-write capture
// does and releases the child, as the daemon's death would: the child
// must exit with status 0 instead of running the target's code.
func TestCloneChildExitsUntraced(t *testing.T) {
	op, p := beginStopped(t)

	var child int
	err := op.do(func() error {
		ret, err := op.syscall(op.threads[0], unix.SYS_CLONE, unix.CLONE_FILES|unix.CLONE_FS, 0, 0, 0, 0)
		if err != nil {
			return err
		}
		child = int(ret)
		t.Cleanup(func() { _ = unix.Kill(child, unix.SIGKILL) })
		if _, err := waitTid(child); err != nil {
			return err
		}
		return ptraceDetach(child, 0)
	})
	if err != nil {
		t.Fatal(err)
	}

	state, code := zombieExit(t, child)
	if state != "Z" || code != 0 {
		t.Errorf("clone %d ended in state %q with exit code %#x, want a zombie with code 0", child, state, code)
	}
	op.Close()
	p.Expect("count ")
}

// zombieExit waits until pid is a zombie and returns its state and the
// exit code of /proc/PID/stat.
func zombieExit(t *testing.T, pid int) (string, uint64) {
	t.Helper()
	var fields []string
	for range 1000 {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatalf("read stat of clone %d: %v", pid, err)
		}
		s := string(data)
		fields = strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if fields[0] == "Z" {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var code uint64
	fmt.Sscan(fields[len(fields)-1], &code)
	return fields[0], code
}

func TestFrameXstateLeavesOutUnusedTileData(t *testing.T) {
	const xcr0 = 0x602e7 // x87, SSE, AVX, AVX-512, PKRU, AMX tile config and data
	ends := xsaveEnds()
	full := max(ends[xfeatureTileData], 11008)

	for _, inUse := range []bool{false, true} {
		xstate := make([]byte, full)
		binary.LittleEndian.PutUint64(xstate[xcr0Offset:], xcr0)
		bv := uint64(0x7)
		if inUse {
			bv |= 1 << xfeatureTileData
		}
		binary.LittleEndian.PutUint64(xstate[xstateBVOffset:], bv)

		size, features := frameXstate(xstate)
		if got := features&(1<<xfeatureTileData) != 0; got != inUse {
			t.Errorf("tile data in use %v: frame claims it %v (features %#x)", inUse, got, features)
		}
		if features&^(1<<xfeatureTileData) != xcr0&^(1<<xfeatureTileData) {
			t.Errorf("tile data in use %v: features %#x, want XCR0 %#x with or without tile data", inUse, features, uint64(xcr0))
		}
		if size > len(xstate) || size < xsaveMinSize {
			t.Errorf("tile data in use %v: size %d outside [%d, %d]", inUse, size, xsaveMinSize, len(xstate))
		}
		for component := 2; component < 64; component++ {
			if features&(1<<component) != 0 && ends[component] > size {
				t.Errorf("tile data in use %v: size %d cuts component %d, which ends at %d", inUse, size, component, ends[component])
			}
		}
		if !inUse && ends[xfeatureTileData] != 0 && size >= ends[xfeatureTileData] {
			t.Errorf("size %d holds the unused tile data, which ends at %d", size, ends[xfeatureTileData])
		}
	}
}
