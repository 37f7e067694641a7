package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// cleanups holds the undo actions of everything the bench set up: processes
// it started, mounts, temporary directories. They run newest first, once,
// either when main returns or when SIGINT/SIGTERM/SIGHUP arrives.
type cleanups struct {
	mu    sync.Mutex
	funcs []func()
	done  bool
}

var cleanup cleanups

// add registers f and returns a function that runs f now and removes it
// from the list, so an object released early is not released twice.
func (c *cleanups) add(f func()) (release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()

	var once sync.Once
	wrapped := func() { once.Do(f) }
	c.funcs = append(c.funcs, wrapped)
	return wrapped
}

// run runs every registered action, newest first. Later calls do nothing.
func (c *cleanups) run() {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	funcs := c.funcs
	c.funcs = nil
	c.mu.Unlock()

	for i := len(funcs) - 1; i >= 0; i-- {
		funcs[i]()
	}
}

// exitOnSignal runs the cleanups and exits with status 1 when the bench is
// interrupted, so no target, mount or temporary store outlives it. SIGPIPE
// is among the signals because a reader of the bench's output that goes
// away would otherwise kill it without cleanup.
func exitOnSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		sig := <-ch
		fmt.Fprintf(os.Stderr, "bench: %v, cleaning up\n", sig)
		cleanup.run()
		os.Exit(1)
	}()
}
