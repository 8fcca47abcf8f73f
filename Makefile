# Maille: the two commands a newcomer runs are `make demo` and `make test`. Each installs
# what it needs first (`make setup`, quick when everything is there).
.PHONY: setup filters test test-fast lint demo bench-filters bench-filters-instructions bench-host bench-control bench-collector clean

CARGO ?= cargo

setup:
	@scripts/setup.sh

## Every filter, both kinds: target/filters/<name>.wasm (proxy-wasm, size-optimised) and
## target/filters/libmaille_<name>.so (Envoy dynamic module, native). Release builds.
filters: setup
	@scripts/build-filters.sh

## Everything CI runs: formatting, lints, unit tests, and end-to-end tests with real Envoy.
test: filters lint
	$(CARGO) test --workspace --locked
	$(CARGO) test -p maille-control --locked --features cloudwatch --test cloudwatch_analysis

## The fast tier: every unit test and the in-process integration tests (goldens of the Envoy
## resources, validation, import of every format, the ADS stream, the write path, the CLI
## against an in-process server, the wasm host's ABI). No Envoy, no moto, no wasm build:
## under a minute on a warm build. Add a test here when it starts no external process.
FAST_TESTS := import_and_validate golden ads_stream apply rollout_engine cli rollout_cli host_abi receivers delivery
test-fast:
	$(CARGO) test --workspace --locked --lib --bins $(addprefix --test ,$(FAST_TESTS))

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --locked --all-targets -q -- -D warnings
	$(CARGO) clippy -p maille-control --locked --features cloudwatch --all-targets -q -- -D warnings

## The ColorTeller mesh: moto (X-Ray, CloudWatch), the control server, five demo services each
## with Envoy and collector sidecars; prints what to try. Ctrl-C stops it all.
demo: export DEMO_T0 := $(shell date +%s%N)
demo: filters
	@scripts/demo.sh

## OTLP spans/s, CPU per million spans and memory: Maille's collector vs Rotel, same sink.
bench-collector: setup
	.venv/bin/pip install -q --disable-pip-version-check rotel==0.0.1a15
	$(CARGO) bench -p maille-collector --bench otlp_throughput

## The control server: what a one-route apply costs in 1,000- and 10,000-node meshes; CPU of
## 100 rollouts; time from a failing canary to traffic back on stable (analysis, breaker); ADS
## fan-out to 1,000 / 5,000 / 10,000 simulated Envoys on one server and 10,000 / 30,000 over
## three sharing etcd, apply-to-ACK p50/p99, memory per client, failover after a SIGKILL;
## requests/s and p99 with the mesh's mTLS STRICT vs DISABLED, CPU per 1,000 certificate rotations.
bench-control: filters
	$(CARGO) bench -p maille-control --bench apply
	$(CARGO) bench -p maille-control --bench rollouts
	$(CARGO) bench -p maille-control --bench ads_fanout
	$(CARGO) bench -p maillectl --bench rollback
	$(CARGO) bench -p maillectl --bench mtls

## Envoy requests/s and latency: native routing vs canary.wasm vs Lua (a few minutes).
bench-filters: filters
	@bench/filters.sh

## Instructions per request of the same Envoys, counted by valgrind (deterministic; ~10 min).
bench-filters-instructions: filters
	@MEASURE=instructions bench/filters.sh

## Time per request through canary.wasm in the wasmtime host vs the native decision.
bench-host: filters
	@bench/host.sh

clean:
	$(CARGO) clean
