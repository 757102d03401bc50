# Hotload: `make demo` shows it, `make test` proves it.
# Build caches live outside the checkout so repeated runs are warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/hotload/target
export HOTLOAD_CACHE ?= $(HOME)/.cache/hotload
export GOTOOLCHAIN := local
# CI builds once per run: incremental artifacts would only cost disk.
ifdef CI
export CARGO_INCREMENTAL := 0
endif

E2E := cargo run --quiet -p hotload-e2e --
HELM = $(HOTLOAD_CACHE)/bin/current/helm

.PHONY: test deps fmt lint unit e2e demo cluster-up cluster-down crds images sdk-go

## test: everything CI runs: formatting, clippy, unit tests, the SDKs with the conformance
## suite, e2e on the local cluster
test: deps fmt lint unit sdk e2e

## deps: Debian packages and the pinned Go tools (etcd, Kubernetes, helm), and Debian's
## prometheus (the analysis provider tests run a real one), each only when missing
deps:
	e2e/tools/deps.sh

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
	$(HELM) lint --strict charts/hotload

## unit: every test that needs no cluster
unit: conformance-plugins
	cargo test --workspace --exclude hotload-e2e
	cargo test -p hotload-e2e --lib --bins
	python3 -m unittest discover -s examples/python

## e2e: bring the local cluster up, run the cluster tests, and always tear it down
e2e:
	cargo build --workspace --bins
	$(MAKE) --no-print-directory $(PY_VENV)/bin/gunicorn
	$(E2E) cluster up >/dev/null
	status=0; cargo test -p hotload-e2e --tests || status=$$?; \
	$(E2E) cluster down --verify || status=1; \
	exit $$status

## demo: build, bring the local cluster up, install the chart, roll v1, v2 and a broken v3
## out to 5 injected demo pods under traffic, and print what happened
demo: deps
	cargo build --workspace --bins
	$(E2E) demo

cluster-up: deps
	$(E2E) cluster up

cluster-down:
	$(E2E) cluster down --verify

## crds: regenerate crds/ and the chart's copy from the Rust API types (a test fails when stale)
crds:
	cargo run --quiet -p hotload-operator --bin hotload-operator -- crd > crds/pluginreleases.hotload.dev.yaml
	cp crds/pluginreleases.hotload.dev.yaml charts/hotload/crds/

## sdk: every app SDK against the shared conformance cases and the real sidecar
.PHONY: sdk conformance-plugins
sdk: sdk-go sdk-node sdk-python sdk-java

## conformance-plugins: the conformance suite's plugin binaries, from their sources
conformance-plugins:
	sdk/conformance/build.sh

## sdk-go: the Go SDK (sdk/go): gofmt, go vet, go test with the shared conformance cases
## and, against the real sidecar built here, load / 100 swaps / faults / restart / two workers
sdk-go: conformance-plugins
	cargo build -p hotload-sidecar --bin hotload-sidecar
	cd sdk/go && unformatted="$$(gofmt -l .)" && test -z "$$unformatted" || { echo "gofmt needed: $$unformatted"; exit 1; }
	cd sdk/go && go vet ./...
	cd sdk/go && HOTLOAD_SIDECAR_BIN=$(CARGO_TARGET_DIR)/debug/hotload-sidecar go test -count=1 ./...

## sdk-python: the Python SDK (sdk/python): a venv under $(HOTLOAD_CACHE)/venv with the package
## (editable) and its test deps, ruff, pytest with the shared conformance cases and, against
## the real sidecar built here, loads / refusals / restart / gunicorn with 3 workers
.PHONY: sdk-python
PY_VENV = $(HOTLOAD_CACHE)/venv
PY_INSTALL = $(PY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e 'sdk/python[test]'
sdk-python: conformance-plugins
	cargo build -p hotload-sidecar --bin hotload-sidecar
	test -x $(PY_VENV)/bin/python || python3 -m venv $(PY_VENV)
	$(PY_INSTALL)
	cd sdk/python && $(PY_VENV)/bin/ruff check . && $(PY_VENV)/bin/ruff format --check .
	cd sdk/python && HOTLOAD_SIDECAR_BIN=$(CARGO_TARGET_DIR)/debug/hotload-sidecar $(PY_VENV)/bin/python -m pytest -q

# The venv alone, made only when missing: e2e's gunicorn app (sdk/python/examples) runs from it.
$(PY_VENV)/bin/gunicorn:
	test -x $(PY_VENV)/bin/python || python3 -m venv $(PY_VENV)
	$(PY_INSTALL)

## sdk-node: the Node SDK (sdk/node): node --check on every file, then node --test with the shared
## conformance cases, transcripts, 100 swaps, a cluster app, JS modules and, against the real
## sidecar built here, a 3-worker cluster app and a sidecar restart; npm runs only if the
## package ever gains dev dependencies (it has none)
.PHONY: sdk-node
sdk-node: conformance-plugins
	cargo build -p hotload-sidecar --bin hotload-sidecar
	cd sdk/node && if grep -q '"devDependencies"' package.json; then \
		npm ci --no-audit --no-fund --cache $(HOTLOAD_CACHE)/npm; fi
	cd sdk/node && for f in index.js src/*.js test/*.js test/fixtures/*.js; do node --check $$f || exit 1; done
	cd sdk/node && HOTLOAD_SIDECAR_BIN=$(CARGO_TARGET_DIR)/debug/hotload-sidecar node --test test/*.test.js

## sdk-java: the Java SDK (sdk/java, Maven, Chicory; compiled with -Xlint:all -Werror): mvn test
## with the shared conformance cases, transcripts, 100 swaps and, against the real sidecar built
## here, load / 100 swaps / refusals / restart / two workers; Maven's repository under
## $(HOTLOAD_CACHE)/m2
.PHONY: sdk-java
sdk-java: conformance-plugins
	cargo build -p hotload-sidecar --bin hotload-sidecar
	cd sdk/java && HOTLOAD_SIDECAR_BIN=$(CARGO_TARGET_DIR)/debug/hotload-sidecar mvn -q -B -Dmaven.repo.local=$(HOTLOAD_CACHE)/m2 test

## images: the three container images, with Docker (not needed for demo or test)
IMAGE_TAG ?= 0.1.0
REGISTRY ?= ghcr.io/hotload-dev
images:
	docker build -f operator/Dockerfile -t $(REGISTRY)/operator:$(IMAGE_TAG) .
	docker build -f plugin-sidecar/Dockerfile -t $(REGISTRY)/sidecar:$(IMAGE_TAG) .
	docker build -f examples/demo-app/Dockerfile -t $(REGISTRY)/demo-app:$(IMAGE_TAG) .
