package engine

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/snapshot"
)

// checkOwnUserfaultfd rejects a restore whose contents step would write
// into a mapping that the process registered with a userfaultfd of its
// own, in missing or minor mode, or for synchronous write protection. A
// write that faults there waits for the process's handler, which cannot
// run while the process is frozen, or fails half way. Registrations for
// asynchronous write protection (the tracker's, or another ckptfs's) never
// wait and are allowed. cur is the current layout without the tracker's
// own flags, spans the ranges whose contents restore compares.
//
// Precondition: all threads stopped.
func checkOwnUserfaultfd(pid int, cur []snapshot.Region, spans []span) error {
	var pagemap *os.File
	defer func() {
		if pagemap != nil {
			pagemap.Close()
		}
	}()

	for i := range cur {
		r := &cur[i]
		if !slices.ContainsFunc(r.VmFlags, func(f string) bool { return f == "um" || f == "ui" || f == "uw" }) {
			continue
		}
		if len(intersectSpans([]span{{r.Start, r.End}}, spans)) == 0 {
			continue
		}
		if !slices.Contains(r.VmFlags, "um") && !slices.Contains(r.VmFlags, "ui") {
			if pagemap == nil {
				f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
				if err != nil {
					return fmt.Errorf("open pagemap of pid %d: %w", pid, err)
				}
				pagemap = f
			}
			async, err := wpAsync(pagemap, r)
			if err != nil {
				return err
			}
			if async {
				continue
			}
		}
		return reject(unix.EOPNOTSUPP, fmt.Sprintf("mapping %s is registered with a userfaultfd of the process, whose handler cannot run while it is frozen", regionName(r)))
	}
	return nil
}

// wpAsync reports whether the first page of r is registered for
// asynchronous write protection.
func wpAsync(pagemap *os.File, r *snapshot.Region) (bool, error) {
	req := scanRequest{start: r.Start, end: r.Start + pageSize, flags: pmScanCheckWPAsync, mask: pageIsWritten, ret: pageIsWritten}
	err := pagemapScan(int(pagemap.Fd()), req, nil, nil)
	switch {
	case errors.Is(err, unix.EPERM):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("check userfaultfd of %s: %w", regionName(r), err)
	}
	return true, nil
}
