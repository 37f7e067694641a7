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
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return &failure{
			err:  fmt.Errorf("create mountpoint %s: %w", mountpoint, err),
			hint: "create the directory yourself, or choose a mountpoint where this user may create one",
		}
	}
	store, err := a.openStore()
	if err != nil {
		return err
	}

	// Register for signals before mounting so that a signal sent right after
	// the mount appears still unmounts it.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	// fs.Mount's errors name the mountpoint.
	srv, err := fs.Mount(mountpoint, fs.Config{Store: store, Logger: a.log, Debug: a.logLevel == "debug"})
	if err != nil {
		return &failure{err: err, hint: mountHint(mountpoint, err, os.Geteuid())}
	}

	// fs logs "mounted", and "unmounted" when Unmount succeeds.
	if err := a.serve(srv, mountpoint, signals); err != nil {
		return &failure{err: fmt.Errorf("serve %s: %w", mountpoint, err)}
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

// mountHint returns the advice printed under an error of fs.Mount at
// mountpoint, for a program running with effective uid euid.
func mountHint(mountpoint string, err error, euid int) string {
	switch {
	case errors.Is(err, unix.ENOTCONN):
		return fmt.Sprintf("an earlier ckptfs mount at %s has died; run 'umount -l %s' and try again",
			mountpoint, mountpoint)
	case errors.Is(err, unix.EBUSY):
		return fmt.Sprintf("something is mounted at %s already; unmount it or choose another mountpoint", mountpoint)
	case euid != 0:
		// An ordinary user mounts through fusermount3, whose failures
		// (such as "fusermount exited with code 256") carry no errno.
		return "/dev/fuse or fusermount3 is not usable by this user; run as root, or install fuse3 " +
			"(which provides fusermount3) and check that /dev/fuse is readable and writable by this user"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "run as root with CAP_SYS_ADMIN, outside a container that forbids mounts"
	default:
		return "run it again with --log-level debug to see each step"
	}
}
