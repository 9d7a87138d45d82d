# bootfs — see README.md. Every target runs for real; a target whose parts
# do not exist yet says so and fails rather than pretending to succeed.

GO        ?= go
BIN       ?= bin
FUZZTIME  ?= 10s
BENCHTIME ?= 1s
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Static, reproducible binaries: no cgo, no build paths, no build IDs.
STATIC  = CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false \
          -ldflags '-s -w -buildid= -X github.com/bootfs/bootfs/internal/version.Version=$(VERSION)'
COMMANDS = $(notdir $(wildcard cmd/*))

.PHONY: all setup build samples test unit e2e fuzz bench bench-quick lint demo clean

all: build

# setup installs the Debian packages that are missing (as root, with
# apt-get), loads fuse and starts dockerd when no engine answers; it says
# what it does, and does nothing when all is there (scripts/setup.sh).
setup:
	@scripts/setup.sh

build:
	@mkdir -p $(BIN)
	@for c in $(COMMANDS); do \
		if ls cmd/$$c/*.go >/dev/null 2>&1; then \
			echo "build $(BIN)/$$c"; $(STATIC) -o $(BIN)/$$c ./cmd/$$c || exit 1; \
		fi; \
	done

# samples builds the Docker images of Dockerfile and samples/ offline:
# each is FROM scratch, and the binaries come from build, with $(BIN) as
# the build context (the cache image needs none but its own directory).
DOCKER ?= docker
samples: build
	$(DOCKER) build -q -t bootfs/mkimage -f Dockerfile $(BIN)
	$(DOCKER) build -q -t bootfs/cache samples/cache
	$(DOCKER) build -q -t bootfs/http-store -f samples/http-store/Dockerfile $(BIN)
	$(DOCKER) build -q -t bootfs/ssh-store -f samples/ssh-store/Dockerfile $(BIN)
	$(DOCKER) build -q -t bootfs/agent -f samples/agent/Dockerfile $(BIN)

# test runs everything CI runs: lint, the unit tests with the race detector,
# the end-to-end suite (which unit leaves to e2e: it runs the built
# binaries against Docker, and once is enough), and bench-quick, which
# keeps the benchmark harness working.
test: setup lint build unit
	@if ls e2e/*_test.go >/dev/null 2>&1; then $(MAKE) e2e; fi
	$(MAKE) bench-quick

unit:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /e2e)

e2e: build
	@if ! ls e2e/*_test.go >/dev/null 2>&1; then \
		echo "make e2e: there is no end-to-end suite yet (it comes with the boot image, issue 6)"; exit 1; fi
	BOOTFS_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 30m ./e2e/...

# fuzz runs every fuzz target of every package for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200x $$pkg; \
		done; \
	done

# bench runs the benchmark harness end to end (bench/run.sh, see
# bench/README.md): images, conversions, every workload in every mode and
# network, and the report in bench/results/<date>.md with PNG charts. It
# debootstraps its images once (cached). GOBENCH=1 also runs the Go
# benchmarks of every package.
bench: setup build
	bench/run.sh
	@if [ "$(GOBENCH)" = 1 ]; then \
		BENCH_ROOTFS=$${BENCH_ROOTFS:-$$(bench/rootfs.sh gcc python3,gcc,libc6-dev)} \
		$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...; fi

# bench-quick checks that the harness works: the busybox image only, one
# sample, in under two minutes (CI).
bench-quick: setup build
	BENCH_QUICK=1 BENCH_OUT=$${BENCH_OUT:-bench/results/tmp} bench/run.sh

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff

# demo runs the main job end to end (see demo.sh): it needs root, Docker
# and /dev/fuse, and debootstraps a Debian image with python3 once.
demo: setup build
	./demo.sh

clean:
	rm -rf $(BIN)
