package main

import (
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressDelay is how long an operation runs before a spinner appears, so
// that quick operations print nothing extra.
const progressDelay = time.Second

// startProgress shows a spinner with description on w when w is a terminal
// and the operation is still running after progressDelay. The returned
// function stops the spinner and erases it; call it before printing results.
func startProgress(w io.Writer, description string) (stop func()) {
	if !isTerminal(w) {
		return func() {}
	}

	var (
		mu      sync.Mutex // protects bar and stopped
		bar     *progressbar.ProgressBar
		stopped bool
	)
	timer := time.AfterFunc(progressDelay, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(description),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetRenderBlankState(true))
	})

	return func() {
		timer.Stop()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if bar != nil {
			_ = bar.Finish()
		}
	}
}
