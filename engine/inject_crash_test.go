package engine

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testproc"
)

// Environment of this test binary when it runs as a helper tracer:
// helperPIDEnv names the target, helperPhaseEnv the injection phase to
// stop in ("" for a loop of injections, "capture" for a loop of captures) and helperStateEnv whether the
// target must be "sleeping" in nanosleep or "running" at that point.
const (
	helperPIDEnv   = "CKPTFS_INJECT_HELPER_PID"
	helperPhaseEnv = "CKPTFS_INJECT_HELPER_PHASE"
	helperStateEnv = "CKPTFS_INJECT_HELPER_STATE"
)

// TestHelperTracer is not a test: with helperPIDEnv set, it is a tracer
// process for the tests below, which kill it. It freezes the target and
// either injects getpid calls into the main thread in a loop, printing
// "injecting" after the first, or runs one getpid injection up to a
// phase and prints "phase PHASE".
func TestHelperTracer(t *testing.T) {
	value := os.Getenv(helperPIDEnv)
	if value == "" {
		return
	}
	pid, err := strconv.Atoi(value)
	if err != nil {
		t.Fatalf("bad %s %q: %v", helperPIDEnv, value, err)
	}
	phase := os.Getenv(helperPhaseEnv)
	switch phase {
	case "":
		t.Fatalf("injection loop ended: %v", injectForever(pid))
	case "capture":
		t.Fatalf("capture loop ended: %v", captureForever(pid))
	}
	if err := injectUntil(pid, phase, os.Getenv(helperStateEnv) == "sleeping"); err != nil {
		t.Fatal(err)
	}
	fmt.Println("phase", phase)
	select {}
}

// injectForever freezes pid and injects getpid calls until an error.
func injectForever(pid int) error {
	op, err := Begin(pid, nil)
	if err != nil {
		return err
	}
	return op.do(func() error {
		if err := op.waitStops(); err != nil {
			return err
		}
		for i := 0; ; i++ {
			if _, err := op.syscall(op.threads[0], unix.SYS_GETPID); err != nil {
				return err
			}
			if i == 0 {
				fmt.Println("injecting")
			}
		}
	})
}

// captureForever captures pid in a loop until an error, printing
// "capturing" after the first capture.
func captureForever(pid int) error {
	for i := 0; ; i++ {
		if _, err := Capture(pid, nil); err != nil {
			return err
		}
		if i == 0 {
			fmt.Println("capturing")
		}
	}
}

// injectUntil freezes pid when its main thread is (or is not) stopped in
// a system call that is to be restarted, and runs the steps of an
// injected getpid up to phase: "set" (registers and mask set), "entry"
// (syscall entry stop), "exit" (syscall exit stop) or "mask" (mask put
// back, registers not yet). The op stays open.
func injectUntil(pid int, phase string, sleeping bool) error {
	op, err := beginInState(pid, sleeping)
	if err != nil {
		return err
	}
	return op.do(func() error {
		th := op.threads[0]
		inj, err := op.prepareInjection(th, unix.SYS_GETPID, nil)
		if err != nil {
			return err
		}
		steps := []struct {
			name string
			run  func() error
		}{
			{"set", func() error {
				if err := th.setRegs(&inj.regs); err != nil {
					return err
				}
				return th.setSigmask(^uint64(0))
			}},
			{"entry", func() error { return op.resumeToSyscallStop(th) }},
			{"exit", func() error { return op.resumeToSyscallStop(th) }},
			{"mask", func() error { return th.setSigmask(inj.mask) }},
		}
		for _, step := range steps {
			if err := step.run(); err != nil {
				return fmt.Errorf("step %s: %w", step.name, err)
			}
			if step.name == phase {
				return nil
			}
		}
		return fmt.Errorf("unknown phase %q", phase)
	})
}

// beginInState freezes pid, thawing and freezing again until its main
// thread is stopped with a restart of its system call pending (sleeping)
// or without one. A thread stopped inside restart_syscall counts as
// neither: its rescue frame makes the call return EINTR (see rescueRegs),
// which the target would report.
func beginInState(pid int, sleeping bool) (*Op, error) {
	for range 10000 {
		op, err := Begin(pid, nil)
		if err != nil {
			return nil, err
		}
		var regs unix.PtraceRegs
		err = op.do(func() error {
			if err := op.waitStops(); err != nil {
				return err
			}
			regs, err = op.threads[0].getRegs()
			return err
		})
		if err != nil {
			op.Close()
			return nil, err
		}
		if restartPending(&regs) == sleeping && !inRestartSyscall(&regs) {
			return op, nil
		}
		op.Close()
	}
	return nil, fmt.Errorf("pid %d never stopped with sleeping=%v", pid, sleeping)
}

// startHelperTracer starts this test binary as a tracer of pid, with the
// extra environment env, and waits until it prints want.
func startHelperTracer(t *testing.T, pid int, want string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperTracer$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", helperPIDEnv, pid))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper tracer: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		t.Fatalf("helper tracer printed %q, %v; want %q", line, err, want)
	}
	return cmd
}

// expectCount returns the next counter value the target prints, failing
// on a line that reports corruption.
func expectCount(t *testing.T, p *testproc.Proc) uint64 {
	t.Helper()
	for {
		line := p.Line()
		if strings.HasPrefix(line, "corrupt") {
			t.Fatalf("target reports %q", line)
		}
		if rest, ok := strings.CutPrefix(line, "count "); ok {
			n, err := strconv.ParseUint(rest, 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return n
		}
	}
}

func TestInjectionSurvivesTracerKill(t *testing.T) {
	const trials = 100
	p := testproc.Start(t, testproc.Build(t, "inj_regcheck"))
	expectCount(t, p)

	for trial := range trials {
		helper := startHelperTracer(t, p.PID, "injecting")
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		killHelper(t, helper)
		checkSurvived(t, p, fmt.Sprintf("trial %d", trial))
	}
}

func TestCaptureSurvivesTracerKill(t *testing.T) {
	const trials = 100
	p := testproc.Start(t, testproc.Build(t, "inj_regcheck"))
	expectCount(t, p)

	for trial := range trials {
		helper := startHelperTracer(t, p.PID, "capturing", helperPhaseEnv+"=capture")
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		killHelper(t, helper)
		checkSurvived(t, p, fmt.Sprintf("trial %d", trial))
	}
}

func TestInjectionSurvivesTracerKillAtPhase(t *testing.T) {
	const trials = 5
	p := testproc.Start(t, testproc.Build(t, "inj_regcheck"))
	expectCount(t, p)

	for _, phase := range []string{"set", "entry", "exit", "mask"} {
		for _, state := range []string{"running", "sleeping"} {
			for trial := range trials {
				helper := startHelperTracer(t, p.PID, "phase "+phase, helperPhaseEnv+"="+phase, helperStateEnv+"="+state)
				killHelper(t, helper)
				checkSurvived(t, p, fmt.Sprintf("phase %s, %s, trial %d", phase, state, trial))
			}
		}
	}
}

// killHelper kills a helper tracer and reaps it.
func killHelper(t *testing.T, helper *exec.Cmd) {
	t.Helper()
	if err := helper.Process.Kill(); err != nil {
		t.Fatalf("kill helper tracer: %v", err)
	}
	_ = helper.Wait()
}

// checkSurvived checks that target p runs on untraced after its tracer
// died, with its counter advancing and no corruption reported.
func checkSurvived(t *testing.T, p *testproc.Proc, trial string) {
	t.Helper()
	p.Drain()
	before := expectCount(t, p)
	after := expectCount(t, p)
	if after <= before {
		t.Fatalf("%s: counter went from %d to %d, want it to advance", trial, before, after)
	}
	if !p.Alive() {
		t.Fatalf("%s: target exited: %v", trial, p.Cmd.ProcessState)
	}
	if s := p.State(); s == "t" || s == "T" {
		t.Fatalf("%s: target left in state %q", trial, s)
	}
	st, err := ReadStatus(p.PID)
	if err != nil {
		t.Fatalf("%s: %v", trial, err)
	}
	if st.TracerPid != 0 {
		t.Fatalf("%s: target still traced by %d", trial, st.TracerPid)
	}
}
