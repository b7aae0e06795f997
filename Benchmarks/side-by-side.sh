#!/usr/bin/env bash
# Tandem and memcached side by side, on the same machine, with the same
# verifying load generator (Benchmarks/loadgen/tandem-load).
#
#   Benchmarks/side-by-side.sh                          # 5 workloads x 5 rounds x 10 s
#   Benchmarks/side-by-side.sh --duration 5 --rounds 3
#   Benchmarks/side-by-side.sh --only a,e --tandem-args "--flush-interval 200"
#
# Servers, one at a time, each started fresh for every measurement:
#   memcached           memcached -t 2 -m 1024 -p <free port> -l 127.0.0.1 -U 0 [-u root]
#   tandem              tandemd -t 2 -m 1024 -p 0 --data-dir <fresh dir>   (SQLite write-behind)
#   tandem-nopersist    tandemd -t 2 -m 1024 -p 0 --no-persistence
#   tandem-pair         a primary and a sync-replicated backup (both persisting, both
#                       -t 2 -m 1024) on this machine; the load goes to the primary
#   redis               redis-server with AOF, appendfsync everysec (what a user picks
#                       for persistent sessions), driven over RESP by the same generator
#   redis-pair          the same with an asynchronous replica (also AOF); the load goes
#                       to the primary
# Within a round the servers alternate (memcached, tandem, tandem-nopersist,
# memcached, ...), so slow drifts of a shared machine hit all of them alike.
# Medians over the rounds are reported as a Markdown table; every run's JSON
# line, the server logs and the table are kept in the results directory.
#
# Exit status: 0 when every run completed without a single wrong reply, 1 otherwise.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cmdline="Benchmarks/side-by-side.sh"
for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_.,/:=+@%-]+$ ]]; then cmdline+=" $a"; else cmdline+=" '${a//\'/\'\\\'\'}'"; fi
done

duration=10
rounds=5
warmup=1
only="a,b,c,d,e"
tandem_args=""
servers="memcached,tandem,tandem-nopersist"
lg_threads=1
build=1
tandemd_bin=""
results=""

usage() {
    cat <<EOF
usage: Benchmarks/side-by-side.sh [options]
  --duration S         measured seconds per run (default $duration)
  --rounds R           rounds; each round runs every server once per workload (default $rounds)
  --warmup S           unmeasured seconds before each measurement (default $warmup)
  --only LIST          workloads to run, e.g. a,b (default $only)
  --servers LIST       among memcached,tandem,tandem-nopersist,tandem-pair,redis,redis-pair
                       (default memcached,tandem,tandem-nopersist)
  --tandem-args "..."  extra flags for both tandemd variants
  --loadgen-threads N  load generator threads (default $lg_threads)
  --tandemd PATH       use this tandemd binary instead of building one
  --no-build           do not build; use the binary from the last build
  --results DIR        where to keep runs.jsonl, logs and table.md
                       (default Benchmarks/results/<date-time>)
Workloads (2 KB values, 50k keys, preloaded; see Benchmarks/README.md):
  a  90% get / 10% set, 50 connections, pipeline 1
  b  90% get / 10% set, 50 connections, pipeline 16
  c  100% set, 50 connections, pipeline 1
  d  90% get / 10% set, 1 connection, pipeline 1 (latency)
  e  msm-shaped: 25k sessions (50k keys), 50 connections, pipeline 1
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --servers) servers="$2"; shift 2 ;;
        --tandem-args) tandem_args="$2"; shift 2 ;;
        --loadgen-threads) lg_threads="$2"; shift 2 ;;
        --tandemd) tandemd_bin="$2"; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --results) results="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "side-by-side: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

is_num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }
is_num "$duration" && is_num "$warmup" || { echo "side-by-side: --duration/--warmup must be numbers" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "side-by-side: --rounds must be a positive integer" >&2; exit 2; }
[[ "$lg_threads" =~ ^[1-9][0-9]*$ ]] || { echo "side-by-side: --loadgen-threads must be a positive integer" >&2; exit 2; }
awk -v d="$duration" 'BEGIN { exit !(d > 0 && d <= 3600) }' || { echo "side-by-side: --duration must be in (0, 3600]" >&2; exit 2; }

IFS=, read -r -a workloads <<<"$only"
IFS=, read -r -a server_list <<<"$servers"
for w in "${workloads[@]}"; do
    case "$w" in a|b|c|d|e) ;; *) echo "side-by-side: unknown workload '$w' (a-e)" >&2; exit 2 ;; esac
done
for s in "${server_list[@]}"; do
    case "$s" in memcached|tandem|tandem-nopersist|tandem-pair|redis|redis-pair) ;; *) echo "side-by-side: unknown server '$s'" >&2; exit 2 ;; esac
done
uses_redis=0
printf '%s\n' "${server_list[@]}" | grep -q '^redis' && uses_redis=1

log() { printf '[side-by-side %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- cleanup
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tandem-bench.XXXXXX")"
server_pid=""
backup_pid=""
loadgen_pid=""
cleanup() {
    local p
    for p in $loadgen_pid $server_pid $backup_pid; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- build
command -v memcached >/dev/null || { echo "side-by-side: memcached not found (apt-get install memcached)" >&2; exit 2; }
command -v cc >/dev/null || command -v gcc >/dev/null || { echo "side-by-side: no C compiler" >&2; exit 2; }
if [ "$uses_redis" = 1 ]; then
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
        || { echo "side-by-side: redis-server or redis-cli not found (apt-get install redis-server)" >&2; exit 2; }
fi

log "building the load generator"
timeout 300 make -s -C "$here/loadgen" CC="$(command -v cc || command -v gcc)" >&2 || { echo "side-by-side: loadgen build failed" >&2; exit 2; }
loadgen="$here/loadgen/tandem-load"

if [ -z "$tandemd_bin" ]; then
    scratch="$repo/.build-bench"
    if [ "$build" = 1 ]; then
        log "building tandemd (release, scratch path .build-bench; the first build takes minutes)"
        (cd "$repo" && timeout 3600 swift build -c release --product tandemd --scratch-path "$scratch" >&2) \
            || { echo "side-by-side: tandemd build failed" >&2; exit 2; }
    fi
    tandemd_bin="$(cd "$repo" && swift build -c release --scratch-path "$scratch" --show-bin-path)/tandemd"
fi
if [ "$build" = 1 ]; then
    tandemd_rev="built from $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null)$(cd "$repo" && [ -n "$(git status --porcelain -- Sources Package.swift 2>/dev/null)" ] && echo ' + uncommitted changes')"
else
    tandemd_rev="$tandemd_bin (not rebuilt; HEAD is $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null))"
fi
[ -x "$tandemd_bin" ] || { echo "side-by-side: no tandemd at $tandemd_bin (drop --no-build)" >&2; exit 2; }

[ -n "$results" ] || results="$here/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results/logs"
runs="$results/runs.jsonl"
: >"$runs"

# ---------------------------------------------------------------- servers
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' && return
    fi
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server NAME LOGFILE -> sets server_pid, server_port; returns 1 on failure
start_server() {
    local name="$1" logf="$2" deadline
    server_pid=""; server_port=""
    : >"$logf"
    case "$name" in
        memcached)
            server_port="$(free_port)" || return 1
            local user=()
            [ "$(id -u)" -eq 0 ] && user=(-u root)
            memcached -t 2 -m 1024 -p "$server_port" -l 127.0.0.1 -U 0 "${user[@]}" >"$logf" 2>&1 &
            server_pid=$!
            deadline=$((SECONDS + 10))
            until port_open "$server_port"; do
                kill -0 "$server_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
        tandem|tandem-nopersist)
            local data="$tmp/data-$RANDOM$RANDOM"
            local extra=(--data-dir "$data")
            [ "$name" = tandem-nopersist ] && extra+=(--no-persistence)
            # shellcheck disable=SC2086
            "$tandemd_bin" -t 2 -m 1024 -p 0 "${extra[@]}" $tandem_args >"$logf" 2>&1 &
            server_pid=$!
            deadline=$((SECONDS + 60))
            until server_port="$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$logf" | head -1)" && [ -n "$server_port" ]; do
                kill -0 "$server_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
        tandem-pair)
            # Both nodes name each other; the primary's log is LOGFILE, the backup's LOGFILE.backup.
            local wa wb blog="$logf.backup"
            wa="$(free_port)" && wb="$(free_port)" || return 1
            : >"$blog"
            # shellcheck disable=SC2086
            "$tandemd_bin" -t 2 -m 1024 -p 0 --wire-port "$wa" --peer "127.0.0.1:$wb" --node-name a \
                --data-dir "$tmp/data-a-$RANDOM$RANDOM" $tandem_args >"$logf" 2>&1 &
            server_pid=$!
            # shellcheck disable=SC2086
            "$tandemd_bin" -t 2 -m 1024 -p 0 --wire-port "$wb" --peer "127.0.0.1:$wa" --node-name b --role backup \
                --data-dir "$tmp/data-b-$RANDOM$RANDOM" $tandem_args >"$blog" 2>&1 &
            backup_pid=$!
            deadline=$((SECONDS + 60))
            # Measured only once the backup has its (empty) copy and follows:
            # from then on every write waits for its acknowledgement.
            until server_port="$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$logf" | head -1)" && [ -n "$server_port" ] \
                && grep -q "full resync done" "$blog"; do
                kill -0 "$server_pid" 2>/dev/null && kill -0 "$backup_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
        redis)
            server_port="$(free_port)" || return 1
            start_redis "$server_port" "$tmp/redis-$RANDOM$RANDOM" "$logf" || { server_pid="$started_pid"; return 1; }
            server_pid="$started_pid"
            ;;
        redis-pair)
            local rport
            server_port="$(free_port)" && rport="$(free_port)" || return 1
            start_redis "$server_port" "$tmp/redis-a-$RANDOM$RANDOM" "$logf" || { server_pid="$started_pid"; return 1; }
            server_pid="$started_pid"
            start_redis "$rport" "$tmp/redis-b-$RANDOM$RANDOM" "$logf.replica" --replicaof 127.0.0.1 "$server_port" \
                || { backup_pid="$started_pid"; return 1; }
            backup_pid="$started_pid"
            # Measured once the replica follows (its link to the primary is up).
            deadline=$((SECONDS + 30))
            until redis-cli -p "$rport" info replication 2>/dev/null | grep -q '^master_link_status:up'; do
                kill -0 "$backup_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
    esac
}

# start_redis PORT DIR LOGFILE [ARGS...] -> starts redis-server with AOF (everysec) in
# the foreground of a background job; sets started_pid; returns 1 unless it answers PING
start_redis() {
    local port="$1" dir="$2" logf="$3" deadline
    shift 3
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes --appendfsync everysec \
        --protected-mode no --daemonize no "$@" >"$logf" 2>&1 &
    started_pid=$!
    deadline=$((SECONDS + 10))
    until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
        kill -0 "$started_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
}

# stop_server -> sets stop_s (seconds from SIGTERM to exit) and stop_rc (exit status, 'killed' after 60 s)
stop_server() {
    local t0
    t0=$(date +%s.%N)
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 1200); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; stop_rc=killed
    else
        wait "$server_pid" 2>/dev/null; stop_rc=$?
    fi
    server_pid=""
    stop_s="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    if [ -n "$backup_pid" ]; then
        kill -TERM "$backup_pid" 2>/dev/null
        for _ in $(seq 1200); do kill -0 "$backup_pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$backup_pid" 2>/dev/null
        wait "$backup_pid" 2>/dev/null
        backup_pid=""
    fi
}

# ---------------------------------------------------------------- workloads
common=(--value-size 2048 --preload --settle --threads "$lg_threads" --warmup "$warmup" --duration "$duration" --json)
wl_args() {
    case "$1" in
        a) echo "--workload mix --get 90 --set 10 --keys 50000 --connections 50 --pipeline 1" ;;
        b) echo "--workload mix --get 90 --set 10 --keys 50000 --connections 50 --pipeline 16" ;;
        c) echo "--workload mix --set 100 --keys 50000 --connections 50 --pipeline 1" ;;
        d) echo "--workload mix --get 90 --set 10 --keys 50000 --connections 1 --pipeline 1" ;;
        e) echo "--workload msm --sessions 25000 --connections 50 --pipeline 1" ;;
    esac
}
wl_title() {
    case "$1" in
        a) echo "(a) 90/10 get/set, 50 conns, pipeline 1" ;;
        b) echo "(b) 90/10 get/set, 50 conns, pipeline 16" ;;
        c) echo "(c) 100% set, 50 conns" ;;
        d) echo "(d) 90/10 get/set, 1 conn (latency)" ;;
        e) echo "(e) msm-shaped, 25k sessions, 50 conns" ;;
    esac
}
server_title() {
    case "$1" in
        memcached) echo "memcached" ;;
        tandem) echo "Tandem" ;;
        tandem-nopersist) echo "Tandem --no-persistence" ;;
        tandem-pair) echo "Tandem pair (sync; CPU: primary)" ;;
        redis) echo "Redis (AOF everysec)" ;;
        redis-pair) echo "Redis + async replica (AOF; CPU: primary)" ;;
    esac
}

failures=0
run_limit=$(awk -v d="$duration" -v w="$warmup" 'BEGIN { printf "%d", d + w + 360 }')

total=$(( ${#workloads[@]} * rounds * ${#server_list[@]} ))
n=0
log "$total runs of ${duration}s (+${warmup}s warm-up, preload, start/stop); results in $results"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for w in "${workloads[@]}"; do
    for r in $(seq "$rounds"); do
        for s in "${server_list[@]}"; do
            n=$((n + 1))
            logf="$results/logs/$w-$r-$s.log"
            if ! start_server "$s" "$logf"; then
                log "run $n/$total: $w round $r $s: server did not start (log: $logf)"
                [ -n "$server_pid" ] && stop_server
                printf '{"wl":"%s","round":%s,"server":"%s","failed":"server did not start"}\n' "$w" "$r" "$s" >>"$runs"
                failures=$((failures + 1))
                continue
            fi
            # shellcheck disable=SC2046
            protocol=memcached
            case "$s" in redis*) protocol=resp ;; esac
            timeout -k 5 "$run_limit" "$loadgen" --port "$server_port" --protocol "$protocol" $(wl_args "$w") "${common[@]}" \
                --server-pid "$server_pid" --label "$w/$r/$s" >"$tmp/out.json" 2>"$tmp/err.txt" &
            loadgen_pid=$!
            wait "$loadgen_pid"; lrc=$?
            loadgen_pid=""
            alive=1; kill -0 "$server_pid" 2>/dev/null || alive=0
            [ -z "$backup_pid" ] || kill -0 "$backup_pid" 2>/dev/null || alive=0
            stop_server
            out="$(head -1 "$tmp/out.json")"
            if [ -z "$out" ]; then
                log "run $n/$total: $w round $r $s: load generator failed (exit $lrc): $(head -3 "$tmp/err.txt" | tr '\n' ' ')"
                printf '{"wl":"%s","round":%s,"server":"%s","failed":"loadgen exit %s"}\n' "$w" "$r" "$s" "$lrc" >>"$runs"
                failures=$((failures + 1))
                continue
            fi
            [ "$lrc" -eq 0 ] || failures=$((failures + 1))
            [ "$alive" = 1 ] || log "run $n/$total: $w round $r $s: SERVER DIED during the run (log: $logf)"
            [ -s "$tmp/err.txt" ] && sed 's/^/    /' "$tmp/err.txt" | head -8 >&2
            printf '%s\n' "${out%\}},\"wl\":\"$w\",\"round\":$r,\"server\":\"$s\",\"loadgen_exit\":$lrc,\"server_alive\":$alive,\"stop_s\":$stop_s,\"stop_exit\":\"$stop_rc\"}" >>"$runs"
            jf() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$out"; }
            log "run $n/$total: $w round $r $(printf '%-16s' "$s") $(printf '%9.0f' "$(jf throughput)") req/s  p50 $(jf p50_us) us  p99 $(jf p99_us) us  errors $(jf errors)  loadgen cpu $(jf loadgen_cpu_pct)%  server cpu $(jf server_cpu_pct)%  stop ${stop_s}s ($stop_rc)"
        done
    done
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- table
# field VALUE of the runs of workload W on server S, one per line
vals() { grep "\"wl\":\"$1\"" "$runs" | grep "\"server\":\"$2\"" | grep -v '"failed"' | sed -n "s/.*\"$3\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }
# requests per second of server CPU, per run: robust to a noisy machine
effs() { paste -d' ' <(vals "$1" "$2" throughput) <(vals "$1" "$2" server_cpu_pct) | awk '$2 > 0 { printf "%.1f\n", $1 / ($2 / 100) }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (!NR) { print "nan"; exit } m = int((NR + 1) / 2); print (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'; }
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.0f–%.0f", lo / 1000, hi / 1000; else print "–" }'; }
sum() { awk '{ s += $1 } END { print s + 0 }'; }
fmt_int() { awk -v v="$1" 'BEGIN { if (v == "nan") { print "–"; exit } s = sprintf("%.0f", v); r = ""; while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) } print s r }'; }
fmt1() { awk -v v="$1" 'BEGIN { if (v == "nan") print "–"; else if (v >= 100) printf "%.0f", v; else printf "%.1f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "–"; else printf "%.2f×", a / b }'; }

table="$results/table.md"
{
    echo "Tandem vs memcached, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r)."
    echo "memcached $(memcached -V 2>/dev/null | awk '{print $2}')$([ "$uses_redis" = 1 ] && echo "; Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') (AOF, appendfsync everysec; driven over RESP: GET, SET with EX; flags not checked)"); tandemd $tandemd_rev. Load average $load_start at start, $load_end at end."
    echo "Each cell is the median of $rounds runs of ${duration} s (after ${warmup} s warm-up) with a fresh server; 2 KB values, 50k keys, preloaded."
    echo "Load generator: \`tandem-load\`, $lg_threads thread(s), every reply verified. range = min–max req/s in thousands; CPU in % of one core (server: the server process; others': everything else on the machine, i.e. noise)."
    echo
    echo "| workload | server | req/s | range (k) | p50 µs | p99 µs | p99.9 µs | req/s vs memcached | p99 vs memcached | req/s vs Redis | errors | loadgen CPU | server CPU | k req per server CPU-s | others' CPU |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for w in "${workloads[@]}"; do
        mc_thr="$(vals "$w" memcached throughput | median)"
        mc_p99="$(vals "$w" memcached p99_us | median)"
        redis_thr="$(vals "$w" redis throughput | median)"
        redis_pair_thr="$(vals "$w" redis-pair throughput | median)"
        for s in "${server_list[@]}"; do
            thr="$(vals "$w" "$s" throughput | median)"
            p50="$(vals "$w" "$s" p50_us | median)"
            p99="$(vals "$w" "$s" p99_us | median)"
            p999="$(vals "$w" "$s" p999_us | median)"
            errs="$(vals "$w" "$s" errors | sum)"
            nfail="$(grep "\"wl\":\"$w\"" "$runs" | grep "\"server\":\"$s\"" | grep -c '"failed"')"
            [ "$nfail" -gt 0 ] && errs="$errs (+$nfail failed runs)"
            lcpu="$(vals "$w" "$s" loadgen_cpu_pct | median)"
            scpu="$(vals "$w" "$s" server_cpu_pct | median)"
            bcpu="$(vals "$w" "$s" background_cpu_pct | median)"
            if [ "$s" = memcached ]; then rt="1.00×"; rp="1.00×"; else rt="$(ratio "$thr" "$mc_thr")"; rp="$(ratio "$p99" "$mc_p99")"; fi
            [ "$mc_thr" = nan ] && { rt="–"; rp="–"; }
            # A pair against Redis's pair, a single node against Redis alone.
            case "$s" in
                *-pair) rr="$(ratio "$thr" "$redis_pair_thr")" ;;
                *) rr="$(ratio "$thr" "$redis_thr")" ;;
            esac
            echo "| $(wl_title "$w") | $(server_title "$s") | $(fmt_int "$thr") | $(vals "$w" "$s" throughput | minmax) | $(fmt1 "$p50") | $(fmt1 "$p99") | $(fmt1 "$p999") | $rt | $rp | $rr | $errs | $(fmt1 "$lcpu")% | $(fmt1 "$scpu")% | $(fmt1 "$(effs "$w" "$s" | median | awk '{ print ($1 == "nan") ? "nan" : $1 / 1000 }')") | $(fmt1 "$bcpu")% |"
        done
    done
    echo
    if printf '%s\n' "${server_list[@]}" | grep -qx tandem; then
        stops="$(grep '"server":"tandem"' "$runs" | sed -n 's/.*"stop_s":\([0-9.]*\).*/\1/p' | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "median %.2f s, max %.2f s", v[int((NR + 1) / 2)], v[NR] }')"
        bad="$(grep '"server":"tandem' "$runs" | grep -v '"stop_exit":"0"' | grep -c '"stop_exit"')"
        echo "Tandem graceful stop (SIGTERM to exit, persistence flushed) after each run: $stops; $bad stop(s) with a non-zero exit."
        echo
        echo "Tandem write-behind (medians): time to persist the preload before measuring; \`persistence_pending\` / \`persistence_lag_ms\` right after the measurement:"
        for w in "${workloads[@]}"; do
            echo "- $(wl_title "$w"): preload persisted in $(fmt1 "$(vals "$w" tandem settle_s | median)") s; at the end $(fmt_int "$(vals "$w" tandem server_persistence_pending_end | median)") pending, lag $(fmt_int "$(vals "$w" tandem server_persistence_lag_ms_end | median)") ms"
        done
        echo
    fi
    echo "Command: \`$cmdline\`"
} >"$table"

echo
cat "$table"
echo
echo "Per-run JSON: $runs"
echo "Server logs:  $results/logs/"
[ "$failures" -eq 0 ] || { log "$failures run(s) had errors or failed"; exit 1; }
exit 0
