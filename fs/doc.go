// Package fs serves the ckptfs tree over FUSE: one directory per process,
// control files that capture and restore it, and one read-only directory
// per snapshot.
//
// # The tree
//
//	/ckpt/                      root-owned, 0555
//	  self -> <tgid>            the caller's process
//	  <pid>/                    owned by the process's effective uid, 0700
//	    capture                 write "1", "" or NAME; read the newest name
//	    restore                 write "NAME [PART...]"; read the last restored
//	    status                  read the last operation and its outcome
//	    latest -> <name>        the newest snapshot, absent when none
//	    <name>/                 one snapshot, owned by its uid, 0500
//	      info regs fpregs maps fds        generated files, 0400
//	      threads/<tid>/{regs,fpregs}
//	      memory/<start>-<end>             saved bytes of one region
//
// A process directory stands for one process identity (pid, start time,
// boot id), not for a pid. Its inode generation is the start time, so a
// recycled pid gets a new inode, and it lists only the snapshots of that
// identity. Any live process that is not a kernel thread can be looked up,
// but /ckpt lists only those the caller could ptrace, leaving out the
// daemon itself and zombies. The handlers of a process directory and of
// its control files check the caller again with the kernel's ptrace rules
// (see mayPtrace) and log a refusal, and a restore or removal also checks
// the caller against the snapshot's owner. A restore is refused before the
// freeze when the process changed credentials or called execve since the
// capture (engine.CheckUnchanged). Snapshot files are listed and opened
// only by the snapshot's owner and by callers with CAP_SYS_PTRACE.
//
// # Kernel caches
//
// The root, the process directories and their control files change at any
// time, so their entries, attributes and failed lookups are never cached:
// every path walk comes back to the daemon, which checks the process and
// the store again. Control files have no size known in advance; they are
// opened with FOPEN_DIRECT_IO, so the kernel reads them to the end, and
// FOPEN_NONSEEKABLE.
//
// A snapshot never changes after it is committed. Its directory is loaded
// and its small files rendered once, when it is first looked up, and the
// kernel may cache entries and attributes below it for an hour and the
// pages of its memory files across opens (FOPEN_KEEP_CACHE). A snapshot
// removed and taken again under the same name gets new inodes, because the
// directory's entry in the process directory is checked on every lookup.
// Kernel entries are invalidated (NotifyEntry) only from a separate
// goroutine, never inside a request handler, where the kernel would wait
// for the handler that waits for it.
//
// A mount by root raises the kernel's read-ahead for the mount to 4 MiB
// (read_ahead_kb of its bdi), so a sequential read of a memory file
// arrives as several 1 MiB requests at once, whose frames decode on every
// core. With smaller requests, each open memory file decodes the frames
// ahead of a sequential reader in the background (readahead.go).
//
// # Write tracking
//
// Each process captured through the mount gets an engine.Tracker, kept
// until the process exits or the mount ends. A capture first copies the
// pages written since the last snapshot while the process runs (Precopy).
// It then captures relative to that snapshot if the store still holds it
// as it was. A full restore makes the restored snapshot the base.
//
// # Operations
//
// A write to capture or restore runs the whole operation and returns when
// it is done: for a capture, when the snapshot is durable in the store.
// The one exception is a write by the process to its own control file
// (echo 1 > /ckpt/self/capture). Freezing the process interrupts that
// write's own FUSE request, and the writing thread cannot reach its ptrace
// stop before the request is answered, so waiting for the stop inside the
// handler would deadlock. The handler therefore calls engine.Begin, which
// seizes and interrupts every thread without waiting, copies the request,
// and returns len(data) at once, ignoring the cancelled request context.
// The writing thread then stops exactly at the return of its write, which
// becomes the snapshot's point. A goroutine finishes the operation (waits
// for the stops, reads or writes the process, thaws it, saves), and the
// status file reports its outcome: "result: running" until then, as it
// does during any capture or restore.
//
// # Locks
//
// Only one capture or restore runs per process, from the freeze until its
// snapshot is durable; a second fails at once with EBUSY (procState.acquire).
// Nothing waits for that ownership except in one case: a request of the
// process itself, during an operation the process made on itself, once the
// engine has thawed the process (the requesting thread is no longer traced,
// or the capture is saving). It waits for the operation to end, so that a
// process that captures itself and restores at once finds its snapshot.
// The wait is safe inside a request of the process, because the rest of
// such an operation never touches the process: a self-capture copies
// memory while frozen. The save of any other capture freezes the process
// once more to reap its copy-on-write clone, so during it even the
// process's own requests get EBUSY, as do requests from threads still
// traced, which cannot stop until they are answered.
//
// While an operation runs, each lookup of a control file returns a new
// node. The kernel holds an inode's lock for the whole of a write to it, so
// a second writer of the same node would otherwise wait in the kernel for
// the first write instead of reaching the daemon and getting EBUSY.
//
// procState.mu and mountState.mu are held only to copy a few fields,
// never across a ptrace wait, a store write or a call into the engine. No
// lock is held while a handler waits for the target; in particular the
// engine may inject a close(2) of a descriptor on this mount into a frozen
// process, which sends a FLUSH request here.
//
// # Errors
//
// errnos.Of is the one place where an error becomes an errno: a
// *engine.RejectError returns its Errno, other errors the first errno of
// the contract they wrap (ESRCH, EBUSY, EPERM, EACCES, EEXIST, ENOENT,
// EINVAL, ENOSPC, EOPNOTSUPP), and anything else EIO. The status file
// keeps the full text of the last failure, and the log records it with
// its errno.
package fs
