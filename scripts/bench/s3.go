package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckptfs/ckptfs/snapshot"
)

// Metric names of the S3 rows, each measured beside the same operation on
// a local store in the same run.
const (
	mS3Capture  = "S3 capture wall (capture + save)"
	mS3Rollback = "S3 rollback, all changed (load + restore)"
)

// refLocal marks a reference measured on a local store in the same run.
const refLocal = "local"

// Settings of the gateway that -s3 gateway starts.
const (
	gatewayBucket  = "bench"
	gatewayAccess  = "ckptfs-bench"
	gatewayTimeout = 30 * time.Second // until it accepts connections
)

// s3Bench measures a store in an S3 bucket beside a local one.
type s3Bench struct {
	*bench
	store *snapshot.Store
}

// openS3 opens the S3 store that the -s3 flag names. "gateway" starts a
// versitygw on a free loopback port for the run. s3://BUCKET/PREFIX uses
// an existing bucket, reached through the environment as ckptfs reaches it.
func openS3(b *bench, spec string) (*s3Bench, error) {
	url := spec
	if spec == "gateway" {
		var err error
		if url, err = startGateway(b.tmp); err != nil {
			return nil, err
		}
	} else if !strings.HasPrefix(spec, "s3://") {
		return nil, fmt.Errorf("invalid -s3 %q: want gateway or s3://BUCKET/PREFIX", spec)
	}

	st, err := snapshot.OpenURL(url, b.log)
	if err != nil {
		return nil, fmt.Errorf("open S3 store: %w", err)
	}
	progress("S3 store: %s", st.Dir())
	return &s3Bench{bench: b, store: st}, nil
}

// startGateway starts versitygw on a free loopback port, serving a bucket
// in a directory under tmp, points this process's S3 environment at it and
// returns the store URL. A cleanup kills the gateway by its pid.
func startGateway(tmp string) (string, error) {
	bin, err := gatewayPath()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(tmp, "gateway")
	if err := os.MkdirAll(filepath.Join(dir, gatewayBucket), 0o700); err != nil {
		return "", fmt.Errorf("create gateway bucket directory: %w", err)
	}
	addr, err := freeLoopbackPort()
	if err != nil {
		return "", err
	}
	secret := make([]byte, 16)
	rand.Read(secret)

	cmd := exec.Command(bin, "--port", addr, "--access", gatewayAccess, "--secret", hex.EncodeToString(secret), "posix", dir)
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	cleanup.add(func() { killChild(cmd) })
	if err := waitListening(addr); err != nil {
		return "", fmt.Errorf("versitygw on %s: %w", addr, err)
	}

	os.Setenv("CKPTFS_S3_ENDPOINT", "http://"+addr)
	os.Setenv("AWS_ACCESS_KEY_ID", gatewayAccess)
	os.Setenv("AWS_SECRET_ACCESS_KEY", hex.EncodeToString(secret))
	return "s3://" + gatewayBucket + "/ckptfs", nil
}

// gatewayPath finds versitygw on PATH or in GOPATH/bin.
func gatewayPath() (string, error) {
	if path, err := exec.LookPath("versitygw"); err == nil {
		return path, nil
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("versitygw is not on PATH and `go env GOPATH` failed: %w", err)
	}
	path := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("versitygw is not on PATH nor at %s; install it with "+
			"`go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`: %w", path, err)
	}
	return path, nil
}

func freeLoopbackPort() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	addr := listener.Addr().String()
	if err := listener.Close(); err != nil {
		return "", fmt.Errorf("close port probe: %w", err)
	}
	return addr, nil
}

func waitListening(addr string) error {
	deadline := time.Now().Add(gatewayTimeout)
	for {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening after %v: %w", gatewayTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// benchSize measures capture and rollback of a target of mib MiB with the
// S3 store and with a local store, in the same runs.
func (s *s3Bench) benchSize(mib int) {
	size := sizeLabel(mib)
	capture := s.metric(mS3Capture, size, unitSeconds, refLocal)
	rollback := s.metric(mS3Rollback, size, unitSeconds, refLocal)
	progress("%s: starting target for the S3 store", size)

	tgt, err := startMemTarget(s.memBin, mib)
	if err != nil {
		capture.fail(err)
		return
	}
	defer tgt.kill()

	// Warm up both stores and the target's pages.
	if err := s.warmUp(tgt.pid); err == nil {
		_, _, err = s.captureSaveRemove(s.store, tgt.pid, "warm-up")
	}
	if err != nil {
		capture.fail(fmt.Errorf("warm-up: %w", err))
		return
	}
	for run := 1; run <= s.runs; run++ {
		progress("%s: S3 run %d of %d", size, run, s.runs)
		if err := s.runOnce(tgt, size, run, capture, rollback); err != nil {
			capture.fail(err)
		}
	}
}

// captureSaveRemove captures pid into st as name, removes the snapshot
// again and returns its info and the wall time of capture and save.
func (s *s3Bench) captureSaveRemove(st *snapshot.Store, pid int, name string) (*snapshot.Info, time.Duration, error) {
	_, info, wall, err := s.captureSave(st, pid, name, nil)
	if err != nil {
		return nil, 0, err
	}
	if err := st.Remove(info.Process, info.Name); err != nil {
		return nil, 0, fmt.Errorf("remove %s from %s: %w", info.Name, st.Dir(), err)
	}
	return info, wall, nil
}

// runOnce captures the target into both stores, then rolls it back from
// each after rewriting all its pages. The order of the stores alternates
// between runs, so that neither always finds the other's warm caches.
func (s *s3Bench) runOnce(tgt *memTarget, size string, run int, capture, rollback *row) error {
	local, release, err := s.newStore(fmt.Sprintf("s3-local-%s-%d", size, run))
	if err != nil {
		return err
	}
	defer release()
	stores := []*snapshot.Store{s.store, local}
	if run%2 == 0 {
		stores = []*snapshot.Store{local, s.store}
	}

	sum, err := tgt.sum()
	if err != nil {
		return err
	}
	walls := map[*snapshot.Store][2]time.Duration{}
	for _, st := range stores {
		_, info, captured, err := s.captureSave(st, tgt.pid, fmt.Sprintf("run-%d", run), nil)
		if err != nil {
			return err
		}
		restored, err := s.rollbackAll(st, tgt, saved{info: info, sum: sum})
		if err != nil {
			rollback.fail(err)
		}
		walls[st] = [2]time.Duration{captured, restored}
		if err := st.Remove(info.Process, info.Name); err != nil {
			return fmt.Errorf("remove %s from %s: %w", info.Name, st.Dir(), err)
		}
	}

	capture.add(walls[s.store][0].Seconds(), walls[local][0].Seconds())
	if walls[s.store][1] > 0 && walls[local][1] > 0 {
		rollback.add(walls[s.store][1].Seconds(), walls[local][1].Seconds())
	}
	progress("%s: S3 capture %v, rollback %v; local capture %v, rollback %v", size,
		walls[s.store][0].Round(time.Millisecond), walls[s.store][1].Round(time.Millisecond),
		walls[local][0].Round(time.Millisecond), walls[local][1].Round(time.Millisecond))
	return nil
}

// rollbackAll rewrites every page of the target, rolls it back to snap
// from st, checks the buffer hash and returns the wall time of load and
// restore.
func (s *s3Bench) rollbackAll(st *snapshot.Store, tgt *memTarget, snap saved) (time.Duration, error) {
	if _, err := tgt.dirty(true); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := s.loadRestore(st, tgt.pid, snap.info, nil); err != nil {
		return 0, err
	}
	wall := time.Since(start)

	sum, err := tgt.sum()
	if err != nil {
		return 0, err
	}
	if sum != snap.sum {
		return 0, errors.New("rollback from " + st.Dir() + " left the target's buffer different from the snapshot")
	}
	return wall, nil
}
