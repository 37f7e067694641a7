package snapshot

import (
	"encoding/binary"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessID identifies one process for its whole life. A pid alone is not
// enough, because the kernel recycles pids. The start time (field 22 of
// /proc/PID/stat, in clock ticks since boot) and the boot id distinguish a
// new process with a recycled pid from the one that was captured.
type ProcessID struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	BootID    string `json:"boot_id"`
}

// Credentials are the real, effective and saved ids of a process, in that
// order, as /proc/PID/status lists them.
type Credentials struct {
	UID [3]uint32 `json:"uid"`
	GID [3]uint32 `json:"gid"`
}

// Image is the state of a process captured while it was frozen: everything a
// restore needs except the bytes of memory. Those are in Region.Runs while
// the image is fresh from capture, and in the store's frames once it is
// saved.
type Image struct {
	Process ProcessID   `json:"process"`
	Creds   Credentials `json:"creds"`
	Comm    string      `json:"comm"`
	Exe     string      `json:"exe"`
	ExeDev  uint64      `json:"exe_dev"`
	ExeIno  uint64      `json:"exe_ino"`

	// ExecID is the hex of the 16 bytes the kernel put at AT_RANDOM when
	// the process last called execve; it changes with every execve. Empty
	// in snapshots that lack it.
	ExecID string `json:"exec_id,omitempty"`

	Captured time.Time `json:"captured"`

	// Frozen is how long the process was stopped for this capture.
	Frozen time.Duration `json:"frozen"`

	// JobStopped records a process that was in a job-control stop (for
	// example after Ctrl-Z) when it was captured.
	JobStopped bool `json:"job_stopped"`

	// XCR0 is the feature mask of the saved xstate; a restore onto a CPU
	// whose mask differs is rejected.
	XCR0 uint64 `json:"xcr0"`

	// Threads lists every thread, the main thread (tid == pid) first.
	Threads []Thread `json:"threads"`

	// Maps is /proc/PID/maps exactly as the kernel printed it at capture.
	Maps []byte `json:"-"`

	Regions []Region `json:"regions"`
	FDs     []FD     `json:"fds"`
	Signals Signals  `json:"signals"`

	// Brk is the program break read with brk(0) inside the process, and
	// StartBrk the start of the heap from /proc/PID/stat.
	Brk      uint64 `json:"brk"`
	StartBrk uint64 `json:"start_brk"`

	Cwd   string `json:"cwd"`
	Umask uint32 `json:"umask"`

	// Base names the snapshot of the same process that this image was
	// captured relative to, or is empty for a full image. Runs with Base
	// set hold the bytes that the base snapshot holds at the same virtual
	// addresses, so the store takes them from the base instead of reading
	// them again.
	Base string `json:"base,omitempty"`

	// BaseCaptured is the capture time of the base. Names are reused once
	// a snapshot is removed, so the name alone may later name another one.
	BaseCaptured time.Time `json:"base_captured,omitzero"`
}

// Thread is the saved state of one thread.
type Thread struct {
	TID int `json:"tid"`

	// Regs are the general registers as PTRACE_GETREGS returned them. When
	// the thread was stopped inside an interruptible system call, Regs are
	// already adjusted so that resuming with them re-enters the call, and
	// RawRegs keeps what the kernel reported.
	Regs    unix.PtraceRegs `json:"regs"`
	RawRegs unix.PtraceRegs `json:"raw_regs"`

	// Xstate is the NT_X86_XSTATE register set at the exact length the
	// kernel returned (XSAVE layout, FPU/SSE/AVX/AVX-512 state).
	Xstate []byte `json:"xstate"`

	// SigMask is the blocked signal mask as PTRACE_GETSIGMASK returned it.
	SigMask  uint64   `json:"sigmask"`
	AltStack AltStack `json:"altstack"`

	// Rseq is the thread's restartable-sequence registration, if any.
	Rseq Rseq `json:"rseq"`
}

// AltStack is a thread's sigaltstack(2) setting.
type AltStack struct {
	SP    uint64 `json:"sp"`
	Flags int32  `json:"flags"`
	Size  uint64 `json:"size"`
}

// Rseq is a thread's rseq(2) registration from PTRACE_GET_RSEQ_CONFIGURATION.
type Rseq struct {
	Addr      uint64 `json:"addr"`
	Size      uint32 `json:"size"`
	Signature uint32 `json:"signature"`
}

// Region is one mapping of the process's address space, as one line of
// /proc/PID/maps with its smaps flags.
type Region struct {
	Start  uint64 `json:"start"`
	End    uint64 `json:"end"`
	Perms  string `json:"perms"` // as in maps, e.g. "rw-p"
	Offset uint64 `json:"offset"`
	Major  uint32 `json:"major"`
	Minor  uint32 `json:"minor"`
	Inode  uint64 `json:"inode"`
	Path   string `json:"path"` // as in maps: a file, [heap], [stack], ... or empty

	// VmFlags are the two-letter flags from smaps ("rd", "wr", "mr", ...).
	VmFlags []string `json:"vmflags"`

	// Saved reports whether the contents were read. Regions that must not be
	// read ([vvar], [vsyscall], userfaultfd ranges, device mappings) are
	// listed but not saved, and SkipReason gives the reason.
	Saved      bool   `json:"saved"`
	SkipReason string `json:"skip_reason,omitempty"`

	// Runs lists the pages that were present (or swapped) at capture, as
	// byte ranges relative to Start. Pages outside every run were never
	// touched and read as zeros.
	Runs []Run `json:"runs"`
}

// Run is a page-aligned range of saved bytes inside a region. Data is set
// only in an image fresh from capture; the store keeps the bytes itself.
type Run struct {
	Off  uint64 `json:"off"`
	Len  uint64 `json:"len"`
	Data []byte `json:"-"`

	// Base marks, in an image with a Base, a run whose bytes equal those
	// of the base snapshot at the same addresses: unchanged since it.
	Base bool `json:"base,omitempty"`
}

// Len returns the size of the region in bytes.
func (r *Region) Len() uint64 { return r.End - r.Start }

// Shared reports whether other processes may see the region's memory
// (MAP_SHARED files, shared anonymous memory, SysV shm, memfd).
func (r *Region) Shared() bool { return len(r.Perms) == 4 && r.Perms[3] == 's' }

// FD kinds, as the fds file names them.
const (
	KindFile    = "file"
	KindDir     = "dir"
	KindPipe    = "pipe"
	KindSocket  = "socket"
	KindTTY     = "tty"
	KindAnon    = "anon"
	KindMemfd   = "memfd"
	KindDeleted = "deleted"
)

// FD is one open file descriptor.
type FD struct {
	Num    int    `json:"num"`
	Kind   string `json:"kind"`
	Target string `json:"target"` // readlink of /proc/PID/fd/NUM
	Pos    int64  `json:"pos"`
	Flags  uint32 `json:"flags"` // fdinfo flags, O_CLOEXEC included
	MntID  int    `json:"mnt_id"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Mode   uint32 `json:"mode"` // st_mode of the open file
}

// Signals is the process-wide signal state.
type Signals struct {
	// Actions holds the sigaction of signals 1..64 at index signal-1, in
	// the kernel's struct layout (handler, flags, restorer, mask).
	Actions [64]SigAction `json:"actions"`

	// QueuesSaved is set when Pending, ITimers and Timers were captured.
	// Snapshots of earlier versions lack them, and a restore leaves the
	// pending signals and timers of the process as they are.
	QueuesSaved bool `json:"queues_saved,omitempty"`

	// Pending lists the queued signals in the order of their queues: those
	// of each thread, then those of the process as a whole.
	Pending []PendingSignal `json:"pending,omitempty"`

	// ITimers holds the interval timers ITIMER_REAL, ITIMER_VIRTUAL and
	// ITIMER_PROF, in that order.
	ITimers [3]TimerValue `json:"itimers"`

	// Timers lists the POSIX timers (timer_create) by ID.
	Timers []PosixTimer `json:"timers,omitempty"`
}

// PendingSignal is one queued signal.
type PendingSignal struct {
	// TID is the thread whose private queue holds the signal, 0 for the
	// queue of the process.
	TID int `json:"tid"`
	// Info is the siginfo_t, SiginfoSize bytes.
	Info []byte `json:"info"`
}

// SiginfoSize is the size of the kernel's siginfo_t.
const SiginfoSize = 128

// Signo returns the signal number of a pending signal.
func (p *PendingSignal) Signo() int {
	if len(p.Info) < 4 {
		return 0
	}
	return int(int32(binary.LittleEndian.Uint32(p.Info)))
}

// TimerValue is the state of a timer: the time until it next expires
// (zero when disarmed) and its period (zero for a one-shot timer).
type TimerValue struct {
	Value    time.Duration `json:"value"`
	Interval time.Duration `json:"interval"`
}

// PosixTimer is one POSIX timer, as /proc/PID/timers and timer_gettime(2)
// describe it.
type PosixTimer struct {
	ID    int32 `json:"id"`
	Clock int32 `json:"clock"`
	// Notify is sigev_notify: SIGEV_SIGNAL, SIGEV_NONE, or SIGEV_THREAD_ID
	// with TID the thread to signal.
	Notify int32 `json:"notify"`
	TID    int   `json:"tid,omitempty"`
	Signal int32 `json:"signal"`
	// SigValue is sigev_value, which the timer's signals carry in si_value.
	SigValue uint64     `json:"sigvalue"`
	State    TimerValue `json:"state"`
}

// SigAction is the kernel's struct sigaction for x86-64.
type SigAction struct {
	Handler  uint64 `json:"handler"`
	Flags    uint64 `json:"flags"`
	Restorer uint64 `json:"restorer"`
	Mask     uint64 `json:"mask"`
}

// MemoryReader reads saved memory of an image: region i of Image.Regions,
// at an offset from the region's start. Bytes outside every saved run read
// as zeros.
type MemoryReader interface {
	ReadRegion(i int, p []byte, off uint64) error
}
