// Package worker runs each restore in a child process of its own, so that
// the death of the process that requested it cannot stop it halfway.
//
// A restore overwrites a frozen process piece by piece: memory, layout,
// descriptors, registers. The kernel detaches the threads of a tracer
// that dies and lets them run, and the undo steps of a failed restore
// live in the tracer's memory. A daemon killed with SIGKILL in the
// middle of a restore it ran itself would thus leave the process running
// half rolled back. Run in a worker, the restore goes on when the daemon
// dies: it completes, or fails and undoes its changes, and then thaws the
// process. Only the death of the worker itself can still cut it short.
//
// Start runs the program's own executable (/proc/self/exe) as the worker,
// so every program that calls Start must call Main first thing in main,
// and so must TestMain of every test binary that restores through Start.
// The worker opens the store by its URL and loads the snapshot itself,
// and borrows the daemon's write tracking for the restore (see
// engine.Tracker.Lend). The request goes to it through a pipe, and its
// log records, progress and result come back through two others.
//
// The worker runs in a session of its own and ignores SIGINT, SIGTERM,
// SIGHUP and SIGPIPE, so that a terminal's Ctrl-C or a broken pipe to a
// dead parent cannot stop it either.
package worker
