# Shell helpers shared by demo.sh and bench/filters.sh: processes and Envoys from templates,
# readiness waits, cleanup. Source it; it defines functions only.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENVOY=${MAILLE_ENVOY:-$ROOT/.venv/bin/envoy}
RUN_DIR=${RUN_DIR:-$(mktemp -d -t maille.XXXXXX)}
PIDS=()
ENVOY_WRAP=()   # a command to run Envoy under, such as (taskset -c 0)

# render TEMPLATE OUT: fill the template's placeholders from exported variables of the same
# names; fails if one is unset.
render() {
  local template=$1 out=$2 vars v
  vars=$(grep -o '\${[A-Z_]*}' "$template" | sort -u)
  for v in $vars; do
    v=${v#\$\{}; v=${v%\}}
    [ -n "${!v+x}" ] || { echo "render: $template needs \$$v" >&2; return 1; }
  done
  envsubst "$(echo $vars)" < "$template" > "$out"
}

# track NAME PID: a started process, stopped by cleanup and listed ("PID NAME") in $RUN_DIR/pids.
track() {
  PIDS+=("$2")
  echo "$2 $1" >>"$RUN_DIR/pids"
}

# Every process is started in a session of its own (setsid), so that a Ctrl-C in the
# terminal reaches this script only, which then stops them in order (cleanup): none dies
# half-way before the script knows it is stopping. setsid execs in place (a background job
# of a script is no group leader), so $! is the process itself.
# start_bg NAME CMD...: runs CMD in the background, logging to $RUN_DIR/NAME.log.
start_bg() {
  local name=$1; shift
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 &
  track "$name" "$!"
}

# wait_for WHAT URL [CURL ARGS...]: waits until URL answers with a success (30 s at most).
wait_for() {
  local what=$1 url=$2 i
  shift 2
  for i in $(seq 1 300); do
    curl -sf -o /dev/null "$@" "$url" && return 0
    sleep 0.1
  done
  echo "$what did not come up ($url); logs in $RUN_DIR" >&2
  return 1
}

# start_envoy NAME CONFIG ADMIN_PORT [extra envoy args]: starts Envoy with one worker, waits
# until /ready answers LIVE (60 s at most), logs to $RUN_DIR/NAME.log.
start_envoy() {
  local name=$1 config=$2 admin=$3; shift 3
  setsid "${ENVOY_WRAP[@]}" "$ENVOY" -c "$config" --concurrency 1 --use-dynamic-base-id -l info \
    --log-path "$RUN_DIR/$name.log" "$@" >/dev/null 2>&1 &
  local pid=$!
  track "$name" "$pid"
  eval "PID_${name//[^A-Za-z0-9_]/_}=$pid"
  local i
  for i in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "envoy '$name' exited while starting; its log ($RUN_DIR/$name.log):" >&2
      grep -E 'error|critical' "$RUN_DIR/$name.log" | tail -5 >&2
      return 1
    fi
    [ "$(curl -s "http://127.0.0.1:$admin/ready" 2>/dev/null)" = "LIVE" ] && return 0
    sleep 0.1
  done
  echo "envoy '$name' not ready after 60 s; log: $RUN_DIR/$name.log" >&2
  return 1
}

# stop_envoy NAME: stops one Envoy started by start_envoy.
stop_envoy() {
  local var="PID_${1//[^A-Za-z0-9_]/_}"
  local pid=${!var:-}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# free_port: a port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# cleanup: SIGTERM to everything started, newest first; whatever is still there after 10 s
# gets SIGKILL.
STOPPING=
cleanup() {
  STOPPING=1
  local pid i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for i in $(seq 1 100); do
    local alive=
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# one_line_json FILE: the JSON on one line, ready for a single-quoted YAML scalar.
one_line_json() {
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))).replace("'"'"'", "'"''"'"))' "$1"
}
