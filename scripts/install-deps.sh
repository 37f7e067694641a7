#!/usr/bin/env bash
# Installs what building and testing ckptfs needs on Debian and is missing:
# gcc and make to build the C test targets, python3 for the interpreter
# tests and the demo, fuse3 for fusermount3, and Versity's S3 gateway for
# the S3 store tests (built from the Go module proxy into $(go env GOPATH)/bin,
# about five minutes on two cores, once per machine; --no-s3 skips it).
# Safe to run again. Run as root.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH

versitygw_version=v1.8.0

missing=()
command -v make >/dev/null || missing+=(make)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v mountpoint >/dev/null || missing+=(util-linux)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
	echo "== apt-get install ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe fuse 2>/dev/null || true

if [ "${1:-}" = --no-s3 ]; then
	exit 0
fi
gobin=$(go env GOPATH)/bin
if ! command -v versitygw >/dev/null && [ ! -x "$gobin/versitygw" ]; then
	echo "== go install versitygw@$versitygw_version (S3 server for the store tests)"
	GOBIN=$gobin go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version"
fi
