package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	mCriuDump    = "CRIU dump wall (--leave-running, tmpfs images)"
	mCriuFrozen  = "CRIU frozen (frozen_time of stats-dump)"
	mCriuImage   = "CRIU image size"
	mCriuRestore = "CRIU restore wall (restore -d, original killed)"
)

// benchCRIU measures CRIU's dump and restore on the same targets. The
// images go to tmpfs, so CRIU's numbers carry no disk cost while ckptfs's
// include the store's writes and fsyncs.
func (b *bench) benchCRIU(criu string, sizes []int) error {
	if err := becomeSubreaper(); err != nil {
		return err
	}
	images, err := os.MkdirTemp("/dev/shm", "ckptfs-bench-criu-")
	if err != nil {
		return fmt.Errorf("create CRIU image directory on tmpfs: %w", err)
	}
	cleanup.add(func() { removeAll(images) })

	for _, mib := range sizes {
		size := sizeLabel(mib)
		b.metric(mCriuDump, size, unitSeconds, refCopy)
		b.metric(mCriuFrozen, size, unitSeconds, refCopy)
		b.metric(mCriuImage, size, unitBytes, refTouched)
		b.metric(mCriuRestore, size, unitSeconds, refCopy)
		for run := 1; run <= b.runs; run++ {
			progress("%s: CRIU run %d of %d", size, run, b.runs)
			if err := b.criuRun(criu, images, mib, run); err != nil {
				b.metric(mCriuDump, size, unitSeconds, refCopy).fail(err)
			}
		}
	}
	return nil
}

// criuRun starts a detached target, dumps it once to warm up and once
// timed, kills it, restores it from the timed images and kills the restored
// process.
func (b *bench) criuRun(criu, images string, mib, run int) error {
	size := sizeLabel(mib)
	tgt, err := startDetached(b.memBin, b.tmp, mib)
	if err != nil {
		return err
	}
	defer tgt.kill()

	copied, err := copyReference(tgt.pid, tgt.whole(), nil)
	if err != nil {
		return fmt.Errorf("reference for CRIU: %w", err)
	}
	warm := filepath.Join(images, "warm-up")
	if _, err := criuDump(criu, tgt.pid, warm); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	removeAll(warm)

	dir := filepath.Join(images, fmt.Sprintf("%d-%d", mib, run))
	defer removeAll(dir)
	wall, err := criuDump(criu, tgt.pid, dir)
	if err != nil {
		return err
	}
	frozen, err := criuFrozen(filepath.Join(dir, "stats-dump"))
	if err != nil {
		return err
	}
	imageSize, err := dirSize(dir)
	if err != nil {
		return err
	}

	tgt.kill()
	restoreWall, err := criuRestore(criu, tgt.pid, dir)
	if err != nil {
		b.metric(mCriuRestore, size, unitSeconds, refCopy).fail(err)
	} else {
		b.metric(mCriuRestore, size, unitSeconds, refCopy).add(restoreWall.Seconds(), copied.Seconds())
	}
	b.metric(mCriuDump, size, unitSeconds, refCopy).add(wall.Seconds(), copied.Seconds())
	b.metric(mCriuFrozen, size, unitSeconds, refCopy).add(frozen.Seconds(), copied.Seconds())
	b.metric(mCriuImage, size, unitBytes, refTouched).add(float64(imageSize), float64(tgt.len))
	progress("%s: CRIU dump %v, frozen %v, image %d MiB, restore %v", size, wall, frozen, imageSize>>20, restoreWall)
	return nil
}

// startDetached starts bench_mem in a new session with stdin on /dev/null
// and its output in a file, as CRIU wants a target whose files it can
// reopen on restore. It waits until the buffer is filled.
func startDetached(bin, dir string, mib int) (*memTarget, error) {
	outPath := filepath.Join(dir, fmt.Sprintf("criu-target-%d.out", mib))
	out, err := os.Create(outPath)
	if err != nil {
		return nil, fmt.Errorf("create target output %s: %w", outPath, err)
	}
	cmd := exec.Command(bin, strconv.Itoa(mib))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	err = cmd.Start()
	out.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}

	t := &memTarget{cmd: cmd, pid: cmd.Process.Pid}
	t.kill = cleanup.add(func() { killChild(cmd) })
	if err := t.waitReadyFile(outPath); err != nil {
		t.kill()
		return nil, err
	}
	return t, nil
}

// waitReadyFile polls the target's output file for its ready line.
func (t *memTarget) waitReadyFile(path string) error {
	deadline := time.Now().Add(replyTimeout)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read target output %s: %w", path, err)
		}
		line, _, complete := strings.Cut(string(data), "\n")
		if rest, ok := strings.CutPrefix(line, "ready "); ok && complete {
			if _, err := fmt.Sscanf(rest, "%x %d", &t.addr, &t.len); err != nil {
				return fmt.Errorf("parse ready line %q of pid %d: %w", line, t.pid, err)
			}
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("target pid %d not ready within %v", t.pid, replyTimeout)
}

// criuDump runs `criu dump --leave-running` of pid into dir and returns its
// wall time. CRIU's log goes next to dir, so it does not count in the
// image size.
func criuDump(criu string, pid int, dir string) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("create CRIU image directory: %w", err)
	}
	return runCRIU(criu, dir+".dump.log", "dump", "--leave-running", "-t", strconv.Itoa(pid), "-D", dir)
}

// criuRestore runs `criu restore -d` from dir, checks that the restored
// process runs under pid, and kills and reaps it. It returns the wall time
// of the restore command.
func criuRestore(criu string, pid int, dir string) (time.Duration, error) {
	wall, err := runCRIU(criu, dir+".restore.log", "restore", "-d", "-D", dir)
	if err != nil {
		return 0, err
	}

	// The bench is a child subreaper, so the restored process, whose
	// parent criu has exited, is now its child.
	kill := cleanup.add(func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		_, _ = unix.Wait4(pid, nil, 0, nil)
	})
	defer kill()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return 0, fmt.Errorf("restored pid %d: %w", pid, err)
	}
	if got := strings.TrimSpace(string(comm)); got != "bench_mem" {
		return 0, fmt.Errorf("restored pid %d runs %q, want bench_mem", pid, got)
	}
	return wall, nil
}

func runCRIU(criu, logPath string, args ...string) (time.Duration, error) {
	args = append(args, "-o", logPath, "-v2")
	cmd := exec.Command(criu, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w (log %s) %s", criu, strings.Join(args, " "), err, logPath, strings.TrimSpace(stderr.String()))
	}
	return wall, nil
}

func dirSize(dir string) (uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", dir, err)
	}
	var total uint64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return 0, fmt.Errorf("stat %s: %w", filepath.Join(dir, e.Name()), err)
		}
		total += uint64(info.Size())
	}
	return total, nil
}

// CRIU image magics: stats files start with the service magic, then the
// stats magic, then one length-prefixed protobuf stats_entry.
const (
	criuServiceMagic = 0x55105940
	criuStatsMagic   = 0x57093306
)

// criuFrozen reads frozen_time (microseconds) from a stats-dump image:
// field 2 of dump_stats_entry, which is field 1 of stats_entry.
func criuFrozen(path string) (time.Duration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read CRIU stats: %w", err)
	}
	if len(data) < 12 || le32(data) != criuServiceMagic || le32(data[4:]) != criuStatsMagic {
		return 0, fmt.Errorf("%s is not a CRIU stats image", path)
	}
	n := int(le32(data[8:]))
	if 12+n > len(data) {
		return 0, fmt.Errorf("%s: entry of %d bytes past the end of the file", path, n)
	}

	dump, err := protoField(data[12:12+n], 1)
	if err != nil {
		return 0, fmt.Errorf("%s: dump entry: %w", path, err)
	}
	usec, err := protoVarintField(dump, 2)
	if err != nil {
		return 0, fmt.Errorf("%s: frozen_time: %w", path, err)
	}
	return time.Duration(usec) * time.Microsecond, nil
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

var errNoField = errors.New("field not present")

// protoField returns the bytes of the length-delimited field num of a
// protobuf message.
func protoField(msg []byte, num uint64) ([]byte, error) {
	var found []byte
	err := walkProto(msg, func(field, wire uint64, varint uint64, body []byte) bool {
		if field == num && wire == 2 {
			found = body
			return false
		}
		return true
	})
	if err == nil && found == nil {
		err = errNoField
	}
	return found, err
}

// protoVarintField returns the varint field num of a protobuf message.
func protoVarintField(msg []byte, num uint64) (uint64, error) {
	var value uint64
	seen := false
	err := walkProto(msg, func(field, wire uint64, varint uint64, body []byte) bool {
		if field == num && wire == 0 {
			value, seen = varint, true
			return false
		}
		return true
	})
	if err == nil && !seen {
		err = errNoField
	}
	return value, err
}

// walkProto calls visit for each top-level field of msg until visit
// returns false. Wire types 0 (varint), 1 (64-bit), 2 (length-delimited)
// and 5 (32-bit) are understood, and groups are an error.
func walkProto(msg []byte, visit func(field, wire, varint uint64, body []byte) bool) error {
	for len(msg) > 0 {
		key, n := readVarint(msg)
		if n == 0 {
			return errors.New("truncated field key")
		}
		msg = msg[n:]

		var varint uint64
		var body []byte
		switch wire := key & 7; wire {
		case 0:
			varint, n = readVarint(msg)
			if n == 0 {
				return errors.New("truncated varint")
			}
		case 1, 5:
			n = 8
			if wire == 5 {
				n = 4
			}
		case 2:
			length, m := readVarint(msg)
			if m == 0 || uint64(len(msg)-m) < length {
				return errors.New("truncated length-delimited field")
			}
			body = msg[m : m+int(length)]
			n = m + int(length)
		default:
			return fmt.Errorf("unsupported wire type %d", wire)
		}
		if n > len(msg) {
			return errors.New("truncated field")
		}
		msg = msg[n:]

		if !visit(key>>3, key&7, varint, body) {
			return nil
		}
	}
	return nil
}

// readVarint decodes a protobuf varint. It returns n = 0 when b ends inside it.
func readVarint(b []byte) (v uint64, n int) {
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}
