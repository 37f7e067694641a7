#!/usr/bin/env bash
# Runs the README's shell session end to end on a private mountpoint and
# store: captures a python3 process, reads its registers, maps and memory,
# changes it, rolls it back, and checks that the rollback happened.
# Exits non-zero when a step fails; the process and the mount are cleaned up
# either way. Needs root, python3 and Go.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: run as root (ckptfs mounts FUSE and ptraces the target)" >&2
	exit 1
fi
make -s build
ckptfs=$repo/bin/ckptfs

work=$(mktemp -d /tmp/ckptfs-demo.XXXXXX)
mnt=$work/ckpt
store=$work/store
mount_pid=""
target_pid=""

cleanup() {
	status=$?
	if [ -n "$target_pid" ]; then
		kill "$target_pid" 2>/dev/null || true
	fi
	if [ -n "$mount_pid" ]; then
		kill -TERM "$mount_pid" 2>/dev/null || true
		wait "$mount_pid" 2>/dev/null || true
	fi
	if mountpoint -q "$mnt" 2>/dev/null; then
		umount -l "$mnt" || true
	fi
	if [ "$status" -ne 0 ]; then
		echo "demo.sh: FAILED (exit $status); the target's log and the mount's log follow" >&2
		cat "$work/counter.log" "$work/mount.log" >&2 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT

# step prints a shell command line and runs it. The line may hold
# redirections; the paths in it contain no spaces.
step() {
	echo "# $1"
	eval "$1"
}

# wait_for runs a command until it succeeds, for at most 10 seconds.
wait_for() {
	for _ in $(seq 100); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	echo "demo.sh: timed out waiting for: $*" >&2
	return 1
}

# last_count prints the count of the newest line of the target's log.
last_count() {
	tail -n 1 "$work/counter.log" | sed -n 's/.* n=\([0-9]*\)$/\1/p'
}

# last_line_has succeeds when the newest line of the target's log shows word
# $1 and a count of at least $2.
last_line_has() {
	local line
	line=$(tail -n 1 "$work/counter.log")
	[[ $line == "word=$1 n="* ]] && [ "${line##* n=}" -ge "$2" ]
}

"$ckptfs" mount --store "$store" "$mnt" 2>"$work/mount.log" &
mount_pid=$!
wait_for mountpoint -q "$mnt"

python3 -u scripts/counter.py >>"$work/counter.log" &
target_pid=$!
wait_for grep -q 'n=3$' "$work/counter.log"
pid=$target_pid

step "echo before > $mnt/$pid/capture"
step "ls $mnt/$pid/before"
step "cat $mnt/$pid/before/info"
step "grep -E '^(rip|rsp) ' $mnt/$pid/before/regs"
step "grep -E '\[(heap|stack)\]' $mnt/$pid/before/maps"
echo "# grep -l -a word=apple $mnt/$pid/before/memory/*"
found=$(grep -l -a 'word=apple' "$mnt/$pid/before/memory/"* || true)
if [ -z "$found" ]; then
	echo "demo.sh: no memory file of snapshot before contains word=apple" >&2
	exit 1
fi
echo "$found"
before_count=$(last_count)

step "kill -USR1 $pid"
# Let it count on for two seconds so that the rollback shows in the count too.
wait_for last_line_has banana $((before_count + 4))
step "tail -n 2 $work/counter.log"
changed_count=$(last_count)

step "echo before > $mnt/$pid/restore"
wait_for last_line_has apple 0
step "tail -n 2 $work/counter.log"
step "cat $mnt/$pid/status"
restored_count=$(last_count)
step "$ckptfs list --store $store $pid"

if [ "$restored_count" -ge "$changed_count" ]; then
	echo "demo.sh: count did not drop after restore: $changed_count before, $restored_count after" >&2
	exit 1
fi
echo "demo.sh: rolled back: count $changed_count -> $restored_count (captured near $before_count), word banana -> apple"
