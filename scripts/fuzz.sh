#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a short time each.
# Usage: scripts/fuzz.sh [FUZZTIME]   (default 10s; any go test -fuzztime value)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${1:-10s}
failed=0
for pkg in $(go list ./...); do
	# go test -fuzz accepts one package and one target per run.
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target ($fuzztime)"
		if ! go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg"; then
			failed=1
		fi
	done
done
exit "$failed"
