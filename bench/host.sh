#!/usr/bin/env bash
# make bench-host: time per request through canary.wasm in the wasmtime host (whole stream:
# context create, request headers, delete) and the same decision made natively, same run.
# Prints the criterion medians and the ratio. Target: at most 2 us per request in the host.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p maille-wasm-host --bench canary_host -- --noplot "$@" 2>&1 | grep -E '^(host|native)/|time:' || true
python3 - <<'PY'
import json, os
def median_ns(name):
    with open(os.path.join("target/criterion", name, "new/estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]
print()
print(f"{'scenario':<8} {'host (wasm) us':>15} {'native us':>10} {'host/native':>12}   target: host <= 2 us")
for s in ("rule", "sticky"):
    h, n = median_ns(f"host_{s}"), median_ns(f"native_{s}")
    print(f"{s:<8} {h / 1000:>15.3f} {n / 1000:>10.4f} {h / n:>12.1f}")
PY
