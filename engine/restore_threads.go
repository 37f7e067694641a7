package engine

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Offsets in the scratch page of the arguments restore passes by pointer.
const (
	scratchAction    = 0   // struct sigaction to set, 32 bytes
	scratchOldAction = 32  // struct sigaction read back, 32 bytes
	scratchStack     = 64  // stack_t, 24 bytes
	scratchPath      = 128 // NUL-terminated path, to the end of the page
)

// Offsets in the scratch page of the arguments of the signal queue and
// timer calls. They overlap the path, which no call of theirs uses.
const (
	scratchTimer    = 128 // struct itimerval or itimerspec, 32 bytes
	scratchSigevent = 160 // struct sigevent, 64 bytes
	scratchTimerID  = 224 // timer_t (int), 4 bytes
	scratchSigset   = 232 // sigset_t, 8 bytes
	scratchTimeout  = 240 // struct timespec, 16 bytes
	scratchSiginfo  = 256 // siginfo_t, 128 bytes
)

// ssOnStack is SS_ONSTACK, which sigaltstack reports while the thread runs
// on its alternate stack but rejects when set.
const ssOnStack = 1

// threadState is the state restore overwrites in one thread, read before
// any change so that a failed restore can put it back.
type threadState struct {
	th       *thread
	regs     unix.PtraceRegs
	xstate   []byte
	mask     uint64
	altStack snapshot.AltStack
	rseq     snapshot.Rseq
}

// readThreadState reads the registers, xstate, mask, alternate signal
// stack and rseq registration of th.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readThreadState(th *thread) (threadState, error) {
	st := threadState{th: th}
	var err error
	if st.regs, err = th.getRegs(); err != nil {
		return st, err
	}
	if st.xstate, err = th.getXstate(); err != nil {
		return st, err
	}
	if st.mask, err = th.getSigmask(); err != nil {
		return st, err
	}
	if st.rseq, err = th.getRseq(); err != nil {
		return st, err
	}
	st.altStack, err = op.readAltStack(th)
	return st, err
}

// planResume computes the registers each thread resumes with (see
// resumeRegs), reading where the threads captured inside restart_syscall
// are stopped now.
//
// Precondition: called on the op's locked thread; all threads stopped;
// nothing changed yet.
func (r *restorer) planResume() error {
	r.resume = make(map[int]unix.PtraceRegs, len(r.op.threads))
	for _, th := range r.op.threads {
		t := r.imageThread(th.tid)
		var live liveStop
		if inRestartSyscall(&t.RawRegs) {
			var err error
			if live, err = r.op.readStop(th); err != nil {
				return err
			}
		}
		regs, err := resumeRegs(t, live)
		if err != nil {
			return err
		}
		r.resume[th.tid] = regs
	}
	return nil
}

// readStop reads th's registers and the two bytes before its rip. Bytes
// that cannot be read (rip at the start of a mapping, for example) stay
// zero, which no `syscall` instruction is.
//
// Precondition: called on the op's locked thread; th is stopped.
func (op *Op) readStop(th *thread) (liveStop, error) {
	regs, err := th.getRegs()
	if err != nil {
		return liveStop{}, err
	}
	live := liveStop{regs: regs}
	if regs.Rip >= 2 {
		if err := op.readMem(regs.Rip-2, live.before[:]); err != nil {
			live.before = [2]byte{}
		}
	}
	return live, nil
}

// writeThreadState writes xstate, then the general registers, then the
// signal mask of th, the order in which none undoes another.
//
// Precondition: called on the op's locked thread; th is stopped.
func writeThreadState(th *thread, xstate []byte, regs *unix.PtraceRegs, mask uint64) error {
	if err := th.setXstate(xstate); err != nil {
		return err
	}
	if err := th.setRegs(regs); err != nil {
		return err
	}
	return th.setSigmask(mask)
}

// readAltStack reads th's sigaltstack by an injected sigaltstack(NULL, p).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readAltStack(th *thread) (snapshot.AltStack, error) {
	addr, err := op.scratch()
	if err != nil {
		return snapshot.AltStack{}, err
	}
	if _, err := op.syscall(th, unix.SYS_SIGALTSTACK, 0, uintptr(addr+scratchStack)); err != nil {
		return snapshot.AltStack{}, fmt.Errorf("read signal stack of tid %d: %w", th.tid, err)
	}
	var buf [24]byte
	if err := op.readMem(addr+scratchStack, buf[:]); err != nil {
		return snapshot.AltStack{}, err
	}
	return snapshot.AltStack{
		SP:    binary.LittleEndian.Uint64(buf[0:]),
		Flags: int32(binary.LittleEndian.Uint32(buf[8:])),
		Size:  binary.LittleEndian.Uint64(buf[16:]),
	}, nil
}

// setAltStack sets th's sigaltstack by an injected sigaltstack(p, NULL).
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) setAltStack(th *thread, a snapshot.AltStack) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var buf [24]byte
	binary.LittleEndian.PutUint64(buf[0:], a.SP)
	binary.LittleEndian.PutUint32(buf[8:], uint32(a.Flags&^ssOnStack))
	binary.LittleEndian.PutUint64(buf[16:], a.Size)
	if err := op.writeMem(addr+scratchStack, buf[:]); err != nil {
		return err
	}
	if _, err := op.syscall(th, unix.SYS_SIGALTSTACK, uintptr(addr+scratchStack), 0); err != nil {
		return fmt.Errorf("set signal stack of tid %d: %w", th.tid, err)
	}
	return nil
}

// sameAltStack reports whether two sigaltstack settings are equal, apart
// from SS_ONSTACK, which only reports that the thread ran on that stack.
func sameAltStack(a, b snapshot.AltStack) bool {
	a.Flags &^= ssOnStack
	b.Flags &^= ssOnStack
	return a == b
}

// readActions reads the signal actions the way capture does: by injected
// rt_sigaction for signals with a handler, from SigIgn for ignored ones.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readActions() ([64]snapshot.SigAction, error) {
	var acts [64]snapshot.SigAction
	st, err := ReadStatus(op.pid)
	if err != nil {
		return acts, err
	}
	addr, err := op.scratch()
	if err != nil {
		return acts, err
	}

	var buf [32]byte
	for sig := 1; sig <= 64; sig++ {
		bit := uint64(1) << (sig - 1)
		switch {
		case st.SigCgt&bit != 0:
			if _, err := op.syscall(op.threads[0], unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(addr+scratchOldAction), 8); err != nil {
				return acts, fmt.Errorf("read action of signal %d: %w", sig, err)
			}
			if err := op.readMem(addr+scratchOldAction, buf[:]); err != nil {
				return acts, err
			}
			acts[sig-1] = snapshot.SigAction{
				Handler:  binary.LittleEndian.Uint64(buf[0:]),
				Flags:    binary.LittleEndian.Uint64(buf[8:]),
				Restorer: binary.LittleEndian.Uint64(buf[16:]),
				Mask:     binary.LittleEndian.Uint64(buf[24:]),
			}
		case st.SigIgn&bit != 0:
			acts[sig-1].Handler = sigIgn
		}
	}
	return acts, nil
}

// setAction sets the action of sig by an injected rt_sigaction.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) setAction(sig int, a snapshot.SigAction) error {
	addr, err := op.scratch()
	if err != nil {
		return err
	}
	var buf [32]byte
	binary.LittleEndian.PutUint64(buf[0:], a.Handler)
	binary.LittleEndian.PutUint64(buf[8:], a.Flags)
	binary.LittleEndian.PutUint64(buf[16:], a.Restorer)
	binary.LittleEndian.PutUint64(buf[24:], a.Mask)
	if err := op.writeMem(addr+scratchAction, buf[:]); err != nil {
		return err
	}
	if _, err := op.syscall(op.threads[0], unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(addr+scratchAction), 0, 8); err != nil {
		return fmt.Errorf("set action of signal %d: %w", sig, err)
	}
	return nil
}

// settableSignal reports whether sig's action can be changed: every
// signal but SIGKILL and SIGSTOP.
func settableSignal(sig int) bool {
	return sig != int(unix.SIGKILL) && sig != int(unix.SIGSTOP)
}

// rseqMinSize is the size of the original struct rseq; registrations are
// at least this long.
const rseqMinSize = 32

// rseqCSOffset is the offset in struct rseq of rseq_cs, the pointer to the
// critical section the thread is in.
const rseqCSOffset = 8

// readRseqAreas returns each registered thread's struct rseq as it is now,
// before memory is written: the kernel owns its cpu and node fields and
// may kill a process whose fields it finds changed behind its back.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) readRseqAreas(states []threadState) ([]memChunk, error) {
	var areas []memChunk
	for _, st := range states {
		if st.rseq.Addr == 0 {
			continue
		}
		buf := make([]byte, max(st.rseq.Size, rseqMinSize))
		if err := op.readMem(st.rseq.Addr, buf); err != nil {
			return nil, fmt.Errorf("read rseq area of tid %d: %w", st.th.tid, err)
		}
		areas = append(areas, memChunk{addr: st.rseq.Addr, data: buf})
	}
	return areas, nil
}

// writeRseqAreas puts back the structs readRseqAreas returned, with
// rseq_cs cleared so that no critical section is considered entered.
//
// Precondition: called on the op's locked thread; all threads stopped.
func (op *Op) writeRseqAreas(areas []memChunk) error {
	for _, a := range areas {
		clear(a.data[rseqCSOffset : rseqCSOffset+8])
		if err := op.writeMem(a.addr, a.data); err != nil {
			return fmt.Errorf("write rseq area at %#x: %w", a.addr, err)
		}
	}
	return nil
}
