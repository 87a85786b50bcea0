#!/usr/bin/env bash
# bench/pgo-build.sh: a profile-guided release build of Meridian.
#
# The release profile as Cargo.toml sets it (fat LTO, one codegen unit),
# built twice: once with `-Cprofile-generate`, which makes a binary that
# counts what its code does, then, after bench/pgo-train.sh has run that
# binary under load and `llvm-profdata` has merged its counts, once more
# with `-Cprofile-use`, which lays out and inlines the code by those
# counts. The second build links with `-z keep-text-section-prefix`, so
# that lld keeps the functions the profile found hot in a `.text.hot`
# section of their own (about half a MiB of 17 MiB of code) rather than
# scattered through `.text`: at one connection, where the backend runs
# between two halves of every request, fewer of the request's pages and
# cache lines are cold. docs/benchmarks.md has what it gives.
#
#   bench/pgo-build.sh [OUT]                # what deploy/Dockerfile runs
#   MERIDIAN_BIN=OUT SKIP_BUILD=1 bench/proxy.sh
#
# The training runs on a work dir of bench/proxy.sh's: WORK_DIR, or, when
# it is not set, a new one that `SETUP_ONLY=1 bench/proxy.sh` writes (and
# which is removed at the end).
#
# Both builds are for `--target x86_64-unknown-linux-gnu`, so that
# RUSTFLAGS reach the binary only, not the build scripts and procedural
# macros, in a target dir of their own (they share nothing with a plain
# build). The profile is only as good as the load it was made under:
# TRAINING=mixed (the default) is bench/pgo-train.sh's mixed load, not the
# shapes bench/proxy.sh measures; TRAINING=shapes is those shapes.
#
# Needs an `llvm-profdata` that reads the profiles of rustc's LLVM: the
# newest llvm-profdata-NN on the PATH from 19 up (Debian 12's `llvm-19`
# reads rustc 1.95's), installed with apt-get as root if there is none.
#
# Environment: WORK_DIR (a new one when not set), TRAINING=mixed, PGO_TARGET_DIR=
# target/pgo (under the repository), PORT_BASE (as bench/proxy.sh).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
TRAINING=${TRAINING:-mixed}
PGO_TARGET_DIR=${PGO_TARGET_DIR:-$REPO_DIR/target/pgo}
OUT=${1:-$PGO_TARGET_DIR/meridian}
TRIPLE=$(rustc -vV | awk '/^host:/{print $2}')
PROFILES=$PGO_TARGET_DIR/profiles
MERGED=$PGO_TARGET_DIR/meridian.profdata

log() { printf '[pgo-build.sh] %s\n' "$*" >&2; }
die() { printf '[pgo-build.sh] error: %s\n' "$*" >&2; exit 1; }

profdata() {
    local version
    for version in $(seq 30 -1 19); do
        command -v "llvm-profdata-$version" && return 0
    done
    return 1
}
if ! PROFDATA=$(profdata); then
    [[ $(id -u) == 0 ]] || die "no llvm-profdata-19 or newer; run as root so apt-get can install llvm-19"
    log "installing llvm-19 (llvm-profdata-19)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >&2
    PROFDATA=$(profdata) || die "llvm-profdata-19 not found after install"
fi

# build FLAG: the release build of the `meridian` binary with RUSTFLAGS=FLAG.
build() {
    (cd "$REPO_DIR" && RUSTFLAGS="$1" CARGO_TARGET_DIR=$PGO_TARGET_DIR \
        cargo build --release --locked -p cli --target "$TRIPLE" >&2) ||
        die "cargo build with RUSTFLAGS='$1' failed"
}

if [[ -z ${WORK_DIR:-} ]]; then
    WORK_DIR=$(mktemp -d /tmp/meridian-pgo-train.XXXXXX)
    trap 'rm -rf "$WORK_DIR"' EXIT
    log "0/4 training work dir: $WORK_DIR"
    SETUP_ONLY=1 WORK_DIR=$WORK_DIR "$BENCH_DIR/proxy.sh" >&2 ||
        die "could not write the training work dir"
fi
rm -rf "$PROFILES"
log "1/4 profiling build (-Cprofile-generate)"
build "-Cprofile-generate=$PROFILES"
log "2/4 training ($TRAINING)"
TRAINING=$TRAINING WORK_DIR=$WORK_DIR "$BENCH_DIR/pgo-train.sh" \
    "$PGO_TARGET_DIR/$TRIPLE/release/meridian" >&2
compgen -G "$PROFILES/*.profraw" >/dev/null || die "the training wrote no profile in $PROFILES"
log "3/4 merging the profile ($PROFDATA)"
"$PROFDATA" merge -o "$MERGED" "$PROFILES"/*.profraw
log "4/4 optimised build (-Cprofile-use)"
build "-Cprofile-use=$MERGED -Clink-arg=-Wl,-z,keep-text-section-prefix"
mkdir -p "$(dirname "$OUT")"
cp "$PGO_TARGET_DIR/$TRIPLE/release/meridian" "$OUT"
log "done: $OUT"
