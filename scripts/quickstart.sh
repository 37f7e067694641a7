#!/usr/bin/env bash
# Builds ckptfs, installs it as /usr/local/bin/ckptfs and mounts /ckpt with
# the default store /var/lib/ckptfs. Then it snapshots a python3 process that
# it starts itself and shows the snapshot's files. At the end it kills the
# process, removes its snapshot and unmounts /ckpt, unless /ckpt was mounted
# before it started.
# Run as root on Debian with Go 1.26 or later at /usr/local/go or on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

if [ "$(id -u)" != 0 ]; then
	echo "quickstart.sh: run as root (ckptfs mounts FUSE and ptraces processes)" >&2
	exit 1
fi
if ! command -v go >/dev/null; then
	echo "quickstart.sh: Go not found; install Go 1.26 or later to /usr/local/go" >&2
	exit 1
fi

scripts/install-deps.sh --no-s3

echo "== build and install /usr/local/bin/ckptfs"
make -s build
install -m 0755 bin/ckptfs /usr/local/bin/ckptfs
ckptfs version

mount_pid=""
target_pid=""
snapshot=""
log=$(mktemp /tmp/ckptfs-quickstart.XXXXXX.log)

cleanup() {
	status=$?
	if [ -n "$target_pid" ]; then
		kill "$target_pid" 2>/dev/null || true
		wait "$target_pid" 2>/dev/null || true
	fi
	if [ -n "$snapshot" ]; then
		ckptfs rm "$target_pid" "$snapshot" || true
	fi
	if [ -n "$mount_pid" ]; then
		echo "== unmount /ckpt"
		kill -TERM "$mount_pid" 2>/dev/null || true
		wait "$mount_pid" 2>/dev/null || true
	fi
	if [ "$status" -ne 0 ]; then
		echo "quickstart.sh: FAILED (exit $status); mount log in $log" >&2
	else
		rm -f "$log"
	fi
	exit "$status"
}
trap cleanup EXIT

# wait_for runs a command until it succeeds, for at most 10 seconds.
wait_for() {
	for _ in $(seq 100); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	echo "quickstart.sh: timed out waiting for: $*" >&2
	return 1
}

if mountpoint -q /ckpt 2>/dev/null; then
	echo "== /ckpt is mounted already; using it"
else
	echo "== ckptfs mount (mountpoint /ckpt, store ${CKPTFS_STORE:-/var/lib/ckptfs})"
	ckptfs mount 2>"$log" &
	mount_pid=$!
	wait_for mountpoint -q /ckpt
fi

echo "== start a python3 process"
python3 -c 'import time
n = 0
while True:
    n += 1
    time.sleep(0.2)' &
target_pid=$!
# python3 may be a wrapper script (pyenv) that execs the interpreter later.
wait_for grep -q '^python' "/proc/$target_pid/comm"
echo "pid $target_pid"

echo "== echo 1 > /ckpt/$target_pid/capture"
echo 1 >"/ckpt/$target_pid/capture"
snapshot=$(cat "/ckpt/$target_pid/capture")
echo "snapshot $snapshot"

echo "== ls -l /ckpt/$target_pid/$snapshot"
ls -l "/ckpt/$target_pid/$snapshot"
echo "== cat /ckpt/$target_pid/$snapshot/info"
cat "/ckpt/$target_pid/$snapshot/info"
echo "== ls /ckpt/$target_pid/$snapshot/memory (first 5)"
ls "/ckpt/$target_pid/$snapshot/memory" | sed -n 1,5p
echo "== ckptfs list $target_pid"
ckptfs list "$target_pid"
echo "quickstart.sh: ckptfs works; next, try the session in README.md"
