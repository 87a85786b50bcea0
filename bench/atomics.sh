#!/usr/bin/env bash
# bench/atomics.sh: atomic read-modify-writes per proxied request, for
# Meridian builds and for nginx (docs/benchmarks.md, "atomic operations
# per request").
#
#   bench/proxy.sh                          # once: it leaves its work dir
#   WORK_DIR=/tmp/meridian-proxy-bench.XXXX bench/atomics.sh BIN_A BIN_B ...
#
# Runs bench/instructions.sh with callgrind's per-instruction counts
# (`--dump-instr=yes`), then bench/atomics.py on each profile: the total
# per request and the functions that run them. Environment as
# bench/instructions.sh's (CONNS=64 by default here, DURATION=5).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/profiles.sh
source "$BENCH_DIR/profiles.sh"
locked() { python3 "$BENCH_DIR/atomics.py" "$2" "$3" "$4" "${TOP:-15}"; }
each_profile locked "--dump-instr=yes" "$@"
