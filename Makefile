# banger: build, test, demo. See README.md.
GO      ?= go
BIN     ?= $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/banger-dev/banger/internal/api.Version=$(VERSION)

.PHONY: all build test test-unit vet deps demo bench clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/banger ./cmd/bangerd ./cmd/fc-double

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...

# Host packages the tests and the demo need (Debian/Ubuntu). Idempotent.
deps:
	./scripts/host-deps.sh

# Everything, as root: privileged tests (loop devices, taps in private
# network namespaces, real QEMU guests) run; unprivileged they skip.
test: deps build vet
	$(GO) test -count=1 -p 1 -timeout 40m ./...

# Unprivileged-friendly quick run.
test-unit:
	$(GO) test ./...

demo: deps build
	./scripts/demo.sh

bench: build
	./bench/run.sh

clean:
	rm -rf $(BIN)
