package snapshot

import (
	"fmt"
)

// checkImage checks the parts of an image the store relies on: a pid, and
// runs that are sorted, disjoint, non-empty and inside their region. With
// data set, every run must also carry exactly Len bytes of Data.
func checkImage(img *Image, data bool) error {
	if img.Process.PID <= 0 {
		return fmt.Errorf("image has pid %d", img.Process.PID)
	}
	for i := range img.Regions {
		if err := checkRuns(&img.Regions[i], data); err != nil {
			return fmt.Errorf("region %d (%x-%x): %w", i, img.Regions[i].Start, img.Regions[i].End, err)
		}
	}
	return nil
}

func checkRuns(r *Region, data bool) error {
	if r.End < r.Start {
		return fmt.Errorf("region ends before it starts")
	}
	next := uint64(0)
	for j, run := range r.Runs {
		if run.Len == 0 || run.Off < next || run.Off > r.Len() || run.Len > r.Len()-run.Off {
			return fmt.Errorf("run %d (%d+%d) is empty, unsorted, overlapping or outside the region of %d bytes",
				j, run.Off, run.Len, r.Len())
		}
		if data && uint64(len(run.Data)) != run.Len {
			return fmt.Errorf("run %d has %d bytes of data for a length of %d", j, len(run.Data), run.Len)
		}
		next = run.Off + run.Len
	}
	return nil
}
