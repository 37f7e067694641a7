package engine

import (
	"testing"
	"time"
)

// BenchmarkRestore256MiB1Percent measures a rollback of a process with
// 256 MiB of touched private memory of which 1% of the pages (every 100th)
// changed since the snapshot: the restore's wall time per op, and the time
// the process stayed frozen as frozen-ms.
func BenchmarkRestore256MiB1Percent(b *testing.B) {
	p := startCommanded(b, "bench_mem", "256")
	p.Expect("ready ")
	want := p.send(b, "sum", "sum ")
	img, err := Capture(p.PID, nil)
	if err != nil {
		b.Fatalf("capture: %v", err)
	}
	mem := imageMemory{img}

	var frozen time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		p.send(b, "d1", "dirtied ")
		b.StartTimer()

		op, err := Begin(p.PID, nil)
		if err != nil {
			b.Fatalf("begin: %v", err)
		}
		_, err = op.Restore(img, mem, nil)
		op.Close()
		if err != nil {
			b.Fatalf("restore: %v", err)
		}
		frozen += op.frozenFor
	}
	b.StopTimer()

	b.ReportMetric(float64(frozen.Microseconds())/1000/float64(b.N), "frozen-ms/op")
	if got := p.send(b, "sum", "sum "); got != want {
		b.Errorf("checksum after restore %s, want %s as at capture", got, want)
	}
}
