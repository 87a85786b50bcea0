#!/usr/bin/env bash
# bench/neighbour.sh: how much a quiet neighbour on the server CPU changes
# a proxy's CPU per request at one connection.
#
# At one connection the server CPU idles between requests, and on this VM
# another process that wakes now and then (even 12 times a second) makes
# the proxy measured beside it cheaper by a tenth or more. bench/proxy.sh
# therefore stops (SIGSTOP) the proxy it is not measuring; this script
# shows why. For nginx and then Meridian, each round measures the proxy
# (CONNS connections, DURATION s, after 1 s of warm-up) alone, beside a
# 12 Hz ticker (`sleep 0.08` in a loop), and beside the other proxy,
# alive and idle. CPU per request is the proxy's run time from
# /proc/PID/task/*/schedstat (nanosecond-exact) over wrk's request count.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/neighbour.sh [MERIDIAN_BIN]
#
# Everything listens on 127.0.0.1; every wrk run is bounded by `timeout`;
# the processes started here are stopped by PID.
#
# Environment: WORK_DIR (required), ROUNDS=3, DURATION=5, CONNS=1,
# LOAD_CPU=0, SERVER_CPU=1, PORT_BASE=18380 (as bench/proxy.sh).

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-1}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-18380}
NGINX_PORT=$((PORT_BASE + 1))
MERIDIAN_PORT=$((PORT_BASE + 2))
MERIDIAN_BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release/meridian}
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
start_backend taskset -c "$SERVER_CPU"

stop() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
run_ns() { # PID: nanoseconds on CPU, all threads
    awk '{ t += $1 } END { printf "%.0f", t }' /proc/"$1"/task/*/schedstat
}

# measure LABEL PID PORT: one line, µs of CPU per request.
measure() {
    local url="http://127.0.0.1:$3/2b" t0 t1 n
    timeout 20 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
    t0=$(run_ns "$2")
    n=$(timeout $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" |
        awk '/requests in/ { print $1 }')
    t1=$(run_ns "$2")
    awk -v l="$1" -v t=$((t1 - t0)) -v n="$n" -v d="$DURATION" \
        'BEGIN { printf "%-34s %7.2f µs/req  %6d req/s\n", l, t / 1000 / n, n / d }'
}

# beside_ticker LABEL PID PORT
beside_ticker() {
    taskset -c "$SERVER_CPU" bash -c 'while :; do sleep 0.08; done' &
    local ticker=$!
    measure "$1 beside a 12 Hz ticker" "$2" "$3"
    stop "$ticker"
}

for round in $(seq "$ROUNDS"); do
    echo "round $round"
    start_proxy_nginx taskset -c "$SERVER_CPU"
    measure "nginx alone" "$NGINX_WORKER" "$NGINX_PORT"
    beside_ticker nginx "$NGINX_WORKER" "$NGINX_PORT"
    start_meridian "$MERIDIAN_BIN" taskset -c "$SERVER_CPU" || { echo "Meridian does not answer" >&2; exit 1; }
    measure "nginx beside an idle Meridian" "$NGINX_WORKER" "$NGINX_PORT"
    measure "Meridian beside an idle nginx" "$MERIDIAN" "$MERIDIAN_PORT"
    stop "$NGINX"
    measure "Meridian alone" "$MERIDIAN" "$MERIDIAN_PORT"
    beside_ticker Meridian "$MERIDIAN" "$MERIDIAN_PORT"
    stop "$MERIDIAN"
done
