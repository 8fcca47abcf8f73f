#!/usr/bin/env bash
# make demo: the classic App Mesh ColorTeller mesh on this machine, on Maille.
#
# Starts a local AWS endpoint (moto: X-Ray and CloudWatch), Maille's control server with the
# mesh of deploy/examples/colorteller/local/colorapp.json, and per service (colorgateway,
# colorteller-white/-black/-blue/-red): the demo application, its Envoy sidecar (bootstrapped
# by `maillectl bootstrap`) and its collector sidecar. Prints what to try, then serves until
# Ctrl-C (or SIGTERM), which stops everything it started.
#
# Environment:
#   MAILLE_BIN_DIR  where maille-control, maillectl, maille-collector and colorapp are
#                   (default: builds them into target/debug)
#   RUN_DIR         folder for logs, state and env.sh (default: a new temporary folder)
#   DEMO_T0         start time (date +%s%N) the first-request time is measured from
#                   (`make demo` sets it before it installs and builds anything)
# Ports: 10000-10099 on 127.0.0.1 (the table is printed below and in $RUN_DIR/ports).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DEMO_T0=${DEMO_T0:-$(date +%s%N)}
trap cleanup EXIT
trap 'STOPPING=1; echo; echo "stopping everything the demo started"; exit 0' INT TERM

BIN=${MAILLE_BIN_DIR:-}
if [ -z "$BIN" ]; then
  echo "building maille-control, maillectl, maille-collector and colorapp (debug)"
  (cd "$ROOT" && cargo build --locked -q -p maille-control -p maillectl -p maille-collector -p maille-demo --bins)
  BIN=$ROOT/target/debug
fi
for b in maille-control maillectl maille-collector colorapp; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build with: cargo build --bins)" >&2; exit 1; }
done
# The filters run as native Envoy dynamic modules (a Filter's default runtime); the wasm
# builds are served beside them for Filters that ask for `runtime: wasm`.
for f in libmaille_canary.so libmaille_breaker.so canary.wasm breaker.wasm; do
  [ -f "$ROOT/target/filters/$f" ] || { echo "missing target/filters/$f: run 'make filters'" >&2; exit 1; }
done
[ -x "$ROOT/.venv/bin/moto_server" ] || { echo "missing .venv/bin/moto_server: run 'make setup'" >&2; exit 1; }

MESH=colorapp
SPEC=$ROOT/deploy/examples/colorteller/local/colorapp.json
SERVICES=(colorgateway colorteller-white colorteller-black colorteller-blue colorteller-red)
# Per service i (0 = the gateway): Envoy ingress 10000+i, application 10010+i, Envoy egress
# 10020+i, Envoy admin 10030+i, collector OTLP gRPC 10040+i and HTTP 10050+i. The spec's
# listener ports and endpoints match the first two columns.
MOTO_PORT=10070 XDS_PORT=10060 CONTROL_PORT=10061
ALL_PORTS=($MOTO_PORT $XDS_PORT $CONTROL_PORT)
for i in "${!SERVICES[@]}"; do
  for base in 10000 10010 10020 10030 10040 10050; do ALL_PORTS+=($((base + i))); done
done
busy=$(python3 - "${ALL_PORTS[@]}" <<'PY'
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        print(p)
    finally:
        s.close()
PY
)
if [ -n "$busy" ]; then
  echo "the demo needs ports 10000-10099 on 127.0.0.1; in use: $(echo $busy)" >&2
  echo "(another demo running? see: ss -ltnp | grep ':100')" >&2
  exit 1
fi

export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
export MAILLE_SERVER=https://127.0.0.1:$CONTROL_PORT
# maillectl finds the admin token and the CA certificate (maille-ca.pem) the server writes
# next to its state.
export MAILLE_STATE=$RUN_DIR/maille-state.redb
CTL=$BIN/maillectl

step() { printf '  %-58s' "$1"; }
took() { echo "ok ($(( ($(date +%s%N) - $1) / 1000000 )) ms)"; }

echo "Maille ColorTeller demo; logs, state and env.sh in $RUN_DIR"
: >"$RUN_DIR/pids"
t=$(date +%s%N); step "local AWS endpoint (moto) :$MOTO_PORT"
start_bg moto "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
wait_for moto "http://127.0.0.1:$MOTO_PORT/moto-api/"; took "$t"

t=$(date +%s%N); step "control server :$XDS_PORT (ADS) :$CONTROL_PORT"
start_bg control "$BIN/maille-control" --xds-addr "127.0.0.1:$XDS_PORT" \
  --http-addr "127.0.0.1:$CONTROL_PORT" --state "$MAILLE_STATE" \
  --modules "$ROOT/target/filters"
wait_for "the control server" "$MAILLE_SERVER/healthz" --cacert "$RUN_DIR/maille-ca.pem"; took "$t"

t=$(date +%s%N); step "mesh from ${SPEC#$ROOT/}"
"$CTL" apply -f "$SPEC" >"$RUN_DIR/apply.log" 2>&1 \
  || { echo; cat "$RUN_DIR/apply.log" >&2; exit 1; }
took "$t"

for i in "${!SERVICES[@]}"; do
  svc=${SERVICES[$i]}
  t=$(date +%s%N); step "$svc: app, collector, Envoy :$((10000 + i))"
  if [ "$i" = 0 ]; then
    start_bg "app-$svc" "$BIN/colorapp" gateway --listen "127.0.0.1:$((10010 + i))" \
      --egress "http://127.0.0.1:$((10020 + i))" --service colorteller.demo.local
  else
    start_bg "app-$svc" "$BIN/colorapp" teller --color "${svc#colorteller-}" \
      --listen "127.0.0.1:$((10010 + i))"
  fi
  start_bg "collector-$svc" "$BIN/maille-collector" --grpc-addr "127.0.0.1:$((10040 + i))" \
    --http-addr "127.0.0.1:$((10050 + i))" --storage-resolution 1
  "$CTL" bootstrap --node "$MESH/$svc" --admin-port $((10030 + i)) \
    --ingress-port $((10000 + i)) --egress-port $((10020 + i)) --listen-address 127.0.0.1 \
    --otlp-port $((10040 + i)) >"$RUN_DIR/envoy-$svc.yaml"
  wait_for "the $svc collector" "http://127.0.0.1:$((10050 + i))/healthz"
  start_envoy "envoy-$svc" "$RUN_DIR/envoy-$svc.yaml" $((10030 + i))
  took "$t"
done

URL=http://127.0.0.1:10000/color
t=$(date +%s%N); step "first request routed through the mesh"
first=""
for _ in $(seq 1 300); do
  first=$(curl -s -m 5 "$URL" || true)
  case "$first" in white*|black*|blue*|red*) break ;; esac
  sleep 0.1
done
case "$first" in
  white*|black*|blue*|red*) ;;
  *) echo; echo "no colour through the mesh after 30 s (last answer: ${first:-none}); logs in $RUN_DIR" >&2; exit 1 ;;
esac
took "$t"
since=$(( ($(date +%s%N) - DEMO_T0) / 1000000 ))
printf 'first routed request (%s) %d.%03d s after the demo was started\n' \
  "$(echo "$first" | head -1)" $((since / 1000)) $((since % 1000))

cat >"$RUN_DIR/env.sh" <<ENV
# source this file to drive the demo from another shell
export PATH="$BIN:$ROOT/.venv/bin:\$PATH"   # maillectl, and the AWS CLI
export MAILLE_SERVER=$MAILLE_SERVER
export MAILLE_STATE=$MAILLE_STATE   # maillectl reads the admin token next to it
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_REGION=$AWS_REGION AWS_DEFAULT_REGION=$AWS_REGION
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
ENV
{
  echo "moto $MOTO_PORT"; echo "ads $XDS_PORT"; echo "control $CONTROL_PORT"
  for i in "${!SERVICES[@]}"; do
    echo "${SERVICES[$i]} ingress=$((10000 + i)) app=$((10010 + i)) egress=$((10020 + i)) admin=$((10030 + i)) otlp=$((10040 + i))"
  done
} >"$RUN_DIR/ports"

LOCAL=deploy/examples/colorteller/local
cat <<TXT

The ColorTeller mesh is up: colorgateway -> colorteller.demo.local (router colorteller-vr:
white 8 / black 1 / red 1, split by Envoy itself, and x-color-canary: blue -> blue), every
hop through Envoy with Maille's breaker on the gateway, traces, metrics and access logs
through each service's collector, and every Envoy's stats to the control server for rollouts.

In another shell, first:   source $RUN_DIR/env.sh

1. The canary header, and the split:
     curl -s $URL -H 'x-color-canary: blue'
     for i in \$(seq 100); do curl -s $URL; done | sort | uniq -c
2. Make red fail and watch the breaker open (5 failures in a row, then 503s answered by Envoy
   without calling red, header x-maille-circuit):
     curl -s -X POST 'http://127.0.0.1:10014/fault?rate=1'
     for i in \$(seq 100); do curl -s $URL; done | sort | uniq -c
     maillectl signals
3. Move the weights away from red (white 5 / black 5 / red 0), Envoy has it within ms:
     maillectl apply -f $LOCAL/route-without-red.json --wait
     for i in \$(seq 100); do curl -s $URL; done | sort | uniq -c
4. Traces in X-Ray (local), by canary variant, one as a waterfall with its access log lines
   (every Envoy's access log is in CloudWatch Logs, found by the trace id), the service graph:
     maillectl traces --annotation maille_variant=colorteller-blue
     maillectl traces --trace-id <ID from the list>
     maillectl traces --graph
   The AWS CLI reads the same data:  aws xray get-trace-summaries --start-time \$(( \$(date +%s) - 600 )) --end-time \$(date +%s)
     aws logs filter-log-events --log-group-name /maille/colorgateway --filter-pattern '"<ID>"'
5. Metrics in CloudWatch (local), per colour (dimension envoy.cluster_name):
     aws cloudwatch list-metrics --namespace Maille --metric-name envoy.cluster.upstream_rq_total
6. What Envoy got and acknowledged:  maillectl status ; maillectl get
   Envoy admin: http://127.0.0.1:10030 (gateway) .. 10034 (red); ports in $RUN_DIR/ports
7. Rollouts need traffic to judge a canary; in a third shell keep some going:
     while :; do curl -s -o /dev/null $URL -H "x-user-id: user-\$((RANDOM % 500))"; sleep 0.02; done
   A rollout that fails: red (failing every request) as the canary of colorteller-route; the
   gateway's breaker opens on red's cluster and the rollout rolls back at once, by itself:
     curl -s -X POST 'http://127.0.0.1:10014/fault?rate=1'
     maillectl apply -f $LOCAL/rollout-red.json
     maillectl rollout status red --watch
8. Blue takes over colorteller-route from white, 20/40/60/80% every 10 s, each step checked
   (success rate against white's, p99 under 500 ms), sticky on x-user-id, and requests with
   x-color-beta: yes on blue throughout:
     maillectl apply -f $LOCAL/rollout-blue.json
     maillectl rollout status blue --watch      # or: --wait, which exits 0 on success
     maillectl rollout pause blue ; maillectl rollout resume blue ; maillectl rollout abort blue
   The web console (routes and weights, rollouts with their checks over time, breakers, and
   promote / pause / abort buttons):  $MAILLE_SERVER/#token=$(cat "$RUN_DIR/maille-admin.token")
   (HTTPS with a certificate from the demo's own CA: your browser warns until you trust
   $RUN_DIR/maille-ca.pem; curl --cacert it.)
9. Every hop between Envoys is mutual TLS, with certificates from Maille's own CA naming each
   node's SPIFFE ID, rotated over SDS; white takes calls only from the gateway (which declares
   it as a backend). Plaintext to white's Envoy is refused; the gateway's Envoy takes it from
   you (its node is PERMISSIVE: the entry of the mesh):
     curl -sS http://127.0.0.1:10001/            # refused: white's Envoy takes only mTLS
     curl -s http://127.0.0.1:10031/certs | grep -o 'spiffe://[^"]*' | sort -u

Serving; Ctrl-C stops everything.
TXT

while :; do
  while read -r pid name; do
    if [ -z "$STOPPING" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log: $RUN_DIR/$name.log" >&2
      exit 1
    fi
  done <"$RUN_DIR/pids"
  sleep 1
done
