#!/usr/bin/env bash
# bench/proxy.sh: Meridian vs nginx as keep-alive reverse proxies in front of
# the same fast backend (a separate one-worker nginx). Prints Markdown tables.
#
# How to run (as root, from anywhere; needs 2 CPUs; about 8 minutes by default):
#
#   bench/proxy.sh                              # defaults: 5 rounds x 8 s per run
#   ROUNDS=7 DURATION=10 bench/proxy.sh         # longer, steadier
#   SCENARIOS="ka64-2b ka1-2b" bench/proxy.sh   # a subset
#   SKIP_BUILD=1 bench/proxy.sh                 # reuse target/release/meridian
#
# What it does:
#   1. installs nginx and wrk with apt-get if missing, builds
#      `cargo build --release -p cli` (unless SKIP_BUILD=1);
#   2. starts, in a temp dir, its own nginx backend (/2b, /1k, /100k), an nginx
#      reverse proxy (bench/nginx-proxy.conf.in) and a Meridian node
#      (bench/node.toml.in + bench/gateway.yaml.in, access log on, to a file);
#      backend and both proxies are pinned to SERVER_CPU, wrk to LOAD_CPU;
#   3. for each round, for each scenario, runs wrk against Meridian then nginx
#      (alternating which goes first each round), each run WARMUP s of unmeasured
#      load then DURATION s measured, with the other proxy stopped (SIGSTOP)
#      meanwhile, so that its wake-ups do not change the CPU's idle behaviour;
#   4. prints medians per scenario and proxy: req/s, p50/p99 latency, proxy CPU
#      time per request (utime+stime of the proxy and its children from
#      /proc/PID/stat, before and after the run, divided by wrk's request count),
#      then the Meridian/nginx ratios.
# Everything listens on 127.0.0.1 only; every wrk run is bounded by -d and `timeout`.
# All processes started here are stopped by PID on exit.
#
# Environment:
#   ROUNDS=5  DURATION=8  WARMUP=1   rounds, seconds per measured run, warm-up seconds
#   SCENARIOS="ka64-2b ka64-1k ka64-100k ka1-2b close16-2b"
#   LOAD_CPU=0  SERVER_CPU=1         CPU for wrk / CPU for backend and proxies
#   PORT_BASE=18380                  backend, nginx proxy, Meridian proxy, Meridian admin
#                                    use PORT_BASE .. PORT_BASE+3
#   MERIDIAN_BIN=target/release/meridian   SKIP_BUILD=0
#   WORK_DIR=(mktemp -d)             configs, logs, raw results (kept; access.log is
#   KEEP_ACCESS_LOG=0                deleted at exit unless KEEP_ACCESS_LOG=1)
#   ACCESS_LOG=file                  Meridian's access log: "file" (the benchmark) or
#                                    "off" (diagnosis only: how much the log costs)
#   SETUP_ONLY=0                     1: write the work dir's configs and stop (no build,
#                                    no run): what bench/pgo-build.sh trains in

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"ka64-2b ka64-1k ka64-100k ka1-2b close16-2b"}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-18380}
MERIDIAN_BIN=${MERIDIAN_BIN:-$REPO_DIR/target/release/meridian}
SKIP_BUILD=${SKIP_BUILD:-0}
SETUP_ONLY=${SETUP_ONLY:-0}
KEEP_ACCESS_LOG=${KEEP_ACCESS_LOG:-0}
ACCESS_LOG=${ACCESS_LOG:-file}

BACKEND_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
MERIDIAN_PORT=$((PORT_BASE + 2))
MERIDIAN_ADMIN_PORT=$((PORT_BASE + 3))

log() { printf '[proxy.sh] %s\n' "$*" >&2; }
die() { printf '[proxy.sh] error: %s\n' "$*" >&2; exit 1; }

# --- scenarios: name -> "connections path extra-header" ---------------------
scenario_conns() {
    case $1 in
        ka64-2b | ka64-1k | ka64-100k) echo 64 ;;
        ka1-2b) echo 1 ;;
        close16-2b) echo 16 ;;
        *) die "unknown scenario '$1' (known: ka64-2b ka64-1k ka64-100k ka1-2b close16-2b)" ;;
    esac
}
scenario_path() {
    case $1 in
        *-2b) echo /2b ;;
        *-1k) echo /1k ;;
        *-100k) echo /100k ;;
    esac
}
scenario_label() {
    case $1 in
        ka64-2b) echo "64 conns, 2 B" ;;
        ka64-1k) echo "64 conns, 1 KiB" ;;
        ka64-100k) echo "64 conns, 100 KiB" ;;
        ka1-2b) echo "1 conn, 2 B" ;;
        close16-2b) echo "16 conns, new conn per request, 2 B" ;;
    esac
}

# --- preflight ----------------------------------------------------------------
for s in $SCENARIOS; do scenario_conns "$s" >/dev/null; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer of seconds (got '$DURATION')"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be an integer of seconds (got '$WARMUP')"
[[ $ACCESS_LOG == file || $ACCESS_LOG == off ]] || die "ACCESS_LOG must be file or off (got '$ACCESS_LOG')"

ncpu=$(nproc --all)
((SETUP_ONLY == 1 || (LOAD_CPU < ncpu && SERVER_CPU < ncpu))) ||
    die "LOAD_CPU=$LOAD_CPU / SERVER_CPU=$SERVER_CPU need at least $((LOAD_CPU > SERVER_CPU ? LOAD_CPU + 1 : SERVER_CPU + 1)) CPUs; this machine has $ncpu"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    [[ $(id -u) == 0 ]] || die "nginx and wrk are missing; run as root so apt-get can install them"
    log "installing nginx and wrk"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >&2
fi
NGINX=$(command -v nginx) || NGINX=/usr/sbin/nginx
[[ -x $NGINX ]] || die "nginx not found after install"
for tool in wrk taskset curl ss getconf awk timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done

for port in $BACKEND_PORT $NGINX_PORT $MERIDIAN_PORT $MERIDIAN_ADMIN_PORT; do
    if [[ -n $(ss -Hltn "sport = :$port") ]]; then
        die "port 127.0.0.1:$port is already in use; pick another PORT_BASE"
    fi
done

if [[ $SKIP_BUILD != 1 && $SETUP_ONLY != 1 ]]; then
    log "building: cargo build --release -p cli"
    (cd "$REPO_DIR" && cargo build --release -p cli >&2) || die "cargo build --release -p cli failed"
fi
[[ $SETUP_ONLY == 1 || -x $MERIDIAN_BIN ]] || die "Meridian binary not found at $MERIDIAN_BIN (build it or set MERIDIAN_BIN)"

CLK_TCK=$(getconf CLK_TCK)

# --- work dir and cleanup -----------------------------------------------------
WORK_DIR=${WORK_DIR:-$(mktemp -d /tmp/meridian-proxy-bench.XXXXXX)}
mkdir -p "$WORK_DIR"/{tmp,www,meridian-data}
# nginx workers run as an unprivileged user: they must read www/.
chmod 755 "$WORK_DIR" "$WORK_DIR/www"
RAW=$WORK_DIR/raw.tsv
PIDS=()

# family PID: PID and its direct children (nginx workers), one a line.
family() {
    echo "$1"
    ps -o pid= --ppid "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid all=()
    for pid in "${PIDS[@]}"; do
        mapfile -t -O "${#all[@]}" all < <(family "$pid")
    done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        # A proxy frozen by `freeze` only takes the TERM once it runs again.
        kill -CONT "${all[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0
            for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        wait 2>/dev/null || true
    fi
    if [[ $KEEP_ACCESS_LOG != 1 ]]; then rm -f "$WORK_DIR/access.log"; fi
    rm -rf "$WORK_DIR/meridian-data" "$WORK_DIR/tmp"
    log "work dir (configs, logs, raw results): $WORK_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

render() { # template output [KEY=VALUE ...]
    local tmpl=$1 out=$2 kv
    shift 2
    local script=()
    for kv in "$@"; do script+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${script[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unfilled placeholder in $out"; fi
}

# Waits until URL answers 200, while PID lives; else prints LOGFILE and fails.
wait_ready() { # name pid url logfile
    local name=$1 pid=$2 url=$3 logfile=$4
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            die "$name (pid $pid) exited during startup; log: $logfile"
        }
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 2>/dev/null || true
    die "$name did not answer 200 on $url within 15 s; log: $logfile"
}

# Checks that PORT serves the three bodies with the right sizes.
check_bodies() { # name port
    local name=$1 port=$2 path want got
    for path in /2b /1k /100k; do
        case $path in /2b) want="200 2" ;; /1k) want="200 1024" ;; /100k) want="200 102400" ;; esac
        got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "http://127.0.0.1:$port$path" || true)
        [[ $got == "$want" ]] || die "$name: GET $path returned '$got', expected '$want' (status size)"
    done
}

# utime+stime (clock ticks) of PID and its direct children (nginx workers).
cpu_ticks() { # pid
    local total=0 p t
    for p in $(family "$1"); do
        # Fields after the ")" that ends comm: 3=state ... 14=utime 15=stime.
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# utime+stime+cutime+cstime (clock ticks) of every process that is not this
# script, one of its children, or a server it started: background load (other
# builds, kernel threads) that competes with the benchmark for the CPUs.
other_ticks() {
    local excl=" $$ ${PIDS[*]} "
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v excl="$excl" '
        {
            pid = $1
            line = $0
            sub(/^.*\) /, "", line)
            split(line, f, " ")
            if (index(excl, " " pid " ") || index(excl, " " f[2] " ")) next
            s += f[12] + f[13] + f[14] + f[15]
        }
        END { printf "%d", s }'
}

backend_accepts() {
    curl -s --max-time 2 "http://127.0.0.1:$BACKEND_PORT/nginx_status" | awk 'NR==3 {print $1}'
}

# --- backend ------------------------------------------------------------------
head -c 1024 /dev/zero | tr '\0' 'a' >"$WORK_DIR/www/1k"
head -c 102400 /dev/zero | tr '\0' 'b' >"$WORK_DIR/www/100k"

render "$BENCH_DIR/nginx-backend.conf.in" "$WORK_DIR/nginx-backend.conf" DIR="$WORK_DIR" PORT="$BACKEND_PORT"
render "$BENCH_DIR/nginx-proxy.conf.in" "$WORK_DIR/nginx-proxy.conf" DIR="$WORK_DIR" PORT="$NGINX_PORT" BACKEND_PORT="$BACKEND_PORT"
if [[ $ACCESS_LOG == off ]]; then access_log_target=off; else access_log_target=$WORK_DIR/access.log; fi
# node.toml serves the bench gateway; node-train.toml, the same node,
# serves bench/pgo-train.sh's training gateway.
for gateway in gateway gateway-train; do
    node=node${gateway#gateway}
    render "$BENCH_DIR/node.toml.in" "$WORK_DIR/$node.toml" DIR="$WORK_DIR" PORT="$MERIDIAN_PORT" \
        ADMIN_PORT="$MERIDIAN_ADMIN_PORT" ACCESS_LOG="$access_log_target" GATEWAY="$gateway.yaml"
    render "$BENCH_DIR/$gateway.yaml.in" "$WORK_DIR/$gateway.yaml" BACKEND_PORT="$BACKEND_PORT"
done

"$NGINX" -t -q -p "$WORK_DIR" -e "$WORK_DIR/backend-error.log" -c "$WORK_DIR/nginx-backend.conf" ||
    die "backend nginx config is invalid: $WORK_DIR/nginx-backend.conf"
"$NGINX" -t -q -p "$WORK_DIR" -e "$WORK_DIR/proxy-error.log" -c "$WORK_DIR/nginx-proxy.conf" ||
    die "proxy nginx config is invalid: $WORK_DIR/nginx-proxy.conf"
if [[ $SETUP_ONLY == 1 ]]; then
    log "SETUP_ONLY=1: configs written"
    exit 0
fi

log "starting backend nginx on 127.0.0.1:$BACKEND_PORT (CPU $SERVER_CPU)"
taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK_DIR" -e "$WORK_DIR/backend-error.log" \
    -c "$WORK_DIR/nginx-backend.conf" -g 'daemon off;' </dev/null >"$WORK_DIR/backend.out" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_ready "backend nginx" "$BACKEND_PID" "http://127.0.0.1:$BACKEND_PORT/2b" "$WORK_DIR/backend-error.log"
check_bodies "backend nginx" "$BACKEND_PORT"

log "starting nginx proxy on 127.0.0.1:$NGINX_PORT (CPU $SERVER_CPU)"
taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK_DIR" -e "$WORK_DIR/proxy-error.log" \
    -c "$WORK_DIR/nginx-proxy.conf" -g 'daemon off;' </dev/null >"$WORK_DIR/proxy.out" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ready "nginx proxy" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/2b" "$WORK_DIR/proxy-error.log"
check_bodies "nginx proxy" "$NGINX_PORT"

log "starting Meridian on 127.0.0.1:$MERIDIAN_PORT, admin :$MERIDIAN_ADMIN_PORT (CPU $SERVER_CPU)"
taskset -c "$SERVER_CPU" "$MERIDIAN_BIN" node run --config "$WORK_DIR/node.toml" \
    </dev/null >"$WORK_DIR/meridian.out" 2>&1 &
MERIDIAN_PID=$!
PIDS+=("$MERIDIAN_PID")
wait_ready "Meridian" "$MERIDIAN_PID" "http://127.0.0.1:$MERIDIAN_PORT/2b" "$WORK_DIR/meridian.out"
check_bodies "Meridian" "$MERIDIAN_PORT"

proxy_pid() { case $1 in meridian) echo "$MERIDIAN_PID" ;; nginx) echo "$NGINX_PID" ;; esac; }
proxy_port() { case $1 in meridian) echo "$MERIDIAN_PORT" ;; nginx) echo "$NGINX_PORT" ;; esac; }

# --- one wrk run --------------------------------------------------------------
# freeze PROXY / thaw PROXY: stop (SIGSTOP) or resume the proxy and its
# children. The proxy that is not measured is stopped for the other's run,
# so each runs beside the same quiet CPU. An idle process that wakes now and
# then (Meridian's timers, or any ticker) lowered the CPU per request of the
# proxy measured beside it by 11-20 % at one connection on the development
# VM; nginx idle wakes for nothing, so the bias was one-sided, in nginx's
# favour (docs/benchmarks.md, "The proxy not under test is frozen").
signal_proxy() { # SIGNAL PROXY
    local pids
    mapfile -t pids < <(family "$(proxy_pid "$2")")
    kill "-$1" "${pids[@]}" 2>/dev/null || true
}
freeze() { signal_proxy STOP "$1"; }
thaw() { signal_proxy CONT "$1"; }
other_proxy() { case $1 in meridian) echo nginx ;; nginx) echo meridian ;; esac; }

# Appends one TSV row to $RAW:
# scenario proxy round rps p50_us p99_us cpu_us_per_req requests non2xx sock_errors upstream_conns
# other_cpu_pct (CPU used by unrelated processes during the run, % of one CPU)
wrk_args() { # scenario port
    local conns path
    conns=$(scenario_conns "$1")
    path=$(scenario_path "$1")
    WRK_ARGS=(-t1 "-c$conns" --timeout 5s --latency)
    [[ $1 == close* ]] && WRK_ARGS+=(-H 'Connection: close')
    WRK_URL="http://127.0.0.1:$2$path"
}

run_one() { # scenario proxy round
    local scenario=$1 proxy=$2 round=$3 pid port out cpu0 cpu1 acc0 acc1 other0 other1
    pid=$(proxy_pid "$proxy")
    port=$(proxy_port "$proxy")
    wrk_args "$scenario" "$port"

    if ((WARMUP > 0)); then
        timeout -k 5 $((WARMUP + 20)) taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d "${WARMUP}s" "$WRK_URL" >/dev/null ||
            die "warm-up wrk failed for $proxy/$scenario"
    fi
    acc0=$(backend_accepts)
    other0=$(other_ticks)
    cpu0=$(cpu_ticks "$pid")
    out=$(timeout -k 5 $((DURATION + 20)) taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d "${DURATION}s" "$WRK_URL") ||
        die "wrk failed or timed out for $proxy/$scenario"
    cpu1=$(cpu_ticks "$pid")
    other1=$(other_ticks)
    acc1=$(backend_accepts)
    printf '%s\n' "$out" >"$WORK_DIR/wrk-$scenario-$proxy-$round.txt"

    kill -0 "$pid" 2>/dev/null || {
        tail -n 30 "$WORK_DIR/meridian.out" "$WORK_DIR/proxy-error.log" >&2 2>/dev/null || true
        die "$proxy (pid $pid) died during $scenario round $round"
    }

    # The status request itself is one accepted connection.
    printf '%s\n' "$out" | awk -v s="$scenario" -v p="$proxy" -v r="$round" \
        -v dticks=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v dacc=$((acc1 - acc0 - 1)) \
        -v other=$((other1 - other0)) -v secs="$DURATION" '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /m$/) return v * 60e6
            if (v ~ /s$/) return v * 1e6
            return v + 0
        }
        /^ +50%/ { p50 = us($2) }
        /^ +99%/ { p99 = us($2) }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
        END {
            if (reqs == 0) { print "no requests completed" > "/dev/stderr"; exit 1 }
            printf "%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.3f\t%d\t%d\t%d\t%d\t%.1f\n",
                s, p, r, rps, p50, p99, dticks * 1e6 / hz / reqs, reqs, non2xx, errs, dacc,
                other * 100 / hz / secs
        }' >>"$RAW" || die "could not parse wrk output for $proxy/$scenario (see $WORK_DIR/wrk-$scenario-$proxy-$round.txt)"
    tail -n 1 "$RAW" | awk -F'\t' '{printf "[proxy.sh] %-11s %-8s round %s: %9.0f req/s  p50 %8.0f us  p99 %8.0f us  %7.2f cpu-us/req  non2xx %d  sockerr %d  upstream-conns %d  other-cpu %.0f%%\n", $1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12}' >&2
}

# --- main loop ----------------------------------------------------------------
n_scen=$(wc -w <<<"$SCENARIOS")
log "plan: $ROUNDS rounds x $n_scen scenarios x 2 proxies x (${WARMUP} s warm-up + ${DURATION} s) ≈ $((ROUNDS * n_scen * 2 * (WARMUP + DURATION) / 60 + 1)) min"
bg0=$(other_ticks)
sleep 2
bg=$(((($(other_ticks) - bg0) * 100) / CLK_TCK / 2))
if ((bg > 20)); then
    log "warning: other processes use ${bg}% of a CPU right now; results will be noisy (see the Other CPU column)"
fi
: >"$RAW"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="meridian nginx"; else order="nginx meridian"; fi
    for scenario in $SCENARIOS; do
        for proxy in $order; do
            freeze "$(other_proxy "$proxy")"
            run_one "$scenario" "$proxy" "$round"
            thaw "$(other_proxy "$proxy")"
        done
    done
done

# --- Meridian's own view: errors and the access log --------------------------
curl -s --max-time 5 "http://127.0.0.1:$MERIDIAN_ADMIN_PORT/metrics" >"$WORK_DIR/meridian-metrics.txt" || true
metric_sum() { # name
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }' "$WORK_DIR/meridian-metrics.txt"
}
sleep 1 # let the access-log writer drain
access_lines=$(wc -l <"$WORK_DIR/access.log" 2>/dev/null || echo 0)

# --- summary ------------------------------------------------------------------
median() { # scenario proxy column
    awk -F'\t' -v s="$1" -v p="$2" -v c="$3" '$1 == s && $2 == p { print $c }' "$RAW" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
total() { # scenario proxy column
    awk -F'\t' -v s="$1" -v p="$2" -v c="$3" '$1 == s && $2 == p { t += $c } END { printf "%d", t }' "$RAW"
}
maxcol() { # scenario proxy column
    awk -F'\t' -v s="$1" -v p="$2" -v c="$3" '$1 == s && $2 == p && $c > m { m = $c } END { print m + 0 }' "$RAW"
}
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
# as_good SCENARIO COLUMN HIGHER: "k/n", the rounds in which Meridian's run was
# at least as good as nginx's run of the same round (HIGHER=1: higher is better).
as_good() {
    awk -F'\t' -v s="$1" -v c="$2" -v higher="$3" '
        $1 == s { v[$2, $3] = $c; rounds[$3] = 1 }
        END {
            for (r in rounds) {
                if (!((("meridian", r) in v) && (("nginx", r) in v))) continue
                n++
                m = v["meridian", r]; x = v["nginx", r]
                if (higher ? m >= x : m <= x) k++
            }
            printf "%d/%d", k, n
        }' "$RAW"
}

{
    echo "Medians of $ROUNDS runs of ${DURATION} s per scenario and proxy (wrk -t1, pinned: wrk CPU $LOAD_CPU, proxy + backend CPU $SERVER_CPU)."
    echo "CPU/req = proxy process utime+stime per request (nginx: master + worker). Errors = non-2xx + socket errors, summed over runs."
    echo "Upstream conns = new connections accepted by the backend per run (median)."
    echo "Other CPU = CPU used by unrelated processes during the runs (max over runs, % of one CPU): noise."
    if [[ $ACCESS_LOG == off ]]; then echo "NOTE: Meridian's access log was OFF (ACCESS_LOG=off): a diagnostic run, not the benchmark."; fi
    echo
    echo "| Scenario | Proxy | req/s | p50 (µs) | p99 (µs) | CPU/req (µs) | Errors | Upstream conns | Other CPU |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in $SCENARIOS; do
        for p in meridian nginx; do
            name=$([[ $p == meridian ]] && echo Meridian || echo nginx)
            errs=$(($(total "$s" "$p" 9) + $(total "$s" "$p" 10)))
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s%% |\n' "$(scenario_label "$s")" "$name" \
                "$(fmt "$(median "$s" "$p" 4)" %.0f)" "$(fmt "$(median "$s" "$p" 5)" %.0f)" \
                "$(fmt "$(median "$s" "$p" 6)" %.0f)" "$(fmt "$(median "$s" "$p" 7)" %.2f)" \
                "$errs" "$(fmt "$(median "$s" "$p" 11)" %.0f)" "$(fmt "$(maxcol "$s" "$p" 12)" %.0f)"
        done
    done
    echo
    echo "Ratios Meridian / nginx (of the medians; CPU/req and p99: lower is better, req/s: higher is better)."
    echo "In brackets: in how many rounds Meridian's run was at least as good as nginx's run of the same round"
    echo "(the two runs of a round are back to back, so the machine's drift between rounds cancels out)."
    echo
    echo "| Scenario | CPU/req | req/s | p99 |"
    echo "|---|---:|---:|---:|"
    for s in $SCENARIOS; do
        printf '| %s | %s (%s) | %s (%s) | %s (%s) |\n' "$(scenario_label "$s")" \
            "$(ratio "$(median "$s" meridian 7)" "$(median "$s" nginx 7)")" "$(as_good "$s" 7 0)" \
            "$(ratio "$(median "$s" meridian 4)" "$(median "$s" nginx 4)")" "$(as_good "$s" 4 1)" \
            "$(ratio "$(median "$s" meridian 6)" "$(median "$s" nginx 6)")" "$(as_good "$s" 6 0)"
    done
    echo
    echo "Meridian counters at the end: requests_total $(metric_sum meridian_requests_total)," \
        "upstream_errors_total $(metric_sum meridian_upstream_errors_total)," \
        "client_errors_total $(metric_sum meridian_client_errors_total)," \
        "access_log_dropped_total $(metric_sum meridian_access_log_dropped_total);" \
        "access log lines written: $access_lines."
} | tee "$WORK_DIR/summary.md"
