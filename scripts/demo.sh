#!/usr/bin/env bash
# make demo: Envoy with Maille's canary filter in front of two upstream services, stable and
# canary. Prints what to try with curl, then serves until Ctrl-C, which stops everything.
#   --check   start, send the example requests, show the answers, stop (no terminal needed)
# Ports (override with the environment): LISTENER_PORT=10000 ADMIN_PORT=9901
#   STABLE_PORT=18081 CANARY_PORT=18082 UPSTREAM_ADMIN_PORT=9902
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
trap 'echo; echo "stopping"; exit 0' INT TERM

export LISTENER_PORT=${LISTENER_PORT:-10000} ADMIN_PORT=${ADMIN_PORT:-9901}
export STABLE_PORT=${STABLE_PORT:-18081} CANARY_PORT=${CANARY_PORT:-18082}
UPSTREAM_ADMIN_PORT=${UPSTREAM_ADMIN_PORT:-9902}
CONFIG_FILE=${CANARY_CONFIG_FILE:-$ROOT/deploy/examples/canary.json}
export CANARY_WASM=$ROOT/target/filters/canary.wasm
[ -f "$CANARY_WASM" ] || { echo "missing $CANARY_WASM: run 'make filters'" >&2; exit 1; }

( export ADMIN_PORT=$UPSTREAM_ADMIN_PORT; render "$ROOT/deploy/envoy/upstreams.yaml" "$RUN_DIR/upstreams.yaml" )
start_envoy upstreams "$RUN_DIR/upstreams.yaml" "$UPSTREAM_ADMIN_PORT"

CANARY_CONFIG=$(one_line_json "$CONFIG_FILE") || { echo "$CONFIG_FILE is not valid JSON" >&2; exit 1; }
export CANARY_CONFIG
render "$ROOT/deploy/envoy/canary.yaml" "$RUN_DIR/canary.yaml"
start_envoy front "$RUN_DIR/canary.yaml" "$ADMIN_PORT"

URL=http://127.0.0.1:$LISTENER_PORT/
cat <<TXT

Maille canary demo: Envoy on $URL, canary filter configured from
  $CONFIG_FILE
  (stable 90 / canary 10, sticky on x-user-id; x-canary: always or cookie beta=on -> canary)

Try:
  curl -s $URL                                   # 90% stable, 10% canary, at random
  curl -s $URL -H 'x-canary: always'             # a header rule: always canary
  curl -s $URL -H 'cookie: beta=on'              # a cookie rule: always canary
  curl -s $URL -H 'x-user-id: alice'             # sticky: alice always gets the same one
  for i in \$(seq 200); do curl -s $URL; done | sort | uniq -c    # the split
  curl -s http://127.0.0.1:$ADMIN_PORT/stats | grep maille_canary   # decisions per target
Logs: $RUN_DIR/*.log
TXT

if [ "${1:-}" = "--check" ]; then
  echo
  echo "--check: the example requests"
  for h in "x-canary: always" "cookie: beta=on" "x-user-id: alice" "x-user-id: alice" "x-none: 1"; do
    printf '  %-20s -> %s\n' "$h" "$(curl -s "$URL" -H "$h")"
  done
  printf '  200 plain requests  -> %s\n' "$(for i in $(seq 200); do curl -s "$URL"; done | sort | uniq -c | tr -s ' \n' ' ')"
  curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | grep maille_canary | sed 's/^/  /'
  exit 0
fi
echo "Serving; Ctrl-C stops everything."
while kill -0 "$PID_front" 2>/dev/null && kill -0 "$PID_upstreams" 2>/dev/null; do sleep 1; done
echo "an Envoy exited; logs in $RUN_DIR" >&2
exit 1
