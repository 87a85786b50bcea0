# shellcheck shell=bash
# bench/work-dir.sh: sourced by the scripts that run on a work dir that
# bench/proxy.sh left (compare.sh, instructions.sh, neighbour.sh,
# pgo-train.sh). It stops what they start, by PID, when they exit, and
# starts the work dir's backend, the nginx proxy and Meridian. Needs
# WORK_DIR set.

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

# start_proxy_nginx [PREFIX...]: the nginx reverse proxy, run under PREFIX,
# stopped on exit; sets NGINX (its master) and, once it answers,
# NGINX_WORKER. Needs NGINX_PORT.
start_proxy_nginx() {
    "$@" nginx -p "$WORK_DIR" -e "$WORK_DIR/proxy-error.log" \
        -c "$WORK_DIR/nginx-proxy.conf" -g 'daemon off;' </dev/null >/dev/null 2>&1 &
    NGINX=$!
    PIDS+=("$NGINX")
    wait_answers "http://127.0.0.1:$NGINX_PORT/2b" 10
    # shellcheck disable=SC2034 # read by the sourcing script
    NGINX_WORKER=$(pgrep -P "$NGINX" | head -1)
}

# start_meridian BIN [PREFIX...]: a Meridian node on the work dir's
# node.toml (its access log emptied first), run under PREFIX, stopped on
# exit; sets MERIDIAN (its PID). Status 1 if it does not answer within 10 s.
# Needs MERIDIAN_PORT.
start_meridian() {
    local bin=$1
    shift
    rm -f "$WORK_DIR/access.log"
    "$@" "$bin" node run --config "$WORK_DIR/node.toml" </dev/null >"$WORK_DIR/meridian.out" 2>&1 &
    MERIDIAN=$!
    PIDS+=("$MERIDIAN")
    wait_answers "http://127.0.0.1:$MERIDIAN_PORT/2b" 10
}

# set_wrk_args: sets WRK_ARGS, wrk's arguments for CONNS connections on one
# thread, with `Connection: close` on every request when CLOSE=1.
set_wrk_args() {
    WRK_ARGS=(-t1 -c"$CONNS")
    if [ "${CLOSE:-0}" = 1 ]; then
        WRK_ARGS+=(-H 'Connection: close')
    fi
}

# wait_answers URL SECONDS: until URL answers 2xx, for at most SECONDS
# (status 1 if it never does).
wait_answers() {
    local _
    for _ in $(seq $(($2 * 10))); do
        curl -sf "$1" >/dev/null && return 0
        sleep 0.1
    done
    return 1
}
