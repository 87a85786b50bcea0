#!/usr/bin/env bash
# bench/segments.sh: TCP segments per proxied request, for Meridian builds
# and for nginx, counted by the kernel (`nstat`, TcpOutSegs).
#
# Every host is on loopback, so TcpOutSegs counts each segment of the
# client's, the proxy's and the backend's connections once. On loopback a
# segment costs its sender both the send and the receiver's pass through
# the TCP stack, so the count is most of what a small request's system
# time is made of, and it does not drift as CPU time does.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/segments.sh BIN_A BIN_B ...
#
# For each binary, then nginx: start it (pinned to SERVER_CPU, as in
# bench/proxy.sh), warm up for 1 s with wrk (pinned to LOAD_CPU), then
# count segments and pure ACKs over DURATION s and divide by wrk's request
# count. The counters are the whole machine's: run nothing else meanwhile.
# Everything listens on 127.0.0.1; every wrk run is bounded by `timeout`;
# the processes started here are stopped by PID. Needs nstat (iproute2).
#
# Environment: WORK_DIR (required), DURATION=4, CONNS=16, PATH_=/2b,
# PORT_BASE=18380, LOAD_CPU=0, SERVER_CPU=1 (as bench/proxy.sh), CLOSE=1
# (the default here) for a new connection per request, CLOSE=0 to keep
# connections alive.

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
DURATION=${DURATION:-4}
CONNS=${CONNS:-16}
PATH_=${PATH_:-/2b}
PORT_BASE=${PORT_BASE:-18380}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
CLOSE=${CLOSE:-1}
NGINX_PORT=$((PORT_BASE + 1))
MERIDIAN_PORT=$((PORT_BASE + 2))
[ $# -ge 1 ] || { echo "usage: WORK_DIR=... $0 MERIDIAN_BIN..." >&2; exit 1; }
command -v nstat >/dev/null || { echo "nstat is needed (apt-get install iproute2)" >&2; exit 1; }
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
set_wrk_args
start_backend taskset -c "$SERVER_CPU"

# count LABEL PID PORT: one line of results for the proxy at PORT.
count() {
    local label=$1 pid=$2 url="http://127.0.0.1:$3$PATH_" out n
    timeout 30 taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d1s "$url" >/dev/null
    nstat -n >/dev/null
    out=$(timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d"${DURATION}s" "$url")
    n=$(awk '/requests in/{print $1}' <<<"$out")
    nstat -z TcpOutSegs TcpExtTCPPureAcks TcpOutRsts | awk -v l="$label" -v n="$n" '
        $1 == "TcpOutSegs" { segs = $2 }
        $1 == "TcpExtTCPPureAcks" { acks = $2 }
        $1 == "TcpOutRsts" { rsts = $2 }
        END { printf "%s\t%d\t%.2f\t%.2f\t%.3f\n", l, n, segs / n, acks / n, rsts / n }'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

printf 'proxy\trequests\tsegments/request\tpure ACKs/request\tresets/request\n'
for bin in "$@"; do
    start_meridian "$bin" taskset -c "$SERVER_CPU" || { echo "$bin did not answer" >&2; exit 1; }
    count "$bin" "$MERIDIAN" "$MERIDIAN_PORT"
done
start_proxy_nginx taskset -c "$SERVER_CPU"
count nginx "$NGINX" "$NGINX_PORT"
