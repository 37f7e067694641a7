package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/fs"
)

// defaultMountpoint is the mountpoint of "ckptfs mount" without MOUNTPOINT.
const defaultMountpoint = "/ckpt"

func (a *app) mountCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mount [MOUNTPOINT]",
		Short: "Serve the process and snapshot tree over FUSE",
		Long: "Mount serves the ckptfs tree at MOUNTPOINT (default " + defaultMountpoint + ", created if\n" +
			"missing) and runs in the foreground until SIGINT or SIGTERM, or until someone\n" +
			"runs 'umount MOUNTPOINT'; either way it unmounts cleanly and exits 0. As root it\n" +
			"mounts directly; as another user it mounts through fusermount3.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mountpoint := defaultMountpoint
			if len(args) == 1 {
				mountpoint = args[0]
			}
			return a.mount(mountpoint)
		},
	}
	a.addStoreFlag(cmd)
	return cmd
}

// mount serves the tree at mountpoint until it is unmounted.
func (a *app) mount(mountpoint string) error {
	fail := func(err error) error {
		return &failure{
			err:  fmt.Errorf("mount at %s failed: %w", mountpoint, err),
			hint: mountHint(mountpoint, err),
		}
	}

	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fail(fmt.Errorf("create mountpoint: %w", err))
	}
	store, err := a.openStore()
	if err != nil {
		return fail(err)
	}

	// Register for signals before mounting so that a signal sent right after
	// the mount appears still unmounts it.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	srv, err := fs.Mount(mountpoint, fs.Config{Store: store, Logger: a.log, Debug: a.logLevel == "debug"})
	if err != nil {
		return fail(err)
	}

	// fs logs "mounted", and "unmounted" when Unmount succeeds.
	if err := a.serve(srv, mountpoint, signals); err != nil {
		return fail(err)
	}
	return nil
}

// serve waits until the mount goes away: by an outside umount, or by the
// first signal, which unmounts it. A second signal gives up waiting for
// requests still in flight.
func (a *app) serve(srv *fs.Server, mountpoint string, signals chan os.Signal) error {
	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()

	select {
	case <-done:
		a.log.Info("unmounted", "mountpoint", mountpoint, "by", "umount")
		return nil
	case sig := <-signals:
		a.log.Info("unmounting", "mountpoint", mountpoint, "signal", sig.String())
	}

	if err := srv.Unmount(); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	select {
	case <-done:
		return nil
	case sig := <-signals:
		return errors.New("received " + sig.String() + " again while waiting for FUSE requests in flight to end")
	}
}

// mountHint returns the advice printed under the error message of a failed
// mount at mountpoint.
func mountHint(mountpoint string, err error) string {
	switch {
	case errors.Is(err, unix.ENOTCONN):
		return fmt.Sprintf("an earlier ckptfs mount at %s has died; run 'umount -l %s' and try again",
			mountpoint, mountpoint)
	case errors.Is(err, unix.EBUSY):
		return fmt.Sprintf("something is mounted at %s already; unmount it or choose another mountpoint", mountpoint)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "run as root, or install fuse3 so that fusermount3 can mount for an ordinary user"
	default:
		return "run it again with --log-level debug to see each step"
	}
}
