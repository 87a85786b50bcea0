#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per proxied request, counted
# by valgrind (callgrind), for Meridian builds and for nginx.
#
# CPU time on a shared VM drifts by ±15-25 % between runs; an instruction
# count does not (two runs of one build agree within 0.5 %). It leaves out
# the kernel (the same system calls per request for both proxies, see
# docs/benchmarks.md) and cache effects, so it complements bench/proxy.sh
# rather than replacing it: it shows what a change to the request path
# saves, exactly, and how far user space is from nginx's.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/instructions.sh BIN_A BIN_B ...
#
# For each binary, then nginx (master_process off: one process): start it
# under callgrind, warm up for 3 s with wrk, zero the counters, drive it
# for DURATION s (CONNS connections, PATH_), dump the counters, divide the
# instruction total by wrk's request count. Each profile is kept in
# WORK_DIR (callgrind_annotate shows where the instructions go). Everything
# listens on 127.0.0.1; every wrk run is bounded by `timeout`; the
# processes started here are stopped by PID. Needs valgrind (Debian package).
#
# Environment: WORK_DIR (required), DURATION=10, CONNS=64, PATH_=/2b,
# PORT_BASE=18380 (as bench/proxy.sh), CLOSE=1 for a new connection per
# request (wrk sends `Connection: close`, as bench/proxy.sh's close16-2b),
# VALGRIND_ARGS (more callgrind options; bench/atomics.sh passes
# `--dump-instr=yes`).

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PATH_=${PATH_:-/2b}
PORT_BASE=${PORT_BASE:-18380}
NGINX_PORT=$((PORT_BASE + 1))
MERIDIAN_PORT=$((PORT_BASE + 2))
[ $# -ge 1 ] || { echo "usage: WORK_DIR=... $0 MERIDIAN_BIN..." >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
set_wrk_args
start_backend

# count LABEL PORT COMMAND...: one proxy under callgrind, one line of results.
count() {
    local label=$1 url="http://127.0.0.1:$2$PATH_" profile out pid n ir
    shift 2
    profile="$WORK_DIR/callgrind.$(basename "$label")"
    rm -f "$profile".*
    # shellcheck disable=SC2086 # VALGRIND_ARGS is a list of options
    valgrind --tool=callgrind --callgrind-out-file="$profile.%p" ${VALGRIND_ARGS:-} "$@" \
        </dev/null >"$WORK_DIR/callgrind-proxy.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_answers "$url" 60 || true
    timeout 30 wrk "${WRK_ARGS[@]}" -d3s "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    out=$(timeout $((DURATION + 30)) wrk "${WRK_ARGS[@]}" -d"${DURATION}s" "$url")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    n=$(awk '/requests in/{print $1}' <<<"$out")
    ir=$(awk '/^summary:/{print $2}' "$profile.$pid.1")
    awk -v l="$label" -v n="$n" -v ir="$ir" \
        'BEGIN { printf "%s\t%d\t%d\t%.0f\n", l, n, ir, ir / n }'
}

printf 'proxy\trequests\tinstructions\tinstructions/request\n'
for bin in "$@"; do
    rm -f "$WORK_DIR/access.log"
    count "$bin" "$MERIDIAN_PORT" "$bin" node run --config "$WORK_DIR/node.toml"
done
count nginx "$NGINX_PORT" nginx -p "$WORK_DIR" -e "$WORK_DIR/proxy-error.log" \
    -c "$WORK_DIR/nginx-proxy.conf" -g 'daemon off; master_process off;'
