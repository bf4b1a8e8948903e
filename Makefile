# p2psip: build, run and test. `make help` lists the targets.
#
# Works from a fresh clone on Debian bookworm with Go at /usr/local/go, also
# from shells whose PATH lacks it. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH):/usr/local/sbin:/usr/sbin:/sbin

BIN         := bin/p2psip
VERSION     := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
FUZZTIME    ?= 10s
STATICCHECK := go run honnef.co/go/tools/cmd/staticcheck@v0.8.2
BENCH_OUT   := e2e/bench/results

.PHONY: build run test deps e2e bench fuzz lint clean help

## build: static binary at bin/p2psip
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '-X main.version=$(VERSION)' -o $(BIN) ./cmd/p2psip

## run: one super peer on embedded defaults (loopback, overlay p2psip.test, dev secret in ./p2psip-data)
run: build
	$(BIN) superpeer --data-dir ./p2psip-data --log-format console

## test: what CI runs: deps, go vet, unit and in-process tests with -race, then the netns e2e suite when it can run
test: deps
	go vet ./...
	@if compgen -G 'e2e/netns/*.go' >/dev/null; then \
	  echo 'go vet -tags e2e ./e2e/netns/...'; go vet -tags e2e ./e2e/netns/...; \
	fi
	@race=-race; \
	if [ "$$(go env CGO_ENABLED)" != 1 ]; then \
	  race=; echo 'warning: no C compiler (Debian packages gcc libc6-dev): running the tests without -race'; \
	fi; \
	echo "go test $$race -count=1 -timeout 25m ./..."; \
	go test $$race -count=1 -timeout 25m ./...
	bash e2e/run-netns.sh --if-possible

## deps: Go modules and the Debian packages the tests use (installed when root; named when missing otherwise)
deps:
	bash e2e/setup-deps.sh

## e2e: the network-namespace suite (root; fails naming what is missing)
e2e: deps
	bash e2e/run-netns.sh

## bench: issue 7's report (calls, REGISTER, lookup, attach, failover, hand-off, TURN, each beside its reference) plus `go test -bench` of every package, in e2e/bench/results/latest (~15 min on 2 cores)
bench: deps
	@frag=$$(mktemp -d); trap 'rm -rf "$$frag"' EXIT; status=0; load="$$(cut -d' ' -f1-3 /proc/loadavg)"; \
	echo "go test -p 1 -run '^TestBench' ./... (P2PSIP_BENCH=full, fragments in $$frag)"; \
	P2PSIP_BENCH=full P2PSIP_BENCH_OUT="$$frag" go test -p 1 -count=1 -run '^TestBench' -timeout 40m ./... || status=$$?; \
	{ echo "commit: $(VERSION)"; go test -p 1 -count=1 -run '^$$' -bench . -benchmem -timeout 20m ./... 2>&1 | grep -v '^ *testlog.go:'; } \
	  | tee "$$frag/gobench.txt" || status=$$?; \
	go run ./e2e/bench/report/assemble -in "$$frag" -out $(BENCH_OUT) -gobench "$$frag/gobench.txt" -commit "$(VERSION)" \
	  -note "Load average (1, 5, 15 min) when the run started: $$load; above about 1 other work shared the cores and the figures are noisy." || status=$$?; \
	exit $$status

## fuzz: every Fuzz target of every package for FUZZTIME (default 10s) each
fuzz:
	@n=0; \
	for pkg in $$(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
	  list=$$(go test -list '^Fuzz' "$$pkg"); \
	  for name in $$(grep '^Fuzz' <<<"$$list" || true); do \
	    echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
	    go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	    n=$$((n + 1)); \
	  done; \
	done; \
	echo "fuzz: ran $$n targets"

## lint: gofmt, go vet and staticcheck (fetched through the Go module proxy)
lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt: not formatted:"; echo "$$unformatted"; exit 1; fi
	go vet -tags e2e ./...
	$(STATICCHECK) -tags e2e ./...

## clean: remove bin/ and the dev data directory of `make run`
clean:
	rm -rf bin p2psip-data

## help: this list
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)
