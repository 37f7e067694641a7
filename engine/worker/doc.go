// Package worker runs restores in a child process, so that the death of
// the process that requested one cannot stop it halfway.
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
// A Runner starts the program's own executable (/proc/self/exe) as the
// worker at its first restore and keeps it for the next ones. Every
// program that uses this package must therefore call Main first thing in
// main, and so must TestMain of every test binary that restores through
// it. The
// worker opens the store by its URL and loads each snapshot itself, and
// borrows the daemon's write tracking for the restore (see
// engine.Tracker.Lend). Requests and their events travel as JSON lines on
// a Unix stream socket, and log records through a pipe. When the socket
// closes, because the parent closed it or died, the worker finishes the
// restores it has begun and exits.
//
// The worker runs in a session of its own and ignores SIGINT, SIGTERM,
// SIGHUP and SIGPIPE, so that a terminal's Ctrl-C or a broken pipe to a
// dead parent cannot stop it either.
package worker
