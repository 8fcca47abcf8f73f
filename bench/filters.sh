#!/usr/bin/env bash
# make bench-filters: Envoy requests/s and latency with the routing choice made three ways,
# measured in the same run on this machine:
#   native  Envoy's route table (header match + weighted clusters), no filter
#   empty   the same, plus an empty wasm filter (bench/empty.wat): the floor of any wasm
#           filter's cost
#   bare    bench/bare.wat: only the two host calls of canary's rule path (read a header,
#           replace one), no SDK, no Rust: the floor for a wasm filter routing by header
#           (in the sticky scenario it still routes to canary: compare it on the rule row)
#   canary  target/filters/canary.wasm on V8, config deploy/examples/canary.json
#   lua     Envoy's Lua filter making the same choice (bench/envoy-lua.yaml)
#   breaker native routing plus target/filters/breaker.wasm (closed circuit, default config)
#   canary_breaker  canary.wasm then breaker.wasm (the breaker reads x-maille-cluster)
# Each front Envoy has one worker, pinned to CPU 0; wrk (1 thread, 16 connections) and the
# upstream Envoy share CPU 1. Two scenarios: a header rule matches (x-canary: always), and
# the sticky split (x-user-id). ROUNDS rounds of SECONDS_PER_RUN s each, variants interleaved;
# the table gives medians and ratios to native.
# Environment: ROUNDS (default 3), SECONDS_PER_RUN (default 10), CONNECTIONS (default 16).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
trap cleanup EXIT

ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-10}
CONNS=${CONNECTIONS:-16}
command -v wrk >/dev/null || { echo "wrk missing: run make setup" >&2; exit 1; }
[ -f "$ROOT/target/filters/breaker.wasm" ] || { echo "run make filters" >&2; exit 1; }
wat2wasm "$ROOT/bench/empty.wat" -o "$RUN_DIR/empty.wasm"
wat2wasm "$ROOT/bench/bare.wat" -o "$RUN_DIR/bare.wasm"
PIN_FRONT=(taskset -c 0); PIN_LOAD=(taskset -c 1)
[ "$(nproc)" -ge 2 ] || { PIN_FRONT=(); PIN_LOAD=(); }

export STABLE_PORT=$(free_port) CANARY_PORT=$(free_port)
( export ADMIN_PORT=$(free_port); render "$ROOT/deploy/envoy/upstreams.yaml" "$RUN_DIR/up.yaml"; echo "$ADMIN_PORT" > "$RUN_DIR/up.admin" )
ENVOY_WRAP=("${PIN_LOAD[@]}"); start_envoy upstreams "$RUN_DIR/up.yaml" "$(cat "$RUN_DIR/up.admin")"

export CANARY_WASM
CANARY_CONFIG=$(one_line_json "$ROOT/deploy/examples/canary.json"); export CANARY_CONFIG
declare -A PORT
ENVOY_WRAP=("${PIN_FRONT[@]}")
# A wasm filter entry for the HTTP filter list: name, module path, JSON configuration.
wasm_filter() {
  printf '\n          - name: %s\n            typed_config:\n              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n                name: %s\n                root_id: %s\n                vm_config:\n                  vm_id: %s\n                  runtime: envoy.wasm.runtime.v8\n                  code: { local: { filename: "%s" } }\n                configuration:\n                  "@type": type.googleapis.com/google.protobuf.StringValue\n                  value: '"'"'%s'"'"'' "$1" "$1" "$1" "$1" "$2" "$3"
}
BREAKER_WASM=$ROOT/target/filters/breaker.wasm
export WASM_FILTER=""
for v in native empty bare canary lua breaker canary_breaker; do
  case $v in
    native) tpl=$ROOT/bench/envoy-native.yaml ;;
    empty) tpl=$ROOT/bench/envoy-native.yaml
      WASM_FILTER="
          - name: empty
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: \"$RUN_DIR/empty.wasm\" } }" ;;
    bare) tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$RUN_DIR/bare.wasm ;;
    canary) tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$ROOT/target/filters/canary.wasm ;;
    breaker) tpl=$ROOT/bench/envoy-native.yaml; WASM_FILTER=$(wasm_filter maille_breaker "$BREAKER_WASM" '{}') ;;
    canary_breaker) tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$ROOT/target/filters/canary.wasm ;;
    lua) tpl=$ROOT/bench/envoy-lua.yaml ;;
  esac
  export ADMIN_PORT=$(free_port) LISTENER_PORT=$(free_port)
  render "$tpl" "$RUN_DIR/$v.yaml"
  if [ "$v" = canary_breaker ]; then
    # The breaker goes after the canary filter, before the router.
    python3 - "$RUN_DIR/$v.yaml" "$(wasm_filter maille_breaker "$BREAKER_WASM" '{}')" <<'PY'
import sys
path, entry = sys.argv[1], sys.argv[2]
text = open(path).read()
marker = "\n          - name: envoy.filters.http.router"
assert marker in text
open(path, "w").write(text.replace(marker, entry + marker, 1))
PY
  fi
  start_envoy "$v" "$RUN_DIR/$v.yaml" "$ADMIN_PORT"
  PORT[$v]=$LISTENER_PORT
  WASM_FILTER=""
done

# Every variant must route the scenarios as intended before it is measured.
for v in native empty bare canary lua breaker canary_breaker; do
  got=$(curl -s -H 'x-canary: always' "http://127.0.0.1:${PORT[$v]}/")
  [ "$got" = canary ] || { echo "$v: x-canary: always went to '$got'" >&2; exit 1; }
done

echo "Envoy $("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /), wrk -t1 -c$CONNS -d${SECS}s, $ROUNDS rounds, front Envoy --concurrency 1 on CPU 0" >&2
results=$RUN_DIR/results.tsv
: > "$results"
for scenario in rule sticky; do
  case $scenario in
    rule) hdr='x-canary: always' ;;
    sticky) hdr='x-user-id: user-4242' ;;
  esac
  for r in $(seq 1 "$ROUNDS"); do
    for v in native empty bare canary lua breaker canary_breaker; do
      url="http://127.0.0.1:${PORT[$v]}/"
      "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d1s -H "$hdr" "$url" >/dev/null   # warm-up
      out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "$hdr" "$url")
      printf '%s\t%s\t%s\t%s\n' "$scenario" "$v" "$r" "$(echo "$out" | tr '\n' '|')" >> "$results"
      echo "  $scenario round $r $v: $(echo "$out" | grep Requests/sec)" >&2
    done
  done
done

python3 - "$results" <<'PY'
import re, statistics, sys
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s)
    v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
rows = {}
for line in open(sys.argv[1]):
    scen, var, rnd, out = line.rstrip('\n').split('\t')
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    p50 = ms(re.search(r'\|\s+50%\s+(\S+)', out).group(1))
    p99 = ms(re.search(r'\|\s+99%\s+(\S+)', out).group(1))
    non2xx = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
    if non2xx:
        sys.exit(f'{scen}/{var}: {non2xx.group(1)} non-2xx responses')
    rows.setdefault((scen, var), []).append((rps, p50, p99))
print()
print(f"{'scenario':<8} {'variant':<14} {'req/s':>9} {'x native':>9} {'p50 ms':>8} {'p99 ms':>8}   (medians; runs req/s)")
for scen in ('rule', 'sticky'):
    base = statistics.median(r[0] for r in rows[(scen, 'native')])
    for var in ('native', 'empty', 'bare', 'canary', 'lua', 'breaker', 'canary_breaker'):
        rs = rows[(scen, var)]
        rps = statistics.median(r[0] for r in rs)
        print(f"{scen:<8} {var:<14} {rps:>9.0f} {rps / base:>9.3f} {statistics.median(r[1] for r in rs):>8.3f} "
              f"{statistics.median(r[2] for r in rs):>8.3f}   ({', '.join(f'{r[0]:.0f}' for r in rs)})")
PY
