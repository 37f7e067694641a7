// Command bench measures ckptfs against the physical limits of the machine
// and, optionally, against CRIU.
//
// It starts C targets (testdata/targets/bench_mem.c) that fill 64 MiB,
// 256 MiB and 1 GiB of memory that zstd compresses about 3x. For each it
// times the first snapshot, the next one after 1% of the pages changed, and
// rollbacks. It also times a cold `cat` of a memory file through a real
// mount, and the capture of an idle `sleep 1000`, and it records the
// bench's own peak resident size while capturing.
// Beside each metric it prints a reference measured in the same run: a
// process_vm_readv of the same pages, or a plain read of a file of the same
// size on the same disk. It prints one markdown table of medians.
//
// It must run as root: it ptraces its targets, mounts the file system and
// drops the page cache. It acts only on processes it starts, kills them by
// pid when it ends or is interrupted, unmounts what it mounts and removes
// its temporary store.
//
// Usage:
//
//	go run ./scripts/bench [-sizes 64,256,1024] [-runs 5] [-criu PATH] [-s3 gateway|s3://BUCKET/PREFIX] [-out FILE] [-v]
//
// With -s3 it also times capture and full rollback with an S3 store, each
// beside the same operation on a local store in the same run. "gateway"
// starts a versitygw on a free loopback port for the run; s3://BUCKET/PREFIX
// uses an existing bucket, reached through CKPTFS_S3_ENDPOINT (or
// AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/engine/worker"
)

type options struct {
	sizes   []int // MiB, ascending
	runs    int
	criu    string
	s3      string
	out     string
	verbose bool
	profile string
}

func main() {
	worker.Main()
	opts, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}

	exitOnSignal()
	err = run(opts)
	cleanup.run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags() (*options, error) {
	opts := &options{}
	sizes := flag.String("sizes", "64,256,1024", "comma-separated memory sizes of the targets, in MiB")
	flag.IntVar(&opts.runs, "runs", 5, "runs per size; the table prints medians")
	flag.StringVar(&opts.criu, "criu", "", "path of a criu binary to measure beside ckptfs (default: skip CRIU)")
	flag.StringVar(&opts.s3, "s3", "", "also time an S3 store: gateway (start versitygw on loopback) or s3://BUCKET/PREFIX "+
		"(endpoint and credentials from the environment, as for ckptfs)")
	flag.StringVar(&opts.out, "out", "", "also write the table to this file")
	flag.BoolVar(&opts.verbose, "v", false, "log the engine and store at debug level")
	flag.StringVar(&opts.profile, "cpuprofile", "", "write a Go CPU profile of the whole bench to this file")
	flag.Parse()

	if flag.NArg() != 0 {
		return nil, fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	if opts.runs < 1 {
		return nil, fmt.Errorf("invalid -runs %d: need at least 1", opts.runs)
	}
	for field := range strings.SplitSeq(*sizes, ",") {
		mib, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || mib < 1 {
			return nil, fmt.Errorf("invalid size %q in -sizes: want a positive number of MiB", field)
		}
		opts.sizes = append(opts.sizes, mib)
	}
	slices.Sort(opts.sizes)
	return opts, nil
}

func run(opts *options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the bench ptraces its targets, mounts FUSE and drops the page cache")
	}

	tmp, err := os.MkdirTemp("", "ckptfs-bench-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	cleanup.add(func() { removeAll(tmp) })

	memBin, err := buildTarget(tmp, "bench_mem")
	if err != nil {
		return err
	}
	if opts.profile != "" {
		stop, err := startProfile(opts.profile)
		if err != nil {
			return err
		}
		defer stop()
	}

	level := slog.LevelWarn
	if opts.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b := &bench{
		log:      log,
		restorer: worker.NewRunner(log),
		runs:     opts.runs,
		tmp:      tmp,
		memBin:   memBin,
		res:      &results{},
	}
	defer b.restorer.Close()

	var s3 *s3Bench
	if opts.s3 != "" {
		if s3, err = openS3(b, opts.s3); err != nil {
			return err
		}
	}

	progress("load average at start: %s", loadAverage())
	for _, mib := range opts.sizes {
		b.benchSize(mib)
		if s3 != nil {
			s3.benchSize(mib)
		}
	}
	b.benchIdle()
	if opts.criu != "" {
		if err := b.benchCRIU(opts.criu, opts.sizes); err != nil {
			return err
		}
	}

	progress("load average at end: %s", loadAverage())
	return b.report(opts.out)
}

// loadAverage returns the first three fields of /proc/loadavg, since other
// work on the machine shifts every figure.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	fields := strings.Fields(string(data))
	return strings.Join(fields[:min(3, len(fields))], " ")
}

// report prints the table to stdout and, when out is set, writes it there.
func (b *bench) report(out string) error {
	if err := b.res.writeTable(os.Stdout, b.runs); err != nil {
		return err
	}
	if out == "" {
		return nil
	}

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	if err := b.res.writeTable(f, b.runs); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", out, err)
	}
	return nil
}

func removeAll(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(os.Stderr, "bench: remove %s: %v\n", dir, err)
	}
}

// becomeSubreaper makes processes that criu restores and detaches become
// children of the bench, so it can reap them after killing them.
func becomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	return nil
}

// startProfile starts a CPU profile into path and returns the function
// that stops it.
func startProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create profile %s: %w", path, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: close profile %s: %v\n", path, err)
		}
	}, nil
}

// progress prints one line of progress to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}
