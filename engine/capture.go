package engine

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// sigIgn is SIG_IGN, the handler value of an ignored signal.
const sigIgn = 1

// Capture freezes process pid, captures it and thaws it: Begin, Capture
// and Close in one call.
func Capture(pid int, log *slog.Logger) (*snapshot.Image, error) {
	op, err := Begin(pid, log)
	if err != nil {
		return nil, err
	}
	defer op.Close()
	return op.Capture()
}

// Capture waits until every thread is stopped, reads the state of the
// process into an Image (memory included, in Run.Data) and thaws the
// process, whether the capture succeeded or not. An op can capture once.
func (op *Op) Capture() (*snapshot.Image, error) {
	var img *snapshot.Image
	err := op.do(func() error {
		if !op.frozen {
			return fmt.Errorf("capture pid %d: process is not frozen: %w", op.pid, unix.EINVAL)
		}
		var err error
		img, err = op.capture(op.captureMaps, op.captureMemory)
		op.thaw()
		if err != nil {
			return err
		}
		img.Frozen = op.frozenFor
		return nil
	})
	if err != nil {
		return nil, exitedDuring(op.pid, fmt.Errorf("capture pid %d: %w", op.pid, err))
	}
	op.log.Debug("captured", "frozen", img.Frozen, "threads", len(img.Threads), "regions", len(img.Regions))
	return img, nil
}

// capture reads everything while the process is frozen: the regions with
// mapsStep, their memory with memoryStep. Maps are read before the first
// injected system call, which maps the scratch page.
//
// Precondition: called on the op's locked thread, after freeze.
func (op *Op) capture(mapsStep, memoryStep func(*snapshot.Image) error) (*snapshot.Image, error) {
	if err := op.waitStops(); err != nil {
		return nil, err
	}

	img := &snapshot.Image{Captured: time.Now(), JobStopped: op.jobStopped()}
	st, err := op.captureProcess(img)
	if err != nil {
		return nil, err
	}
	steps := []func(*snapshot.Image) error{
		mapsStep,
		op.captureThreads,
		op.captureFDs,
		memoryStep,
		op.captureBrk,
		op.captureAltStacks,
		func(img *snapshot.Image) error { return op.captureSignals(img, st) },
		op.captureQueues,
	}
	for _, step := range steps {
		if err := step(img); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// captureProcess fills the identity, credentials, names and directories
// of the process and returns its status for later steps.
//
// Precondition: all threads stopped.
func (op *Op) captureProcess(img *snapshot.Image) (*Status, error) {
	id, err := Identify(op.pid)
	if err != nil {
		return nil, err
	}
	st, err := ReadStatus(op.pid)
	if err != nil {
		return nil, err
	}
	ps, err := readProcStat(op.pid)
	if err != nil {
		return nil, err
	}
	img.Process, img.Comm, img.StartBrk, img.Umask = id, ps.Comm, ps.StartBrk, st.Umask
	img.Creds = snapshot.Credentials{UID: st.UID, GID: st.GID}

	exe := fmt.Sprintf("/proc/%d/exe", op.pid)
	if img.Exe, err = os.Readlink(exe); err != nil {
		return nil, fmt.Errorf("read executable of pid %d: %w", op.pid, err)
	}
	var exeStat unix.Stat_t
	if err := unix.Stat(exe, &exeStat); err != nil {
		return nil, fmt.Errorf("stat executable of pid %d: %w", op.pid, err)
	}
	img.ExeDev, img.ExeIno = exeStat.Dev, exeStat.Ino
	if img.ExecID, err = readExecID(op.pid); err != nil {
		return nil, err
	}

	if img.Cwd, err = os.Readlink(fmt.Sprintf("/proc/%d/cwd", op.pid)); err != nil {
		return nil, fmt.Errorf("read working directory of pid %d: %w", op.pid, err)
	}
	return st, nil
}

// captureMaps reads /proc/PID/maps byte for byte and its regions.
//
// Precondition: all threads stopped; no scratch page mapped yet.
func (op *Op) captureMaps(img *snapshot.Image) error {
	regions, raw, err := readMaps(op.pid)
	if err != nil {
		return err
	}
	img.Regions, img.Maps = regions, raw
	return nil
}

// captureFDs reads the descriptor table.
//
// Precondition: all threads stopped.
func (op *Op) captureFDs(img *snapshot.Image) error {
	fds, err := readFDs(op.pid)
	if err != nil {
		return err
	}
	img.FDs = fds
	return nil
}

// captureBrk reads the exact program break with an injected brk(0).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) captureBrk(img *snapshot.Image) error {
	brk, err := op.syscall(op.threads[0], unix.SYS_BRK, 0)
	if err != nil {
		return fmt.Errorf("read program break of pid %d: %w", op.pid, err)
	}
	img.Brk = uint64(brk)
	return nil
}

// captureAltStacks reads each thread's sigaltstack with an injected
// sigaltstack(NULL, scratch) run by that thread.
//
// Precondition: called on the op's locked thread; all threads stopped;
// img.Threads lists op.threads in order.
func (op *Op) captureAltStacks(img *snapshot.Image) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var buf [24]byte // struct stack_t: ss_sp, ss_flags (padded), ss_size
	for i, th := range op.threads {
		if _, err := op.syscall(th, unix.SYS_SIGALTSTACK, 0, uintptr(addr)); err != nil {
			return fmt.Errorf("read signal stack of tid %d: %w", th.tid, err)
		}
		if err := op.readMem(addr, buf[:]); err != nil {
			return err
		}
		img.Threads[i].AltStack = snapshot.AltStack{
			SP:    binary.LittleEndian.Uint64(buf[0:]),
			Flags: int32(binary.LittleEndian.Uint32(buf[8:])),
			Size:  binary.LittleEndian.Uint64(buf[16:]),
		}
	}
	return nil
}

// captureSignals reads the action of every signal with a handler (SigCgt)
// by an injected rt_sigaction(sig, NULL, scratch, 8). The others are
// SIG_IGN or SIG_DFL from SigIgn, which keeps the freeze short.
//
// NOTE: for ignored and default signals the sa_flags and sa_mask the
// process set are not read, so they restore as zero.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) captureSignals(img *snapshot.Image, st *Status) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var buf [32]byte // struct sigaction: handler, flags, restorer, mask
	for sig := 1; sig <= 64; sig++ {
		bit := uint64(1) << (sig - 1)
		act := &img.Signals.Actions[sig-1]
		switch {
		case st.SigCgt&bit != 0:
			if _, err := op.syscall(op.threads[0], unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(addr), 8); err != nil {
				return fmt.Errorf("read action of signal %d: %w", sig, err)
			}
			if err := op.readMem(addr, buf[:]); err != nil {
				return err
			}
			act.Handler = binary.LittleEndian.Uint64(buf[0:])
			act.Flags = binary.LittleEndian.Uint64(buf[8:])
			act.Restorer = binary.LittleEndian.Uint64(buf[16:])
			act.Mask = binary.LittleEndian.Uint64(buf[24:])
		case st.SigIgn&bit != 0:
			act.Handler = sigIgn
		}
	}
	return nil
}
