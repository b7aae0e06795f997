#!/usr/bin/env bash
# A failover and the old primary's rejoin, under load, with N sessions of
# 2 KB (default 1,000,000): how much data the pair moves to be whole again
# (issue 18's goal: at most 1% of the data, no full resync).
#
#   1. a pair, a (primary) and b (backup), holds N items (stored through a;
#      b copies them once, by a full resync, as any new backup does);
#   2. a 90/10 get/set load runs on b's memcached port (reads served by b,
#      writes forwarded to the primary) for the whole run;
#   3. a is killed with SIGKILL: b promotes itself;
#   4. a starts again on its data directory, finds b primary, reconciles
#      and resyncs;
#   5. reported: the kind of resync (b's and a's counters), the bytes the
#      new link carried each way until a caught up (the kernel's
#      bytes_acked / bytes_received of that TCP connection, which include
#      the load's changes streamed meanwhile), the time each step took, and
#      the load's errors (only requests in flight during the failover may
#      fail).
#
#   Benchmarks/failover.sh                          # 1,000,000 items: ~5 GB of memory, ~8 GB of disk
#   Benchmarks/failover.sh --items 100000 --tandemd .build/release/tandemd
#
# Needs: a C compiler (the load generator), python3, ss (iproute2); Swift
# unless --tandemd is given. Every wait has a time limit; everything started
# is stopped on exit.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"
items=1000000
rate=4000
tandemd_bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --items) items="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --tandemd) tandemd_bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "failover: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ "$items" =~ ^[1-9][0-9]*$ && "$rate" =~ ^[1-9][0-9]*$ ]] || { echo "failover: --items and --rate must be positive integers" >&2; exit 2; }
mb=$(( items * 3 / 1000 + 256 ))   # -m: room for every item on both nodes

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tandem-failover.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

log() { printf '[failover %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { echo "failover: $*" >&2; exit 1; }

make -s -C "$here/loadgen" >&2 || die "loadgen build failed"
loadgen="$here/loadgen/tandem-load"
if [ -z "$tandemd_bin" ]; then
    (cd "$repo" && swift build -c release --product tandemd --scratch-path "$repo/.build-bench" >&2) || exit 2
    tandemd_bin="$(cd "$repo" && swift build -c release --scratch-path "$repo/.build-bench" --show-bin-path)/tandemd"
fi
command -v ss >/dev/null || die "ss not found (apt-get install iproute2)"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# until_true SECONDS WHAT COMMAND...: run COMMAND every 0.1 s until it succeeds
until_true() {
    local limit="$1" deadline=$((SECONDS + $1)) what="$2"; shift 2
    until "$@"; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${limit} s waiting until $what"
        sleep 0.1
    done
}
has_port() { [ -n "$(port_of "$1")" ]; }
stat_is() { [ "$(stat "$1" "$2")" = "$3" ]; }
caught_up() {  # caught_up PRIMARY_PORT BACKUP_PORT: the link up, the backup streaming, nothing unacknowledged
    [ "$(stat "$1" link_state)" = up ] && [ "$(stat "$1" peer_lag_changes)" = 0 ] \
        && [ "$(stat "$2" link_state)" = streaming ]
}
# link_bytes: the bytes b's wire port sent (acknowledged) and received over
# every connection open on it (a's replication link and its short status
# links), as "SENT RECEIVED"
link_bytes() {
    ss -tinH state established "( sport = :$b_wire )" 2>/dev/null | tr ' ' '\n' | awk -F: '
        $1 == "bytes_acked" { sent += $2 } $1 == "bytes_received" { received += $2 }
        END { printf "%d %d\n", sent, received }'
}

a_wire="$(free_port)"; b_wire="$(free_port)"
start_a() {
    "$tandemd_bin" -t 2 -m "$mb" -p 0 --wire-port "$a_wire" --peer "127.0.0.1:$b_wire" --node-name a \
        --data-dir "$tmp/a" >"$1" 2>&1 &
    apid=$!; pids+=("$apid")
}
start_a "$tmp/a1.log"
"$tandemd_bin" -t 2 -m "$mb" -p 0 --wire-port "$b_wire" --peer "127.0.0.1:$a_wire" --node-name b --role backup \
    --data-dir "$tmp/b" >"$tmp/b.log" 2>&1 &
bpid=$!; pids+=("$bpid")
until_true 120 "both nodes listen" bash -c "grep -q 'listening on' '$tmp/a1.log' && grep -q 'listening on' '$tmp/b.log'"
a_port="$(port_of "$tmp/a1.log")"; b_port="$(port_of "$tmp/b.log")"
until_true 60 "a leads" stat_is "$a_port" role primary
until_true 60 "b follows a" stat_is "$b_port" role backup

log "storing $items items of 2 KB through a"
started="$(now)"
"$loadgen" --port "$a_port" --keys "$items" --value-size 2048 --preload --settle --requests 1000 --connections 8 \
    --max-time 1200 --json >/dev/null || die "preload failed"
until_true 600 "b has every item" caught_up "$a_port" "$b_port"
log "stored and replicated in $(since "$started") s"
full_before="$(stat "$b_port" full_resyncs)"

# The load: on b for the whole run, bounded by --max-time.
"$loadgen" --port "$b_port" --keys "$items" --value-size 2048 --get 90 --set 10 --connections 20 --rate "$rate" \
    --duration 60 --max-time 90 --drain-timeout 10 --json >"$tmp/load.json" 2>"$tmp/load.err" &
load_pid=$!; pids+=("$load_pid")
sleep 5

log "kill -9 a (the primary)"
killed="$(now)"
kill -KILL "$apid"
until_true 30 "b is primary" stat_is "$b_port" role primary
promoted_s="$(since "$killed")"
log "b primary after $promoted_s s"
sleep 3

log "a starts again on its data"
rejoined="$(now)"
start_a "$tmp/a2.log"
until_true 600 "a listens" has_port "$tmp/a2.log"
a_port="$(port_of "$tmp/a2.log")"
until_true 600 "a follows b and caught up" caught_up "$b_port" "$a_port"
rejoin_s="$(since "$rejoined")"
read -r sent received < <(link_bytes)
log "a caught up $rejoin_s s after its start"

b_full="$(stat "$b_port" full_resyncs)"; b_partial="$(stat "$b_port" partial_resyncs)"
b_after="$(stat "$b_port" partial_resyncs_after_promotion)"
a_full="$(stat "$a_port" full_resyncs)"; a_partial="$(stat "$a_port" partial_resyncs)"
reconciled="$(stat "$b_port" reconciled_changes)"; conflicts="$(stat "$b_port" reconcile_conflicts)"
a_items="$(stat "$a_port" curr_items)"; b_items="$(stat "$b_port" curr_items)"

wait "$load_pid" 2>/dev/null
jf() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$tmp/load.json"; }
data_bytes=$(( items * 2048 ))
moved=$(( ${sent:-0} + ${received:-0} ))

cat <<EOF
| $items sessions of 2 KB, 90/10 load at $rate req/s on b | |
|---|--:|
| b primary after a's kill -9 | $promoted_s s |
| a caught up, from its start | $rejoin_s s |
| resyncs b served as primary (full / partial / partial across the promotion) | $b_full / $b_partial / $b_after (full before the kill: $full_before) |
| resyncs a did as backup (full / partial) | $a_full / $a_partial |
| versions a sent to reconcile (conflicts) | $reconciled ($conflicts) |
| bytes on the new link until a caught up: b → a / a → b | ${sent:-?} / ${received:-?} |
| of the data ($data_bytes bytes) | $(awk -v m="$moved" -v d="$data_bytes" 'BEGIN { printf "%.3f%%", 100 * m / d }') |
| items held: a / b | $a_items / $b_items |
| load: requests, errors | $(jf requests) , $(jf errors) |
EOF
if [ -s "$tmp/load.err" ]; then
    echo
    echo "the load's errors, by message:"
    sed 's/[0-9][0-9]*/N/g' "$tmp/load.err" | sort | uniq -c | sort -rn | head -10
fi
