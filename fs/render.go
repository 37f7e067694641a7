package fs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// renderInfo formats the info file: one "key: value" line per fact.
func renderInfo(info snapshot.Info, img *snapshot.Image) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\n", info.Name)
	fmt.Fprintf(&b, "pid: %d\n", info.Process.PID)
	fmt.Fprintf(&b, "start_time: %d\n", info.Process.StartTime)
	fmt.Fprintf(&b, "boot_id: %s\n", info.Process.BootID)
	fmt.Fprintf(&b, "uid: %d\n", info.UID)
	fmt.Fprintf(&b, "comm: %s\n", info.Comm)
	fmt.Fprintf(&b, "exe: %s\n", info.Exe)
	fmt.Fprintf(&b, "captured: %s\n", info.Captured.Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "threads: %d\n", info.Threads)
	fmt.Fprintf(&b, "regions: %d\n", info.Regions)
	fmt.Fprintf(&b, "bytes: %d\n", info.Bytes)
	fmt.Fprintf(&b, "stored: %d\n", info.Stored)
	if info.Base != "" {
		fmt.Fprintf(&b, "base: %s\n", info.Base)
	}
	if img != nil && !img.BaseCaptured.IsZero() {
		fmt.Fprintf(&b, "base_captured: %s\n", img.BaseCaptured.Format(time.RFC3339Nano))
	}
	fmt.Fprintf(&b, "frozen: %s\n", info.Frozen.Round(time.Microsecond))
	if img != nil {
		fmt.Fprintf(&b, "job_stopped: %t\n", img.JobStopped)
		fmt.Fprintf(&b, "xcr0: %#x\n", img.XCR0)
	}
	if img != nil && img.Signals.QueuesSaved {
		fmt.Fprintf(&b, "pending_signals: %s\n", pendingSignals(img.Signals.Pending))
		fmt.Fprintf(&b, "timers: %d\n", len(img.Signals.Timers))
	}
	return []byte(b.String())
}

// pendingSignals lists the numbers of the queued signals, in queue order
// and with repeats, or "none".
func pendingSignals(pending []snapshot.PendingSignal) string {
	if len(pending) == 0 {
		return "none"
	}
	nums := make([]string, len(pending))
	for i := range pending {
		nums[i] = strconv.Itoa(pending[i].Signo())
	}
	return strings.Join(nums, " ")
}

// renderRegs formats general registers as "name 0xHEX" lines, named and
// ordered as the kernel's struct user_regs_struct on x86-64.
func renderRegs(r *unix.PtraceRegs) []byte {
	regs := []struct {
		name  string
		value uint64
	}{
		{"r15", r.R15}, {"r14", r.R14}, {"r13", r.R13}, {"r12", r.R12},
		{"rbp", r.Rbp}, {"rbx", r.Rbx}, {"r11", r.R11}, {"r10", r.R10},
		{"r9", r.R9}, {"r8", r.R8}, {"rax", r.Rax}, {"rcx", r.Rcx},
		{"rdx", r.Rdx}, {"rsi", r.Rsi}, {"rdi", r.Rdi}, {"orig_rax", r.Orig_rax},
		{"rip", r.Rip}, {"cs", r.Cs}, {"eflags", r.Eflags}, {"rsp", r.Rsp},
		{"ss", r.Ss}, {"fs_base", r.Fs_base}, {"gs_base", r.Gs_base},
		{"ds", r.Ds}, {"es", r.Es}, {"fs", r.Fs}, {"gs", r.Gs},
	}

	var b strings.Builder
	for _, reg := range regs {
		fmt.Fprintf(&b, "%s %#x\n", reg.name, reg.value)
	}
	return []byte(b.String())
}

// renderFDs formats the descriptor table, one "FD KIND TARGET key=value..."
// line a descriptor. Targets are escaped as in /proc/mounts (space, tab,
// newline and backslash as \040, \011, \012 and \134) so that every line
// splits on spaces.
func renderFDs(fds []snapshot.FD) []byte {
	var b strings.Builder
	for _, fd := range fds {
		fmt.Fprintf(&b, "%d %s %s", fd.Num, fd.Kind, escapeField(fd.Target))
		if hasOffset(fd.Kind) {
			fmt.Fprintf(&b, " pos=%d", fd.Pos)
		}
		fmt.Fprintf(&b, " flags=0%o mnt_id=%d dev=%d:%d ino=%d mode=0%o\n",
			fd.Flags, fd.MntID, unix.Major(fd.Dev), unix.Minor(fd.Dev), fd.Ino, fd.Mode)
	}
	return []byte(b.String())
}

// hasOffset reports whether descriptors of kind have a meaningful file
// position.
func hasOffset(kind string) bool {
	switch kind {
	case snapshot.KindFile, snapshot.KindDir, snapshot.KindDeleted, snapshot.KindMemfd, snapshot.KindTTY:
		return true
	}
	return false
}

var fieldEscaper = strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`)

func escapeField(s string) string {
	if s == "" {
		return "-"
	}
	return fieldEscaper.Replace(s)
}

// regionName is the name of a region's memory file: its bounds as maps
// prints them.
func regionName(r *snapshot.Region) string {
	return fmt.Sprintf("%08x-%08x", r.Start, r.End)
}
