package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// unit is the unit of a row's numbers, which sets how they are printed.
type unit int

const (
	unitSeconds unit = iota
	unitPercent      // a share in percent
	unitRate         // bytes per second, printed in GB/s (1e9)
	unitBytes        // printed in MiB
)

// Reference kinds, printed in front of a reference value.
const (
	refCopy    = "copy"    // process_vm_readv of the same pages into a faulted-in buffer
	refZstd    = "zstd"    // the same pages as 1 MiB zstd frames, SpeedFastest
	refRead    = "read"    // cat of a plain file of the same size on the same disk, cache dropped
	refChanged = "changed" // share of the pages the target rewrote
	refTouched = "touched" // memory the target touched
)

// goal is a target the project aims for, on one metric at 1 GiB.
type goal struct {
	limit  float64 // in the row's unit
	atMost bool    // true: the value must not exceed limit; false: must reach it
}

// row is one line of the table: the samples of one metric at one size.
type row struct {
	metric, size string
	unit         unit
	refKind      string
	values, refs []float64
	errs         []string
	goal         *goal
}

// results collects rows in the order they are first used.
type results struct {
	rows []*row
}

// row returns the row of metric at size, creating it on first use.
func (r *results) row(metric, size string, u unit, refKind string) *row {
	for _, x := range r.rows {
		if x.metric == metric && x.size == size {
			return x
		}
	}
	x := &row{metric: metric, size: size, unit: u, refKind: refKind}
	r.rows = append(r.rows, x)
	return x
}

// add records one run's value and its reference from the same run.
func (x *row) add(value, ref float64) {
	x.values = append(x.values, value)
	x.refs = append(x.refs, ref)
}

// fail records a run whose measurement of this metric failed.
func (x *row) fail(err error) {
	x.errs = append(x.errs, err.Error())
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (u unit) format(v float64) string {
	switch u {
	case unitSeconds:
		return formatSeconds(v)
	case unitPercent:
		if v < 10 {
			return fmt.Sprintf("%.2f%%", v)
		}
		return fmt.Sprintf("%.1f%%", v)
	case unitRate:
		return fmt.Sprintf("%.2f GB/s", v/1e9)
	default:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
}

func formatSeconds(v float64) string {
	d := time.Duration(v * float64(time.Second))
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", v*1e3)
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", v*1e3)
	default:
		return fmt.Sprintf("%.2f s", v)
	}
}

// cells returns the median, reference, ratio and target cells of x.
func (x *row) cells() (value, ref, ratio, target string) {
	value, ref, ratio, target = "-", "-", "-", "-"
	if len(x.values) > 0 {
		m := median(x.values)
		value = x.unit.format(m)
		r := median(x.refs)
		ref = x.refKind + " " + x.unit.format(r)
		if r > 0 {
			ratio = fmt.Sprintf("%.2fx", m/r)
		}
		if x.goal != nil {
			target = x.goal.verdict(x.unit, m)
		}
	} else if x.goal != nil {
		target = x.goal.verdict(x.unit, -1)
	}
	if len(x.errs) > 0 {
		value = fmt.Sprintf("%s (%d of %d runs failed: %s)", value, len(x.errs), len(x.errs)+len(x.values), shorten(x.errs[0], 100))
	}
	return value, ref, ratio, target
}

// verdict prints the goal and whether the median m meets it; m < 0 means
// there is no measurement.
func (g *goal) verdict(u unit, m float64) string {
	sign, met := "≥", m >= g.limit
	if g.atMost {
		sign, met = "≤", m <= g.limit
	}
	text := sign + " " + u.format(g.limit)
	switch {
	case m < 0:
		return text + ": not measured"
	case met:
		return text + ": met"
	default:
		return text + ": missed"
	}
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// writeTable prints the results as one markdown table and a legend of the
// reference kinds.
func (r *results) writeTable(w io.Writer, runs int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "| metric | size | median of %d | reference | ratio | target |\n", runs)
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, x := range r.rows {
		value, ref, ratio, target := x.cells()
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.metric, x.size, value, ref, ratio, target)
	}
	b.WriteString("\nEach reference was measured in the same run, and ratio = median / reference median.\n\n" +
		"- copy: process_vm_readv of the same pages into a faulted-in buffer\n" +
		"- zstd: those pages as 1 MiB zstd frames (SpeedFastest)\n" +
		"- read: cat of a plain file of the same size on the same disk, page cache dropped\n" +
		"- changed: share of the pages the target rewrote\n" +
		"- touched: memory the target filled\n")
	if slices.ContainsFunc(r.rows, func(x *row) bool { return x.refKind == refLocal }) {
		b.WriteString("- local: the same operation on a local store in the same run\n")
	}

	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}
