# bench/work-dir.sh: sourced by the scripts that run on a work dir that
# bench/proxy.sh left (compare.sh, instructions.sh, pgo-train.sh). It
# stops what they start, by PID, when they exit, and starts the work
# dir's backend nginx. Needs WORK_DIR set.

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
mkdir -p "$WORK_DIR"/{tmp,meridian-data}

# start_backend [PREFIX...]: the backend nginx, run under PREFIX (say
# `taskset -c 1`), stopped on exit.
start_backend() {
    "$@" nginx -p "$WORK_DIR" -e "$WORK_DIR/backend-error.log" \
        -c "$WORK_DIR/nginx-backend.conf" -g 'daemon off;' </dev/null >/dev/null 2>&1 &
    PIDS+=($!)
}
