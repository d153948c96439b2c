# keelfs: build, demo, test, bench. `make demo` and `make test` work on a
# fresh Debian machine: they install what they need (fuse3 through apt, the
# pinned versitygw S3 server through `go install`).

SHELL        := /bin/bash
GO           ?= go
TOOLS        := $(CURDIR)/.tools/bin
VERSITYGW_VERSION := v1.8.0
VERSITYGW    := $(TOOLS)/versitygw
BIN          := $(CURDIR)/bin
# Tests run the daemon built with the race detector, so that a data race
# in the daemon fails the test that provoked it (the harness scans its log).
TEST_BIN     := $(BIN)/keelfs-race
TEST_TIMEOUT ?= 18m

export PATH := $(TOOLS):$(PATH)

.PHONY: all build test unit demo bench bench-tools stress install tools fuse s3fs vet clean

all: build

build:
	$(GO) build -o $(BIN)/keelfs ./cmd/keelfs
	$(GO) build -o $(BIN)/s3cli ./test/s3cli

# fuse3 provides fusermount3, which unprivileged mounts and the tests use.
fuse:
	@if ! command -v fusermount3 >/dev/null; then \
	  echo "installing fuse3 with apt"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y fuse3 >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y fuse3; }; \
	fi
	@test -e /dev/fuse || { echo "FATAL: /dev/fuse is missing: this machine (or container) cannot mount FUSE filesystems"; exit 1; }

# s3fs (Debian's package) is the other tool test/e2e's interoperability
# test mounts the same bucket with.
s3fs:
	@if ! command -v s3fs >/dev/null; then \
	  echo "installing s3fs with apt"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y s3fs >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y s3fs; }; \
	fi

$(VERSITYGW):
	@echo "installing versitygw $(VERSITYGW_VERSION) into $(TOOLS) (takes a few minutes the first time)"
	GOBIN=$(TOOLS) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

tools: fuse s3fs $(VERSITYGW)

vet:
	@fmt=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*')); \
	  if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt"; exit 1; fi
	$(GO) vet ./...

# The whole suite: unit tests, the FUSE end-to-end suites against versitygw.
test: tools build vet
	$(GO) build -race -o $(TEST_BIN) ./cmd/keelfs
	KEELFS_BIN=$(TEST_BIN) KEELFS_VERSITYGW=$(VERSITYGW) \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only (no FUSE, no server).
unit:
	$(GO) test -race -count=1 -short ./cache/... ./fs/... ./s3backend/... ./cmd/...

demo: tools build
	@KEELFS=$(BIN)/keelfs S3CLI=$(BIN)/s3cli VERSITYGW=$(VERSITYGW) ./test/demo.sh

# The peers and fio come from Debian's packages.
bench-tools:
	@missing=; for p in s3fs rclone fio; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y $$missing >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y $$missing; }; \
	fi

bench: tools bench-tools build
	@KEELFS=$(BIN)/keelfs S3CLI=$(BIN)/s3cli VERSITYGW=$(VERSITYGW) \
	  $(GO) run ./test/bench -out docs/benchmarks.md

# Long randomized and soak runs.
stress: tools build
	$(GO) build -race -o $(TEST_BIN) ./cmd/keelfs
	KEELFS_BIN=$(TEST_BIN) KEELFS_VERSITYGW=$(VERSITYGW) KEELFS_STRESS=1 \
	  $(GO) test -race -count=1 -timeout 80m -run 'Model|Stress|Fault' ./test/...

install: build
	install -m 0755 $(BIN)/keelfs /usr/local/bin/keelfs
	ln -sf /usr/local/bin/keelfs /sbin/mount.keelfs

clean:
	rm -rf $(BIN)
