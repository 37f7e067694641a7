package engine

import (
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/snapshot"
)

// BenchmarkRestore256MiB1Percent measures a rollback of a process with
// 256 MiB of touched private memory of which 1% of the pages (every 100th)
// changed since the snapshot: the restore's wall time per op, and the time
// the process stayed frozen as frozen-ms.
func BenchmarkRestore256MiB1Percent(b *testing.B) {
	benchmarkRestore(b, "256", "d1", false)
}

// BenchmarkRestore256MiB1PercentStore is BenchmarkRestore256MiB1Percent
// with the snapshot read from a store on disk, so that every frame of
// saved memory is decompressed and checked.
func BenchmarkRestore256MiB1PercentStore(b *testing.B) {
	benchmarkRestore(b, "256", "d1", true)
}

// BenchmarkRestore256MiBAllChanged is BenchmarkRestore256MiB1Percent with
// every page changed since the snapshot.
func BenchmarkRestore256MiBAllChanged(b *testing.B) {
	benchmarkRestore(b, "256", "da", false)
}

// BenchmarkRestore1GiBAllChanged is BenchmarkRestore256MiBAllChanged with
// 1 GiB of memory.
func BenchmarkRestore1GiBAllChanged(b *testing.B) {
	benchmarkRestore(b, "1024", "da", false)
}

// benchmarkRestore starts bench_mem with sizeMiB of memory, captures it,
// and then times restores, each after the target ran dirty (a bench_mem
// command). With stored set, the snapshot is saved to a store and loaded
// back before the restores.
func benchmarkRestore(b *testing.B, sizeMiB, dirty string, stored bool) {
	p := startCommanded(b, "bench_mem", sizeMiB)
	p.Expect("ready ")
	want := p.send(b, "sum", "sum ")
	img, err := Capture(p.PID, nil)
	if err != nil {
		b.Fatalf("capture: %v", err)
	}
	var mem snapshot.MemoryReader = imageMemory{img}
	if stored {
		snap := storeImage(b, img)
		img, mem = snap.Image, snap
	}

	var frozen time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		p.send(b, dirty, "dirtied ")
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

// storeImage saves img to a store in a temporary directory and loads it
// back.
func storeImage(t testing.TB, img *snapshot.Image) *snapshot.Snapshot {
	t.Helper()
	store, err := snapshot.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	info, err := store.Save(img, "")
	if err != nil {
		t.Fatalf("save snapshot: %v", err)
	}
	snap, err := store.Load(img.Process, info.Name)
	if err != nil {
		t.Fatalf("load snapshot %s: %v", info.Name, err)
	}
	t.Cleanup(func() { snap.Close() })
	return snap
}
