package snapshot

import (
	"fmt"
)

// checkImage checks the parts of an image the store relies on: a pid, a
// valid Base name when set, and runs that are sorted, disjoint, non-empty
// and inside their region, marked Base only when the image has a base.
// With data set, every run but those marked Base must also carry exactly
// Len bytes of Data.
func checkImage(img *Image, data bool) error {
	if img.Process.PID <= 0 {
		return fmt.Errorf("image has pid %d", img.Process.PID)
	}
	if img.Base != "" {
		if err := ValidName(img.Base); err != nil {
			return fmt.Errorf("base: %v", err)
		}
	}
	for i := range img.Regions {
		if err := checkRuns(&img.Regions[i], img.Base != "", data); err != nil {
			return fmt.Errorf("region %d (%x-%x): %w", i, img.Regions[i].Start, img.Regions[i].End, err)
		}
	}
	for i := range img.Signals.Pending {
		p := &img.Signals.Pending[i]
		if len(p.Info) != SiginfoSize || p.Signo() < 1 || p.Signo() > 64 {
			return fmt.Errorf("pending signal %d has %d bytes of siginfo for signal %d, want %d bytes for a signal in 1..64",
				i, len(p.Info), p.Signo(), SiginfoSize)
		}
	}
	return nil
}

func checkRuns(r *Region, hasBase, data bool) error {
	if r.End < r.Start {
		return fmt.Errorf("region ends before it starts")
	}
	next := uint64(0)
	for j, run := range r.Runs {
		if run.Len == 0 || run.Off < next || run.Off > r.Len() || run.Len > r.Len()-run.Off {
			return fmt.Errorf("run %d (%d+%d) is empty, unsorted, overlapping or outside the region of %d bytes",
				j, run.Off, run.Len, r.Len())
		}
		if run.Base && !hasBase {
			return fmt.Errorf("run %d is marked Base in an image without a base", j)
		}
		if data && !run.Base && uint64(len(run.Data)) != run.Len {
			return fmt.Errorf("run %d has %d bytes of data for a length of %d", j, len(run.Data), run.Len)
		}
		next = run.Off + run.Len
	}
	return nil
}
