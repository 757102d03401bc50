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

.PHONY: test deps fmt lint unit e2e demo cluster-up cluster-down crds images

## test: everything CI runs: formatting, clippy, unit tests, e2e on the local cluster
test: deps fmt lint unit e2e

## deps: Debian packages and the pinned Go tools (etcd, Kubernetes, helm)
deps:
	e2e/tools/deps.sh

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	$(HELM) lint --strict charts/hotload

## unit: every test that needs no cluster
unit:
	cargo test --workspace --exclude hotload-e2e
	cargo test -p hotload-e2e --lib --bins
	python3 -m unittest discover -s examples/python

## e2e: bring the local cluster up, run the cluster tests, and always tear it down
e2e:
	cargo build --workspace --bins
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

## images: the three container images, with Docker (not needed for demo or test)
IMAGE_TAG ?= 0.1.0
REGISTRY ?= ghcr.io/hotload-dev
images:
	docker build -f operator/Dockerfile -t $(REGISTRY)/operator:$(IMAGE_TAG) .
	docker build -f plugin-sidecar/Dockerfile -t $(REGISTRY)/sidecar:$(IMAGE_TAG) .
	docker build -f examples/demo-app/Dockerfile -t $(REGISTRY)/demo-app:$(IMAGE_TAG) .
