# banger: build, test, demo. See README.md.
GO      ?= go
BIN     ?= $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/banger-dev/banger/internal/api.Version=$(VERSION)

.PHONY: all build test test-serial test-unit fuzz vet deps demo bench clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/banger ./cmd/bangerd ./cmd/fc-double

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...

# Host packages the tests and the demo need (Debian/Ubuntu). Idempotent.
deps:
	./scripts/host-deps.sh

# Test packages run this many at a time (at least 2, so that races between
# concurrent daemons, loop and dm setup show even on a one-CPU machine).
# Privileged packages each run in their own network namespace.
TEST_P ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ "$$n" -lt 2 ] && n=2; echo $$n)
# Packages whose tests also run built with the bangertest tag (failpoints).
TAGGED_PKGS ?= ./internal/failpoint/
# How long make fuzz runs each target.
FUZZTIME ?= 30s

# Everything, as root: privileged tests (loop devices, taps in private
# network namespaces, real QEMU guests) run; unprivileged they skip. Then
# the failpoint build of TAGGED_PKGS and a few seconds of every fuzz target.
test: deps build vet
	$(GO) test -count=1 -p $(TEST_P) -timeout 40m ./...
	$(GO) test -count=1 -tags bangertest $(TAGGED_PKGS)
	GO=$(GO) ./scripts/fuzz-smoke.sh

# As test, one package at a time (the old behaviour), without fuzzing.
test-serial: deps build vet
	$(GO) test -count=1 -p 1 -timeout 40m ./...
	$(GO) test -count=1 -p 1 -tags bangertest $(TAGGED_PKGS)

# Every fuzz target for FUZZTIME each, with all CPUs.
fuzz:
	FUZZ_SMOKE_TIME=$(FUZZTIME) FUZZ_PARALLEL= GO=$(GO) ./scripts/fuzz-smoke.sh

# Unprivileged-friendly quick run.
test-unit:
	$(GO) test ./...

demo: deps build
	./scripts/demo.sh

bench: build
	./bench/run.sh

clean:
	rm -rf $(BIN)
