package main

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// fakeMemory fills every read with its region index and fails reads of
// region failRegion with EIO.
type fakeMemory struct {
	failRegion int
}

func (f fakeMemory) ReadRegion(i int, p []byte, off uint64) error {
	if i == f.failRegion {
		return unix.EIO
	}
	for k := range p {
		p[k] = byte(i)
	}
	return nil
}

func TestCountingReaderCountsConcurrentReads(t *testing.T) {
	const (
		goroutines = 16
		reads      = 200
	)
	src := &countingReader{src: fakeMemory{failRegion: 7}}

	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			p := make([]byte, 1000+g)
			for r := 0; r < reads; r++ {
				if err := src.ReadRegion(1, p, uint64(r)); err != nil {
					t.Errorf("read region 1: %v", err)
					return
				}
				// Failed reads add nothing.
				if err := src.ReadRegion(7, p, 0); !errors.Is(err, unix.EIO) {
					t.Errorf("read region 7: got %v, want EIO", err)
					return
				}
			}
		}(g)
	}
	wg.Wait()

	var want int64
	for g := 0; g < goroutines; g++ {
		want += int64(reads * (1000 + g))
	}
	if got := src.Done(); got != want {
		t.Errorf("counted %d bytes, want %d", got, want)
	}
}

func TestProgressSilentWhenNotTerminal(t *testing.T) {
	var out bytes.Buffer
	src := &countingReader{src: fakeMemory{failRegion: -1}}
	stop := startProgress(&out, "capturing pid 1", 1<<20, src.Done)

	if err := src.ReadRegion(0, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read region 0: %v", err)
	}
	time.Sleep(progressDelay + 3*progressTick)
	stop()

	if out.Len() != 0 {
		t.Errorf("progress wrote %q to a non-terminal writer", out.String())
	}
}

func TestProgressTotalSumsRuns(t *testing.T) {
	tests := []struct {
		name    string
		regions []snapshot.Region
		want    int64
	}{
		{"no regions", nil, 0},
		{"region without runs", []snapshot.Region{{Start: 0x1000, End: 0x9000}}, 0},
		{"several regions and runs", []snapshot.Region{
			{Start: 0x1000, End: 0x9000, Runs: []snapshot.Run{{Off: 0, Len: 0x1000}, {Off: 0x3000, Len: 0x2000}}},
			{Start: 0x10000, End: 0x20000},
			{Start: 0x20000, End: 0x40020000, Runs: []snapshot.Run{{Off: 0, Len: 0x40000000}}},
		}, 0x1000 + 0x2000 + 0x40000000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := &snapshot.Image{Regions: tt.regions}
			if got := runBytes(img); got != tt.want {
				t.Errorf("runBytes = %#x, want %#x", got, tt.want)
			}
		})
	}
}
