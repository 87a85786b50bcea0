#!/usr/bin/env bash
# bench/pgo-train.sh: the training load for a profile-guided build.
#
# A build made with `RUSTFLAGS=-Cprofile-generate=DIR` counts what its code
# does and writes the counts to DIR when it exits. This script runs such a
# build as bench/proxy.sh runs Meridian (the work dir's node.toml, the same
# backend), drives it with wrk (about 25 s), and stops it with SIGTERM so
# that it exits cleanly and writes its profile. bench/pgo-build.sh runs
# the whole recipe; docs/benchmarks.md has what it gave. The profile is
# only as representative as the load:
#
# - TRAINING=mixed (the default): requests drawn at random, per request,
#   from GET and POST with a body, over the three bodies, a path
#   the backend does not have (404) and query strings, some carrying a
#   request id, a trace context or a cookie; at 1, 8 and 32 keep-alive
#   connections, then a new connection per request. Not the shapes that
#   bench/proxy.sh measures, nor their proportions.
# - TRAINING=shapes: the five shapes bench/proxy.sh measures, a best case
#   for that benchmark.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/pgo-train.sh PROFILING_BIN
#
# Everything listens on 127.0.0.1; every wrk run is bounded by `timeout`;
# the processes started here are stopped by PID.
#
# Environment: WORK_DIR (required), TRAINING=mixed, PORT_BASE=18380 (as
# bench/proxy.sh).

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
PORT_BASE=${PORT_BASE:-18380}
TRAINING=${TRAINING:-mixed}
MERIDIAN_PORT=$((PORT_BASE + 2))
[ $# -eq 1 ] || { echo "usage: WORK_DIR=... $0 PROFILING_MERIDIAN_BIN" >&2; exit 1; }
case $TRAINING in mixed | shapes) ;; *) echo "TRAINING must be mixed or shapes" >&2; exit 1 ;; esac
BIN=$1
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
start_backend
rm -f "$WORK_DIR/access.log"
"$BIN" node run --config "$WORK_DIR/node.toml" </dev/null >"$WORK_DIR/pgo-train.out" 2>&1 &
meridian=$!
PIDS+=("$meridian")
url="http://127.0.0.1:$MERIDIAN_PORT"
wait_answers "$url/2b" 20 || true

# shape: CONNS SECONDS PATH [wrk arguments...]
shape() {
    local conns=$1 seconds=$2 path=$3
    shift 3
    printf 'training: %s connections, %s, %s s: ' "$conns" "$path" "$seconds"
    timeout $((seconds + 20)) wrk -t1 -c"$conns" -d"${seconds}s" "$@" "$url$path" |
        awk '/Requests\/sec/{print $2 " req/s"}'
}
if [ "$TRAINING" = shapes ]; then
    shape 64 8 /2b
    shape 64 5 /1k
    shape 64 3 /100k
    shape 1 4 /2b
    shape 16 5 /2b -H 'Connection: close'
else
    mixed=$WORK_DIR/pgo-mixed.lua
    cat >"$mixed" <<'LUA'
-- One request drawn at random per call: method, path, extra fields.
local paths = { "/2b", "/1k", "/100k", "/missing", "/2b?page=2&sort=name", "/1k?q=x" }
local body = string.rep("p", 512)
math.randomseed(os.time())
request = function()
    local path = paths[math.random(#paths)]
    local headers = { ["Accept"] = "*/*" }
    local pick = math.random(10)
    if pick == 1 then headers["X-Request-Id"] = "train-" .. math.random(1e9) end
    if pick == 2 then
        headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    end
    if pick == 3 then headers["Cookie"] = "session=abc; theme=dark" end
    -- (No HEAD: wrk would wait for the body its Content-Length announces.)
    if math.random(10) == 1 then
        headers["Content-Type"] = "text/plain"
        return wrk.format("POST", "/2b", headers, body)
    end
    return wrk.format("GET", path, headers)
end
LUA
    shape 32 8 / -s "$mixed"
    shape 8 5 / -s "$mixed"
    shape 1 4 / -s "$mixed"
    shape 8 6 / -s "$mixed" -H 'Connection: close'
fi

# A clean exit writes the profile.
kill -TERM "$meridian"
wait "$meridian" || true
echo "training done; the profile is in the directory the build was given"
