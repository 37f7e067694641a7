package snapshot

import (
	"math/rand/v2"
	"testing"
)

const benchSize = 256 << 20

// benchImage returns one region of 256 MiB whose pages are a quarter
// random, half text and a quarter zero, in random order.
func benchImage(b *testing.B) *Image {
	b.Helper()
	rng := rand.New(rand.NewPCG(11, 12))
	data := make([]byte, benchSize)
	text := fill(rng, "text", 64*page)
	for off := 0; off < benchSize; off += page {
		switch rng.IntN(4) {
		case 0:
			for i := off; i < off+page; i += 8 {
				v := rng.Uint64()
				for k := range 8 {
					data[i+k] = byte(v >> (8 * k))
				}
			}
		case 1, 2:
			copy(data[off:off+page], text[rng.IntN(63)*page:])
		}
	}
	return &Image{Process: testProcess(1100), Regions: []Region{{Start: 0x7f0000000000, End: 0x7f0000000000 + benchSize,
		Perms: "rw-p", Saved: true, Runs: []Run{{Off: 0, Len: benchSize, Data: data}}}}}
}

func BenchmarkSave(b *testing.B) {
	s, _ := openTestStore(b)
	img := benchImage(b)
	b.SetBytes(benchSize)
	b.ResetTimer()

	var stored uint64
	for b.Loop() {
		info, err := s.Save(img, "")
		if err != nil {
			b.Fatalf("Save: %v", err)
		}
		stored = info.Stored

		b.StopTimer()
		if err := s.Remove(img.Process, info.Name); err != nil {
			b.Fatalf("Remove: %v", err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(stored)/benchSize, "stored/byte")
}

func BenchmarkReadRegion(b *testing.B) {
	s, _ := openTestStore(b)
	img := benchImage(b)
	if _, err := s.Save(img, "bench"); err != nil {
		b.Fatalf("Save: %v", err)
	}
	buf := make([]byte, 128<<10)
	b.SetBytes(benchSize)
	b.ResetTimer()

	for b.Loop() {
		// A new Snapshot starts with an empty frame cache.
		snap, err := s.Load(img.Process, "bench")
		if err != nil {
			b.Fatalf("Load: %v", err)
		}
		for off := uint64(0); off < benchSize; off += uint64(len(buf)) {
			if err := snap.ReadRegion(0, buf, off); err != nil {
				b.Fatalf("ReadRegion at %d: %v", off, err)
			}
		}
		if err := snap.Close(); err != nil {
			b.Fatalf("Close: %v", err)
		}
	}
}

// smallImage returns an image of about 400 KiB in a few regions, the size
// of an idle sleep(1): text, zero and random pages.
func smallImage() *Image {
	rng := rand.New(rand.NewPCG(13, 14))
	kinds := append(append(repeat("text", 60), repeat("zero", 20)...), repeat("random", 20)...)
	return &Image{
		Process: testProcess(1101),
		Threads: []Thread{{TID: 1101, Xstate: fill(rng, "random", 2432)}},
		Maps:    []byte("555500000000-555500040000 rw-p 00000000 00:00 0 [heap]\n"),
		Regions: []Region{
			{Start: 0x555500000000, End: 0x555500000000 + 64*page, Perms: "rw-p", Saved: true,
				Runs: []Run{runOf(rng, 0, kinds[:40]...)}},
			{Start: 0x7f0000000000, End: 0x7f0000000000 + 32*page, Perms: "rw-p", Saved: true,
				Runs: []Run{runOf(rng, 0, kinds[40:70]...)}},
			{Start: 0x7ffd00000000, End: 0x7ffd00000000 + 33*page, Perms: "rw-p", Path: "[stack]", Saved: true,
				Runs: []Run{runOf(rng, 3, kinds[70:]...)}},
		},
	}
}

// BenchmarkSaveSmall measures the fixed cost of a save, which syncs the
// disk, for a tiny image: into the directory of a process saved before,
// and as the first save of a process, which also creates its directory.
func BenchmarkSaveSmall(b *testing.B) {
	b.Run("again", func(b *testing.B) {
		s, _ := openTestStore(b)
		img := smallImage()
		if _, err := s.Save(img, "first"); err != nil {
			b.Fatalf("Save: %v", err)
		}
		b.ResetTimer()

		for b.Loop() {
			saveAndRemove(b, s, img)
		}
	})

	b.Run("first", func(b *testing.B) {
		s, _ := openTestStore(b)
		img := smallImage()
		b.ResetTimer()

		for b.Loop() {
			img.Process.PID++
			saveAndRemove(b, s, img)
		}
	})
}

// saveAndRemove times a Save of img and removes the snapshot untimed.
func saveAndRemove(b *testing.B, s *Store, img *Image) {
	info, err := s.Save(img, "")
	if err != nil {
		b.Fatalf("Save: %v", err)
	}

	b.StopTimer()
	if err := s.Remove(img.Process, info.Name); err != nil {
		b.Fatalf("Remove: %v", err)
	}
	b.StartTimer()
}

// BenchmarkLoad measures opening a snapshot of 256 MiB: its manifest,
// image, maps and index, with the checks Load makes.
func BenchmarkLoad(b *testing.B) {
	s, _ := openTestStore(b)
	img := benchImage(b)
	if _, err := s.Save(img, "bench"); err != nil {
		b.Fatalf("Save: %v", err)
	}
	b.ResetTimer()

	for b.Loop() {
		snap, err := s.Load(img.Process, "bench")
		if err != nil {
			b.Fatalf("Load: %v", err)
		}
		if err := snap.Close(); err != nil {
			b.Fatalf("Close: %v", err)
		}
	}
}
