# Flotilla: the two commands that matter are `make run` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/flotilla-mail/flotilla/cluster.BuildVersion=$(VERSION)

.PHONY: build run test test-short vet bench chaos fuzz image cluster-up cluster-down clean

build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/flotilla ./cmd/flotilla

# A local three-node cluster of processes on 127.0.0.11-13, with a demo
# domain and printed logins. Ctrl-C stops it.
run: build
	scripts/run-cluster.sh

# Everything CI runs: vet, then every test with the race detector; then the
# table of the fault scenarios (one line each), whatever the outcome.
test: vet
	@mkdir -p bin && rm -f bin/scenarios.txt
	@FLOTILLA_SCENARIOS=$(CURDIR)/bin/scenarios.txt $(GO) test -race -count=1 -timeout 45m ./...; status=$$?; \
	if [ -s bin/scenarios.txt ]; then echo "== fault scenarios"; sort bin/scenarios.txt; fi; exit $$status

test-short: vet
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...
	$(GO) vet -tags flotilla_next ./...

bench: build
	scripts/bench.sh

# The long soak: random faults for CHAOS_DURATION (default 10m) under load.
# CHAOS_ARGS adds flags, e.g. CHAOS_ARGS="--tier docker --nodes 3".
CHAOS_DURATION ?= 10m
CHAOS_ARGS ?=
chaos:
	$(GO) run ./cmd/flotilla-chaos --duration $(CHAOS_DURATION) $(CHAOS_ARGS)

fuzz:
	scripts/fuzz.sh

image:
	scripts/image.sh

cluster-up:
	scripts/cluster-up.sh

cluster-down:
	scripts/cluster-down.sh

clean:
	rm -rf bin flotilla-run
