# shellcheck shell=bash
# bench/profiles.sh: sourced by bench/atomics.sh and bench/icache.sh, which
# differ only in the callgrind options and in what reads the profiles.
# Needs WORK_DIR and BENCH_DIR set; CONNS=64 and DURATION=5 by default.

: "${WORK_DIR:?set WORK_DIR to a work dir bench/proxy.sh left}"
export CONNS=${CONNS:-64} DURATION=${DURATION:-5}

# each_profile ANALYSE OPTIONS BIN...: runs bench/instructions.sh on the
# builds (and nginx) with the callgrind OPTIONS, prints its counts, then
# calls `ANALYSE LABEL PROFILE REQUESTS BINARY` for each: the label's last
# profile (instructions.sh names them by basename and removes the label's
# earlier ones), its request count, and the binary that ran.
each_profile() {
    local analyse=$1 counts label requests binary profiles
    export VALGRIND_ARGS=$2
    shift 2
    [ $# -ge 1 ] || { echo "usage: WORK_DIR=... $0 MERIDIAN_BIN..." >&2; exit 1; }
    counts=$("$BENCH_DIR/instructions.sh" "$@")
    printf '%s\n\n' "$counts"
    while IFS=$'\t' read -r label requests _; do
        [ "$label" = proxy ] && continue
        binary=$label
        [ "$label" = nginx ] && binary=$(command -v nginx)
        profiles=("$WORK_DIR/callgrind.$(basename "$label")".*.1)
        "$analyse" "$label" "${profiles[-1]}" "$requests" "$binary"
        echo
    done <<<"$counts"
}
