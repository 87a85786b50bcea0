#!/usr/bin/env bash
# bench/compare.sh: several Meridian builds and nginx, interleaved in one run.
#
# Single runs of bench/proxy.sh move by ±15 % on a shared VM, too much to
# see a 10-20 % step between two commits. This script measures the builds
# one after the other, round after round, against the same nginx, so that
# the machine's drift hits all of them alike.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/compare.sh BIN_A BIN_B ...
#
# Each round, for each binary: start it (`node run` with the work dir's
# node.toml, pinned to SERVER_CPU), 1 s of warm-up, DURATION s measured
# with wrk (pinned to LOAD_CPU), stop it; then nginx the same way. Prints
# one line per run (req/s, user and system CPU µs per request from
# /proc/PID/stat, p99) and the median and lowest CPU per request of each.
# Everything listens on 127.0.0.1; every wrk run is bounded by `timeout`;
# the processes started here are stopped by PID.
#
# Environment: WORK_DIR (required), ROUNDS=5, DURATION=6, CONNS=64, PATH_=/2b,
# CLOSE=1 for a new connection per request, LOAD_CPU=0, SERVER_CPU=1,
# PORT_BASE=18380 (as bench/proxy.sh).

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
CONNS=${CONNS:-64}
PATH_=${PATH_:-/2b}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-18380}
NGINX_PORT=$((PORT_BASE + 1))
MERIDIAN_PORT=$((PORT_BASE + 2))
[ $# -ge 1 ] || { echo "usage: WORK_DIR=... $0 MERIDIAN_BIN..." >&2; exit 1; }
TCK=$(getconf CLK_TCK)
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
set_wrk_args
start_backend taskset -c "$SERVER_CPU"
start_proxy_nginx taskset -c "$SERVER_CPU"

# measure PID PORT LABEL: one warm-up and one measured wrk run.
measure() {
    local url="http://127.0.0.1:$2$PATH_" u0 s0 u1 s1 out n p99
    timeout 20 taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d1s "$url" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$1/stat")
    out=$(timeout $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d"${DURATION}s" --latency "$url")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$1/stat")
    n=$(awk '/requests in/{print $1}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    awk -v l="$3" -v n="$n" -v d="$DURATION" -v t="$TCK" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v p="$p99" \
        'BEGIN { printf "%s\t%d\t%.2f\t%.2f\t%.2f\t%s\n", l, n / d, u * 1e6 / t / n, s * 1e6 / t / n, (u + s) * 1e6 / t / n, p }'
}

RESULTS=$(mktemp)
printf 'binary\treq/s\tuser µs/req\tsys µs/req\tCPU µs/req\tp99\n'
for _ in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        start_meridian "$bin" taskset -c "$SERVER_CPU" || true
        measure "$MERIDIAN" "$MERIDIAN_PORT" "$bin" | tee -a "$RESULTS"
        kill "$MERIDIAN"
        wait "$MERIDIAN" 2>/dev/null || true
    done
    measure "$NGINX_WORKER" "$NGINX_PORT" nginx | tee -a "$RESULTS"
done
printf '\nbinary\tmedian CPU µs/req\tlowest\n'
for label in "$@" nginx; do
    awk -F'\t' -v l="$label" '$1 == l { print $5 }' "$RESULTS" | sort -n |
        awk -v l="$label" '{ v[NR] = $1 } END { printf "%s\t%.2f\t%.2f\n", l, v[int((NR + 1) / 2)], v[1] }'
done
rm -f "$RESULTS"
