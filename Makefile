# Build and test entry points. `make test` is what CI runs (.ci/run).
GO          ?= go
BIN         := $(CURDIR)/bin
STATICCHECK := $(BIN)/staticcheck
FUZZTIME    ?= 30s

.PHONY: all test deps netns-clean lint fmt-check vet staticcheck build run bench bench-client bench-compare fuzz clean

all: build

# deps, then every static check, then all tests with the race detector.
# -count=1: end-to-end tests depend on installed tools, never cache them.
# 40m: the whole suite (race-built gateway, real openconnect) within CI's 90.
test: deps netns-clean lint
	$(GO) test -race -count=1 -timeout 40m ./...

deps:
	@scripts/deps.sh

# Stale "up-*" namespaces from crashed runs (needs root; no-op otherwise).
netns-clean:
	@scripts/netns-clean.sh

lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	@[ -x $(STATICCHECK) ] || scripts/deps.sh
	$(STATICCHECK) ./...

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/underpass ./examples/standalone

run:
	$(GO) run ./examples/standalone serve

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Go client -> gateway -> sink, QUIC vs TLS (issue 5). Writes bench-client.txt.
bench-client:
	$(GO) test -run='^$$' -bench=BenchmarkClient -benchtime=3s -count=3 ./tunnel/ 2>/dev/null | tee bench-client.txt

# ocserv vs underpass with the real openconnect client, same run (root;
# about 16 minutes, BENCHFLAGS=--quick about 4). Writes bench-compare.md.
bench-compare: build
	../shared/bench/compare.sh $(BENCHFLAGS) -- scripts/bench-gateway.sh

fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

clean:
	rm -f $(BIN)/underpass
