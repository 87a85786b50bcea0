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
# - TRAINING=mixed (the default): the gateway of bench/gateway-train.yaml
#   (the bench route, and routes with versioning, rewrites, an API key,
#   rate limits, header transforms, CORS, the WAF and route conditions),
#   with an API key created through the admin API. Requests are drawn at
#   random, per request: about half to the bench route (GET and POST with
#   a body, the three bodies, a path the backend does not have (404),
#   query strings), the rest spread over the other routes, some with a
#   missing key or an unknown version (401, 400); some carry a request id,
#   a trace context or a cookie. At 1, 8 and 32 keep-alive connections,
#   then a new connection per request. Each route is checked to answer as
#   expected before the load. Not the shapes that bench/proxy.sh
#   measures, nor their proportions.
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
ADMIN_PORT=$((PORT_BASE + 3))
[ $# -eq 1 ] || { echo "usage: WORK_DIR=... $0 PROFILING_MERIDIAN_BIN" >&2; exit 1; }
case $TRAINING in mixed | shapes) ;; *) echo "TRAINING must be mixed or shapes" >&2; exit 1 ;; esac
BIN=$1
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
start_backend
rm -f "$WORK_DIR/access.log"
config=$WORK_DIR/node.toml
if [ "$TRAINING" = mixed ]; then
    # bench/proxy.sh's node on the training gateway, with a fresh store.
    config=$WORK_DIR/node-train.toml
    rm -rf "$WORK_DIR/meridian-data"
fi
"$BIN" node run --config "$config" </dev/null >"$WORK_DIR/pgo-train.out" 2>&1 &
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
    admin="http://127.0.0.1:$ADMIN_PORT"
    key=$("$BIN" key create --consumer trainer --admin "$admin" | awk '/^key:/{print $2}')
    [ -n "$key" ] || { echo "could not create the training API key through $admin" >&2; exit 1; }
    # expect STATUS PATH [curl arguments...]: one request answered as the
    # training means it to be (else the load would train error paths).
    expect() {
        local want=$1 path=$2 got
        shift 2
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url$path")
        [ "$got" = "$want" ] || { echo "training check: $path answered $got, not $want" >&2; exit 1; }
    }
    expect 200 /2b
    expect 200 /api/v1/2b
    expect 200 /api/1k -H 'Accept: application/vnd.train.v1+json'
    expect 400 /api/v9/2b
    expect 200 /keyed/2b -H "X-API-Key: $key"
    expect 401 /keyed/2b
    expect 200 /limited/1k
    expect 204 /shaped/2b -X OPTIONS -H 'Origin: https://app.example.com' \
        -H 'Access-Control-Request-Method: POST'
    expect 200 /items/7?view=full -H 'x-tenant: a'
    mixed=$WORK_DIR/pgo-mixed.lua
    cat >"$mixed" <<'LUA'
-- One request drawn at random per call: route, method, path, extra fields.
local key = os.getenv("TRAIN_KEY")
local plain = { "/2b", "/1k", "/100k", "/missing", "/2b?page=2&sort=name", "/1k?q=x" }
local body = string.rep("p", 512)
math.randomseed(os.time())
local function pick(list) return list[math.random(#list)] end
local routes = {
    function(h) return "GET", pick({ "/api/v1/2b", "/api/v2/1k", "/api/2b?version=1" }) end,
    function(h) h["X-API-Version"] = pick({ "1", "2" }); return "GET", "/api/2b" end,
    function(h) h["Accept"] = "application/vnd.train.v2+json"; return "GET", "/api/1k" end,
    function(h) return "GET", "/api/v9/2b" end,
    function(h) h["X-API-Key"] = key; return "GET", pick({ "/keyed/2b", "/keyed/1k" }) end,
    function(h) return "GET", "/keyed/2b" end,
    function(h) return "GET", pick({ "/limited/2b", "/limited/1k" }) end,
    function(h) h["Origin"] = "https://app.example.com"; return "GET", "/shaped/2b" end,
    function(h)
        h["Origin"] = "https://app.example.com"
        h["Access-Control-Request-Method"] = "POST"
        return "OPTIONS", "/shaped/2b"
    end,
    function(h) h["x-tenant"] = "acme"; return "GET", pick({ "/items/7?view=full", "/items/8?view=summary" }) end,
}
request = function()
    local headers = { ["Accept"] = "*/*" }
    local extra = math.random(10)
    if extra == 1 then headers["X-Request-Id"] = "train-" .. math.random(1e9) end
    if extra == 2 then
        headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    end
    if extra == 3 then headers["Cookie"] = "session=abc; theme=dark" end
    if math.random(2) == 1 then
        local method, path = pick(routes)(headers)
        return wrk.format(method, path, headers)
    end
    -- (No HEAD: wrk would wait for the body its Content-Length announces.)
    if math.random(10) == 1 then
        headers["Content-Type"] = "text/plain"
        return wrk.format("POST", "/2b", headers, body)
    end
    return wrk.format("GET", pick(plain), headers)
end
LUA
    export TRAIN_KEY=$key
    shape 32 8 / -s "$mixed"
    shape 8 5 / -s "$mixed"
    shape 1 4 / -s "$mixed"
    shape 8 6 / -s "$mixed" -H 'Connection: close'
fi

# A clean exit writes the profile.
kill -TERM "$meridian"
wait "$meridian" || true
echo "training done; the profile is in the directory the build was given"
