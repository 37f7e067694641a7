# Build, test and try ckptfs. Tests, run and demo need root: they ptrace
# processes and mount FUSE file systems.

GO      ?= go
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin/ckptfs

# FUZZTIME is how long each fuzz target runs in "make fuzz" (a go test
# -fuzztime value: a duration such as 10s, or a count such as 1000x).
FUZZTIME ?= 10s

.PHONY: build deps test bench run demo fuzz clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/ckptfs

# deps installs the Debian packages and the S3 gateway the tests use.
deps:
	scripts/install-deps.sh

test: deps
	@test "$$(id -u)" = 0 || { echo "make test: run as root (the tests ptrace processes and mount FUSE)" >&2; exit 1; }
	$(GO) test -count=1 -timeout 15m ./...

# BENCHFLAGS are passed to scripts/bench, e.g. BENCHFLAGS="-sizes 64,256 -runs 3".
BENCHFLAGS ?=

bench: build
	$(GO) test -run='^$$' -bench=. ./...
	$(GO) run ./scripts/bench $(BENCHFLAGS)

run: build
	$(BIN) mount

demo: build
	scripts/demo.sh

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
