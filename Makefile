# The one entry point: CI calls these same targets.
CARGO ?= cargo

.PHONY: build release test test-unit test-monitoring test-e2e test-compat test-image test-node helm generate manifests image image-dockerfile lint fmt bench bench-peers run fuzz

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

## Every test: unit, property, in-process integration, the alert rules, end to end against a real control plane
## (the kustomize overlays and the Helm chart included), then the image.
test: test-unit test-monitoring test-e2e test-image

test-unit:
	$(CARGO) test --locked

## The alert rules: promtool (built once per version into ~/.cache/secure-defaults/tools/) checks them and runs
## their unit tests. (`cargo test --test monitoring`, part of test-unit, checks the names they and the dashboard use.)
test-monitoring:
	@promtool=$$(e2e/build-promtool.sh | tail -1) && \
	  "$$promtool" check rules manifests/monitoring/alerts.yaml && \
	  "$$promtool" test rules manifests/monitoring/alerts_test.yaml

test-e2e: helm
	e2e/run.sh

## The end-to-end suite against older Kubernetes releases, where MutatingAdmissionPolicy is not GA: each
## release's control plane is built from the Go module proxy (e2e/tools/kubernetes-<release>/go.mod) and cached
## by version like the default one. The long #[ignore]d tests (outage, memory, scale) are left out.
COMPAT_RELEASES ?= 1.33 1.35
test-compat: helm
	@set -e; for release in $(COMPAT_RELEASES); do 	  echo "== e2e against Kubernetes $$release =="; 	  K8S_TOOLS=kubernetes-$$release E2E_IGNORED=0 e2e/run.sh; 	done

## The image: on a distroless-equivalent base made from Debian 12 packages and the release binary built here,
## with podman (no registry needed; Containerfile.local). IMAGE overrides the name.
IMAGE ?= localhost/secure-defaults:$(shell awk -F'"' '/^version *=/ { print $$2; exit }' Cargo.toml)
image:
	e2e/build-image.sh $(IMAGE)

## The same image from the Dockerfile (pulls the Rust builder and distroless base; BUILD_ARGS to override).
image-dockerfile:
	podman --runtime runc build $(BUILD_ARGS) -t $(IMAGE) .

## The image runs as the Deployment runs it (65532, read-only root, no capabilities), answers a review over
## TLS and exits 0 on SIGTERM.
test-image: image
	e2e/image-smoke.sh $(IMAGE)

## The node suite: the control plane plus one real node (containerd, runc, a kubelet built like the control
## plane), on which the test image and the chart actually run. Needs root; see the README's "Node suite".
test-node: helm image
	e2e/node-test.sh

## helm at the version pinned in e2e/tools/helm/go.mod, built from the Go module proxy once per machine and
## cached under ~/.cache/secure-defaults/tools/.
helm:
	e2e/build-helm.sh >/dev/null

## The files written from the field table (README tables, the shipped policies' defaults), then install.yaml
## from the chart. `cargo test` (tests/generated.rs) fails while any of them is stale.
generate:
	$(CARGO) run --locked --quiet -- generate
	$(MAKE) manifests

## manifests/install.yaml, rendered from the Helm chart (the e2e suite fails while it is stale).
manifests:
	e2e/render-install.sh >manifests/install.yaml.tmp
	mv manifests/install.yaml.tmp manifests/install.yaml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --test e2e -- -D warnings
	cd bench/loadgen && $(CARGO) fmt -- --check && $(CARGO) clippy --locked --target-dir ../../target/loadgen -- -D warnings
	cd fuzz && $(CARGO) fmt -- --check && $(CARGO) clippy --locked --target-dir $(HOME)/.cache/secure-defaults/fuzz-lint -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd bench/loadgen && $(CARGO) fmt
	cd fuzz && $(CARGO) fmt

## Local demo: control plane + webhook + a sample pod before and after; Ctrl-C cleans up.
run:
	e2e/demo.sh

## Benchmarks: the engine (criterion), the server under TLS load on one core, and end to end through a local
## control plane; prints one table and writes target/bench/results.json. Reports, never fails on a missed target.
bench:
	bench/run.sh

## secure-defaults side by side with MutatingAdmissionPolicy, Kyverno and Gatekeeper on one local control plane,
## one at a time, the same pod-creation load (bench/peers/run.sh). The peers build from the Go module proxy on
## first use (Kyverno about 20 minutes) and are cached by version. Not part of `make bench` or CI.
bench-peers:
	bench/peers/run.sh

## Coverage-guided fuzzing (cargo-fuzz, installed on first use): the admission path, the policy parser and the
## `mutate` input reader, FUZZ_SECONDS each (default 60), or FUZZ_RUNS executions from FUZZ_SEED (default 1),
## which does the same work on every fresh checkout. Not part of `make test`.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_SEED ?= 1
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_SEED=$(FUZZ_SEED) fuzz/run.sh
