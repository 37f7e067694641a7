// Package engine freezes a live x86-64 Linux process with ptrace, captures
// its state into a snapshot.Image and rolls it back in place.
//
// # Terms
//
// An op is one capture or restore of one process, from Begin to Close.
// Freezing seizes every thread (PTRACE_SEIZE, then PTRACE_INTERRUPT) and
// waits until each sits in a ptrace stop; thawing detaches every thread
// again. A region is one line of /proc/PID/maps; a run is a page-aligned
// range of saved bytes inside a region. An injected system call is one the
// engine makes a stopped thread of the target execute.
//
// # Life of an op
//
//  1. Begin rejects the daemon itself, kernel threads, zombies, processes
//     traced by another tracer and 32-bit processes. It starts the op's
//     goroutine, seizes and interrupts every thread and rescans
//     /proc/PID/task until a pass finds no new thread. It does not wait for
//     the stops, so it can run inside the handler of a FUSE write that the
//     target itself is making.
//  2. Capture (or Restore) waits for every stop with a deadline. A thread
//     reported by a clone event is adopted; a signal that arrived first is
//     delivered (PTRACE_CONT with it) and the thread interrupted again, so
//     no signal is lost; a thread that exits is dropped; an exec aborts the
//     op. A thread already in a job-control stop is remembered as such.
//  3. The work runs while everything is stopped. Capture reads maps before
//     the first injection, because the scratch page changes them.
//  4. Thaw runs on every path: it unmaps the scratch page, detaches each
//     thread, re-sends signals held back during injections and leaves a
//     job-stopped process stopped. Close ends the goroutine.
//
// # The locked thread
//
// The kernel accepts ptrace requests for a tracee only from the OS thread
// that attached it. Each op therefore has one goroutine that calls
// runtime.LockOSThread and never unlocks it; every ptrace call, wait and
// injection runs there, handed over by op.do. Helpers that need it say
// "Precondition: called on the op's locked thread". If the goroutine ends
// while a tracee is still attached, its OS thread exits and the kernel
// detaches the tracee, which then runs on (PTRACE_O_EXITKILL is never set).
//
// Waits name one tid with __WALL and WNOHANG, polled with a deadline:
// wait4(-1) would reap children that os/exec waits for, and a blocking
// wait on a thread that never stops would hang the op.
//
// # Injected system calls
//
// op.syscall points a stopped thread's rip at an existing `syscall; ret`
// pair (searched in the dynamic loader, the executable, libc, other
// executable files, then the vDSO), sets rax and the argument registers,
// orig_rax = -1 and a mask that blocks every signal, then resumes it with
// PTRACE_SYSCALL to the entry stop and again to the exit stop, reads rax
// and puts mask and registers back. Pointer arguments go through the
// scratch page, mapped by an injected mmap on first use and unmapped at
// thaw. One call costs about 90-105 us on a 2-core VM under load
// (BenchmarkInjectedGetpid).
//
// The daemon may die at any point of an injection; the kernel then
// detaches the thread, which runs on from wherever it is. So before the
// call the engine writes a signal frame below the thread's stack red zone,
// where a signal handler's frame would go: its registers (with a pending
// system call restart re-armed), its XSAVE area and its mask, and as
// return address the target's own rt_sigreturn code. rsp points at that
// address, so an untraced thread finishes the call, returns into the frame
// and rt_sigreturn puts its whole state back. A thread stopped inside an
// rseq critical section is moved to the section's abort handler first, as
// the kernel does after any preemption.
//
// # Lock order
//
// The package holds no mutex across a ptrace wait. An op serialises its own
// work through its channel; callers that keep one op per process (the fs
// layer) must not hold a lock that a FUSE request from the target could
// need while calling Begin, Capture or Restore.
//
// # Hazards
//
//   - Self-capture: a target thread inside a FUSE request to this daemon
//     cannot reach its ptrace stop until the request is answered. Begin
//     therefore only interrupts; the caller answers the request and then
//     calls Capture.
//   - An injected close or other call on a file of this daemon's mount
//     sends a FUSE request to the daemon while the op waits.
//   - A thread stopped inside an interruptible system call is saved with
//     registers that re-enter it (see rearmSyscall); the raw ones are kept.
//   - Regions that must not be read are listed but not saved: [vvar],
//     [vvar_vclock], [vsyscall], [uprobes], userfaultfd ranges in missing
//     or minor mode (a read would wait for the frozen handler), shadow
//     stacks, device and PFN mappings, secret memory.
//   - The target's seccomp filter applies to injected system calls.
//   - Capture copies memory while the process is frozen, so its freeze
//     grows with the memory saved. CaptureCOW instead injects a clone
//     without CLONE_VM (exit signal 0, sharing pages copy-on-write) as
//     the last step of the freeze, thaws, and reads the clone through
//     /proc/CLONE/mem; the freeze then costs about the fork's page-table
//     copy (17-22 ms for 1 GiB of touched 4 KiB pages on a 2-core VM).
//     The clone is a zombie child of the target once killed: the op
//     reaps it by an injected wait4 in a second, short freeze, and every
//     thaw reaps clones left by an earlier op or a daemon that died.
//
// # Write tracking
//
// A Tracker passed to Op.Track keeps, between ops, a userfaultfd of the
// target in asynchronous write-protect mode, registered on every private
// writable mapping (see Tracker). Each capture or full restore
// write-protects the memory again; PAGEMAP_SCAN then lists the pages
// written since, with the kernel's fast path for that one category,
// which touches only page tables. A capture with a base reads only those
// pages (Run.Base marks the others), and a rollback to the base compares
// only those pages. Pages dropped with MADV_DONTNEED count as written.
// Empty pages that the write protection covers carry a pte marker, which
// pagemap shows as a swapped page of swap type 31; holdsData leaves those
// out. Tracker.Precopy moves the copy of pages written long before a
// capture out of its freeze.
package engine
