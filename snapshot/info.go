package snapshot

import (
	"time"
)

// Info describes one committed snapshot. The manifest stores every field
// except Stored, which the store computes from the sizes of the files.
type Info struct {
	Name    string    `json:"name"`
	Process ProcessID `json:"process"`

	// UID is the real uid of the process at capture, the owner of the
	// snapshot.
	UID  uint32 `json:"uid"`
	Comm string `json:"comm"`
	Exe  string `json:"exe"`

	Captured time.Time     `json:"captured"`
	Frozen   time.Duration `json:"frozen"`
	Threads  int           `json:"threads"`
	Regions  int           `json:"regions"`

	// Bytes is the memory saved, uncompressed: the sum of all run lengths,
	// zero pages included.
	Bytes uint64 `json:"bytes"`

	// Stored is the size of the snapshot's files on disk, manifest
	// included. For an incremental snapshot it counts only what that
	// snapshot added, not the frames it shares with older snapshots.
	Stored uint64 `json:"stored"`

	// Base is Image.Base: the snapshot this one was captured relative to,
	// or empty.
	Base string `json:"base,omitempty"`
}

// newInfo describes img saved under name; Stored is left zero.
func newInfo(img *Image, name string) Info {
	info := Info{
		Name:     name,
		Process:  img.Process,
		UID:      img.Creds.UID[0],
		Comm:     img.Comm,
		Exe:      img.Exe,
		Captured: img.Captured,
		Frozen:   img.Frozen,
		Threads:  len(img.Threads),
		Regions:  len(img.Regions),
		Base:     img.Base,
	}
	for i := range img.Regions {
		for _, run := range img.Regions[i].Runs {
			info.Bytes += run.Len
		}
	}
	return info
}
