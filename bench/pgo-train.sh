#!/usr/bin/env bash
# bench/pgo-train.sh: the training load for a profile-guided build.
#
# A build made with `RUSTFLAGS=-Cprofile-generate=DIR` counts what its code
# does and writes the counts to DIR when it exits. This script runs such a
# build as bench/proxy.sh runs Meridian (the work dir's node.toml, the same
# backend), drives it with wrk through the five shapes proxy.sh measures
# (25 s in all), and stops it with SIGTERM so that it exits cleanly and
# writes its profile. docs/benchmarks.md has the whole recipe and what it
# gave; the profile is only as representative as this load.
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   RUSTFLAGS=-Cprofile-generate=/tmp/pgo-data cargo build --release -p cli \
#       --target x86_64-unknown-linux-gnu
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/pgo-train.sh \
#       target/x86_64-unknown-linux-gnu/release/meridian
#   llvm-profdata-19 merge -o /tmp/pgo.profdata /tmp/pgo-data/*.profraw
#   RUSTFLAGS=-Cprofile-use=/tmp/pgo.profdata cargo build --release -p cli \
#       --target x86_64-unknown-linux-gnu
#
# Everything listens on 127.0.0.1; every wrk run is bounded by `timeout`;
# the processes started here are stopped by PID.
#
# Environment: WORK_DIR (required), PORT_BASE=18380 (as bench/proxy.sh).

set -euo pipefail

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
PORT_BASE=${PORT_BASE:-18380}
MERIDIAN_PORT=$((PORT_BASE + 2))
[ $# -eq 1 ] || { echo "usage: WORK_DIR=... $0 PROFILING_MERIDIAN_BIN" >&2; exit 1; }
BIN=$1
# shellcheck source=bench/work-dir.sh
source "$(dirname "$0")/work-dir.sh"
start_backend
rm -f "$WORK_DIR/access.log"
"$BIN" node run --config "$WORK_DIR/node.toml" </dev/null >"$WORK_DIR/pgo-train.out" 2>&1 &
meridian=$!
PIDS+=("$meridian")
url="http://127.0.0.1:$MERIDIAN_PORT"
for _ in $(seq 100); do
    curl -sf "$url/2b" >/dev/null && break
    sleep 0.2
done

# shape: CONNS SECONDS PATH [wrk arguments...]
shape() {
    local conns=$1 seconds=$2 path=$3
    shift 3
    printf 'training: %s connections, %s, %s s: ' "$conns" "$path" "$seconds"
    timeout $((seconds + 20)) wrk -t1 -c"$conns" -d"${seconds}s" "$@" "$url$path" |
        awk '/Requests\/sec/{print $2 " req/s"}'
}
shape 64 8 /2b
shape 64 5 /1k
shape 64 3 /100k
shape 1 4 /2b
shape 16 5 /2b -H 'Connection: close'

# A clean exit writes the profile.
kill -TERM "$meridian"
wait "$meridian" || true
echo "training done; the profile is in the directory the build was given"
