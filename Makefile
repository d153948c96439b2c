# keelfs: build, demo, test, bench, image, release. `make demo` and `make
# test` work on a fresh Debian machine: they install what they need (fuse3
# and docker.io through apt, the pinned versitygw S3 server through `go
# install`) and start dockerd when none runs.

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

# The version stamped into the binary: the nearest tag (v1.2.3, or
# v1.2.3-4-gabc1234 after it), the commit when there are no tags, with
# -dirty for uncommitted changes; "devel" outside a git checkout.
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS      := -X main.buildVersion=$(VERSION)
# Static builds: no cgo, so the binary runs on any Linux (Alpine,
# distroless, FROM scratch). Go's own DNS resolver and user lookup serve.
STATIC       := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"

# make install PREFIX=/usr DESTDIR=/tmp/pkg
PREFIX       ?= /usr/local
DESTDIR      ?=
MOUNT_HELPER_DIR ?= /sbin

# make image: a FROM scratch image built from the static binary, the CA
# certificates of this machine and deploy/Dockerfile; no registry needed.
IMAGE        ?= keelfs:latest
CA_CERTS     ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_CTX    := $(BIN)/image
DIST         := $(CURDIR)/dist

export PATH := $(TOOLS):$(PATH)

.PHONY: all build test unit demo bench bench-tools stress install tools fuse s3fs docker image release version vet clean

all: build

build:
	$(STATIC) -o $(BIN)/keelfs ./cmd/keelfs
	$(GO) build -o $(BIN)/s3cli ./test/s3cli

version:
	@echo $(VERSION)

# fuse3 provides fusermount3, which unprivileged mounts and the tests use.
fuse:
	@if ! command -v fusermount3 >/dev/null; then \
	  echo "installing fuse3 with apt"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y fuse3 >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y fuse3; }; \
	fi
	@test -e /dev/fuse || { echo "FATAL: /dev/fuse is missing: this machine (or container) cannot mount FUSE filesystems"; exit 1; }

# docker.io provides dockerd; the container tests need a running one. Where
# dockerd cannot start (no cgroups, a locked-down container), the tests
# run their containers in unshare namespaces instead and say so.
docker:
	@SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then \
	  echo "installing docker.io with apt"; \
	  $$SUDO apt-get install -y docker.io >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y docker.io; }; \
	fi; \
	if ! docker info >/dev/null 2>&1; then \
	  if [ -d /run/systemd/system ]; then \
	    echo "starting docker with systemctl"; $$SUDO systemctl start docker; \
	  elif ! pgrep -x dockerd >/dev/null; then \
	    echo "starting dockerd (log: /var/log/keelfs-dockerd.log)"; \
	    $$SUDO sh -c 'setsid dockerd >/var/log/keelfs-dockerd.log 2>&1 </dev/null &'; \
	  fi; \
	  for i in $$(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; \
	fi; \
	docker info >/dev/null 2>&1 || echo "WARNING: docker does not work on this machine (see /var/log/keelfs-dockerd.log); the container tests will run in unshare namespaces instead"

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

# The whole suite: unit tests, the FUSE end-to-end suites against
# versitygw, the deploy files, and the container tests (which build the
# image with `make image`).
test: tools docker build vet
	$(GO) build -race -ldflags "$(LDFLAGS)" -o $(TEST_BIN) ./cmd/keelfs
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
	install -D -m 0755 $(BIN)/keelfs $(DESTDIR)$(PREFIX)/bin/keelfs
	install -d $(DESTDIR)$(MOUNT_HELPER_DIR)
	ln -sf $(PREFIX)/bin/keelfs $(DESTDIR)$(MOUNT_HELPER_DIR)/mount.keelfs
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local/bin/keelfs|$(PREFIX)/bin/keelfs|g' deploy/systemd/keelfs@.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/keelfs@.service

# The image's build context is staged, not the repository: the binary, the
# CA certificates, and the directories a FROM scratch image lacks.
image: docker build
	rm -rf $(IMAGE_CTX)
	install -D -m 0755 $(BIN)/keelfs $(IMAGE_CTX)/rootfs/usr/local/bin/keelfs
	install -D -m 0644 $(CA_CERTS) $(IMAGE_CTX)/rootfs/etc/ssl/certs/ca-certificates.crt
	install -d $(IMAGE_CTX)/rootfs/data $(IMAGE_CTX)/rootfs/var/cache/keelfs $(IMAGE_CTX)/rootfs/run
	install -d -m 1777 $(IMAGE_CTX)/rootfs/tmp
	cp deploy/Dockerfile $(IMAGE_CTX)/Dockerfile
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) $(IMAGE_CTX)

# Static binaries for the two architectures ECS, EKS and EC2 run on.
release:
	rm -rf $(DIST) && mkdir -p $(DIST)
	GOOS=linux GOARCH=amd64 $(STATIC) -o $(DIST)/keelfs-$(VERSION)-linux-amd64 ./cmd/keelfs
	GOOS=linux GOARCH=arm64 $(STATIC) -o $(DIST)/keelfs-$(VERSION)-linux-arm64 ./cmd/keelfs
	cd $(DIST) && sha256sum keelfs-* > SHA256SUMS

clean:
	rm -rf $(BIN) $(DIST)
