package fs

import (
	"os"
	"testing"

	"github.com/ckptfs/ckptfs/engine/worker"
)

// TestMain lets the test binary serve as the restore worker that mounts
// in these tests start (see worker.Start).
func TestMain(m *testing.M) {
	worker.Main()
	os.Exit(m.Run())
}
