#!/usr/bin/env bash
# bench/icache.sh: instruction-cache misses per proxied request, for
# Meridian builds and for nginx (docs/benchmarks.md, "the code a request
# runs does not fit the instruction cache").
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/icache.sh BIN_A BIN_B ...
#
# Runs bench/instructions.sh under callgrind's cache and branch simulation
# (`--cache-sim=yes --branch-sim=yes`: the host's cache sizes, no
# prefetching, the proxy alone), then bench/icache.py on each profile:
# every event per request and the functions that miss the L1i most.
# Environment as bench/instructions.sh's (CONNS=64 by default here,
# DURATION=5), TOP=25.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/profiles.sh
source "$BENCH_DIR/profiles.sh"
misses() {
    echo "$1:"
    python3 "$BENCH_DIR/icache.py" "$2" "$3" "${TOP:-25}"
}
each_profile misses "--cache-sim=yes --branch-sim=yes" "$@"
