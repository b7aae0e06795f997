#!/usr/bin/env bash
# Sessions beyond RAM: more data than -m, side by side with memcached's
# extstore (issue 17's first goal). For each server, started fresh:
#
#   1. store N sessions of 2 KB (default 64,000 at -m 32: 4x the memory);
#   2. uniform random gets over every key (50 connections): throughput,
#      latency, and how many of the stored sessions miss;
#   3. the server's resident memory (VmRSS) after the gets;
#   4. the items the server still holds (`curr_items`), and for Tandem
#      (extstore keeps nothing across a restart) again after a SIGTERM and a
#      start on the same data directory.
#
#   Benchmarks/beyond-ram.sh                       # 64,000 x 2 KB at -m 32, 3 rounds x 10 s
#   Benchmarks/beyond-ram.sh --items 200000 --memory 64 --rounds 1
#   Benchmarks/beyond-ram.sh --tandemd .build/release/tandemd
#   Benchmarks/beyond-ram.sh --items 5000000 --memory 1024 --rounds 1 --servers tandem   # the scale goal
#
# Servers:
#   memcached-extstore  memcached -t 2 -m M -o ext_path=<tmp>/extstore:<4x data>
#   tandem              tandemd -t 2 -m M --data-dir <fresh dir>
# Misses are counted, not errors (--allow-misses): a cache may forget; the
# point of the comparison is how much each one forgot.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

items=64000
memory=32
duration=10
rounds=3
tandemd_bin=""
results=""
servers="memcached-extstore tandem"

usage() {
    cat <<EOF
usage: Benchmarks/beyond-ram.sh [options]
  --items N        sessions of 2 KB to store (default $items)
  --memory MB      -m for both servers (default $memory)
  --duration S     measured seconds of gets per run (default $duration)
  --rounds R       rounds, servers alternating within each (default $rounds)
  --tandemd PATH   this tandemd instead of a release build (.build-bench)
  --servers LIST   comma-separated, of memcached-extstore,tandem (default both)
  --results DIR    where runs.jsonl, logs and table.md go (default Benchmarks/results/beyond-ram-<date-time>)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --items) items="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --tandemd) tandemd_bin="$2"; shift 2 ;;
        --servers) servers="${2//,/ }"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "beyond-ram: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$items" =~ ^[1-9][0-9]*$ && "$memory" =~ ^[1-9][0-9]*$ && "$rounds" =~ ^[1-9][0-9]*$ ]] \
    || { echo "beyond-ram: --items, --memory and --rounds must be positive integers" >&2; exit 2; }
awk -v d="$duration" 'BEGIN { exit !(d > 0 && d <= 3600) }' || { echo "beyond-ram: --duration must be in (0, 3600]" >&2; exit 2; }

log() { printf '[beyond-ram %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v memcached >/dev/null || { echo "beyond-ram: memcached not found (apt-get install memcached)" >&2; exit 2; }
timeout 300 make -s -C "$here/loadgen" >&2 || { echo "beyond-ram: loadgen build failed" >&2; exit 2; }
loadgen="$here/loadgen/tandem-load"
if [ -z "$tandemd_bin" ]; then
    scratch="$repo/.build-bench"
    log "building tandemd (release, scratch path .build-bench)"
    (cd "$repo" && timeout 3600 swift build -c release --product tandemd --scratch-path "$scratch" >&2) \
        || { echo "beyond-ram: tandemd build failed" >&2; exit 2; }
    tandemd_bin="$(cd "$repo" && swift build -c release --scratch-path "$scratch" --show-bin-path)/tandemd"
fi
[ -x "$tandemd_bin" ] || { echo "beyond-ram: no tandemd at $tandemd_bin" >&2; exit 2; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tandem-beyond-ram.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null
    fi
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

[ -n "$results" ] || results="$here/results/beyond-ram-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results/logs"
runs="$results/runs.jsonl"
: >"$runs"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME LOGFILE DATADIR -> server_pid, server_port
start() {
    local name="$1" logf="$2" data="$3" deadline
    server_pid=""; server_port=""
    case "$name" in
        memcached-extstore)
            server_port="$(free_port)" || return 1
            local user=()
            [ "$(id -u)" -eq 0 ] && user=(-u root)
            # Room for four times the data on disk, as Tandem's log may take up to twice.
            local ext_mb=$(( items * 2 * 4 / 1024 + 256 ))
            memcached -t 2 -m "$memory" -p "$server_port" -l 127.0.0.1 -U 0 "${user[@]}" \
                -o "ext_path=$data/extstore:${ext_mb}m" >>"$logf" 2>&1 &
            server_pid=$!
            deadline=$((SECONDS + 20))
            until port_open "$server_port"; do
                kill -0 "$server_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
        tandem)
            local before
            before=$(wc -c <"$logf" 2>/dev/null || echo 0)
            "$tandemd_bin" -t 2 -m "$memory" -p 0 --data-dir "$data" >>"$logf" 2>&1 &
            server_pid=$!
            deadline=$((SECONDS + 120))
            until server_port="$(tail -c +"$((before + 1))" "$logf" | sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' | head -1)" && [ -n "$server_port" ]; do
                kill -0 "$server_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
                sleep 0.05
            done
            ;;
    esac
}

stop() {
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 1200); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=""
}

gets() {  # gets PORT LABEL [--preload] -> one JSON line on stdout
    "$loadgen" --port "$1" --workload mix --get 100 --keys "$items" --value-size 2048 --connections 50 \
        --duration "$duration" --warmup 1 --allow-misses --settle --server-pid "$server_pid" --json --label "$2" "${@:3}"
}

jf() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }

failures=0
for r in $(seq "$rounds"); do
    for s in $servers; do
        logf="$results/logs/$r-$s.log"; : >"$logf"
        data="$tmp/$s-$r"; mkdir -p "$data"
        if ! start "$s" "$logf" "$data"; then
            log "round $r $s: server did not start (log: $logf)"; failures=$((failures + 1)); stop; continue
        fi
        # The loadgen's preload stores every key before the measured gets.
        out="$(gets "$server_port" "$r/$s" --preload)"
        rss="$(rss_mb "$server_pid")"
        held="$(stat "$server_port" curr_items)"
        held_after_restart="n/a"
        restart_s="n/a"
        rss_after_restart="n/a"
        if [ "$s" = tandem ]; then
            stop
            # From the start of the process to the port answering: the
            # headers are in, the values follow in the background.
            restart_started=$(date +%s.%N)
            if start "$s" "$logf" "$data"; then
                held_after_restart="$(stat "$server_port" curr_items)"
                restart_s="$(awk -v a="$restart_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
                rss_after_restart="$(rss_mb "$server_pid")"
            fi
        fi
        stop
        [ -n "$out" ] || { log "round $r $s: load generator failed"; failures=$((failures + 1)); continue; }
        printf '%s\n' "${out%\}},\"server\":\"$s\",\"round\":$r,\"rss_mb\":${rss:-0},\"items_held\":\"$held\",\"items_after_restart\":\"$held_after_restart\",\"restart_s\":\"$restart_s\",\"rss_after_restart_mb\":\"$rss_after_restart\"}" >>"$runs"
        log "round $r $(printf '%-18s' "$s") $(printf '%8.0f' "$(jf "$out" throughput)") gets/s  p50 $(jf "$out" p50_us) us  p99 $(jf "$out" p99_us) us  misses $(jf "$out" get_misses) of $(jf "$out" gets)  RSS ${rss} MB  items held $held of $items, after a restart: $held_after_restart (serving after ${restart_s} s, RSS ${rss_after_restart} MB)"
    done
done

# ---------------------------------------------------------------- table
vals() { grep "\"server\":\"$1\"" "$runs" | sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (!NR) { print "nan"; exit } m = int((NR + 1) / 2); print (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "–"; else printf "%.2f×", a / b }'; }
pct() { awk -v m="$1" -v g="$2" 'BEGIN { if (g == "nan" || g == 0) print "–"; else printf "%.1f%%", 100 * m / g }'; }
ext_thr="$(vals memcached-extstore throughput | median)"
hits() { awk -v t="$1" -v m="$2" -v g="$3" 'BEGIN { if (t == "nan" || g == "nan" || g == 0) print "nan"; else printf "%.0f", t * (1 - m / g) }'; }
ext_hits="$(hits "$ext_thr" "$(vals memcached-extstore get_misses | median)" "$(vals memcached-extstore gets | median)")"
{
    echo "Beyond RAM: $items sessions of 2 KB, -m $memory, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; medians of $rounds runs of ${duration} s of uniform gets (50 connections)."
    echo "memcached $(memcached -V | awk '{print $2}') with extstore; tandemd $tandemd_bin."
    echo
    echo "A hit is a get that found its session: gets/s × (1 − misses)."
    echo
    echo "| server | gets/s | vs extstore | hits/s | vs extstore | p50 µs | p99 µs | misses | items held | after restart | serving after restart | RSS MB | RSS after restart |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for s in $servers; do
        thr="$(vals "$s" throughput | median)"
        h="$(hits "$thr" "$(vals "$s" get_misses | median)" "$(vals "$s" gets | median)")"
        echo "| $s | $(printf '%.0f' "$thr") | $(ratio "$thr" "$ext_thr") | $h | $(ratio "$h" "$ext_hits") | $(vals "$s" p50_us | median) | $(vals "$s" p99_us | median) | $(pct "$(vals "$s" get_misses | median)" "$(vals "$s" gets | median)") | $(vals "$s" items_held | median) | $(vals "$s" items_after_restart | head -1) | $(vals "$s" restart_s | head -1) s | $(vals "$s" rss_mb | median) | $(vals "$s" rss_after_restart_mb | head -1) |"
    done
    echo
    echo "Command: Benchmarks/beyond-ram.sh --items $items --memory $memory --duration $duration --rounds $rounds --servers ${servers// /,}"
} >"$results/table.md"
echo
cat "$results/table.md"
[ "$failures" -eq 0 ] || exit 1
exit 0
