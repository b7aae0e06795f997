#!/usr/bin/env bash
# Capacity figures for N items of 2 KB (default 1,000,000), Tandem beside memcached:
#   - resident memory of tandemd and of memcached holding the same items;
#   - recovery: tandemd stopped with SIGTERM and started again on its data,
#     then again with the page cache dropped (as root);
#   - full resync: an empty backup joins the primary that holds them.
#
#   Benchmarks/capacity.sh                      # 1,000,000 items (about 4 GB of disk, 5 GB of memory, 5 minutes)
#   Benchmarks/capacity.sh --items 200000 --tandemd .build/release/tandemd
#
# Needs what side-by-side.sh needs (memcached, a C compiler; Swift unless
# --tandemd is given). Every wait has a time limit; everything started is
# stopped on exit.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"
items=1000000
tandemd_bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --items) items="$2"; shift 2 ;;
        --tandemd) tandemd_bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "capacity: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ "$items" =~ ^[1-9][0-9]*$ ]] || { echo "capacity: --items must be a positive integer" >&2; exit 2; }
mb=$(( items * 3 / 1000 + 256 ))   # -m for both servers: room for every item

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tandem-capacity.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log() { printf '[capacity %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

make -s -C "$here/loadgen" >&2 || { echo "capacity: loadgen build failed" >&2; exit 2; }
loadgen="$here/loadgen/tandem-load"
if [ -z "$tandemd_bin" ]; then
    (cd "$repo" && swift build -c release --product tandemd --scratch-path "$repo/.build-bench" >&2) || exit 2
    tandemd_bin="$(cd "$repo" && swift build -c release --scratch-path "$repo/.build-bench" --show-bin-path)/tandemd"
fi

# wait_log FILE PATTERN SECONDS PID
wait_log() {
    local deadline=$((SECONDS + $3))
    until grep -q "$2" "$1"; do
        kill -0 "$4" 2>/dev/null && [ $SECONDS -lt $deadline ] || { echo "capacity: timed out waiting for '$2' in $1" >&2; tail -5 "$1" >&2; exit 1; }
        sleep 0.1
    done
}
# stop PID: SIGTERM and wait (at most 120 s)
stop() {
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 1200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null
}
preload() {
    "$loadgen" --port "$1" --keys "$items" --value-size 2048 --preload --settle --requests 1000 --connections 8 \
        --max-time 600 --json >/dev/null || { echo "capacity: preload failed" >&2; exit 1; }
}

# ---------------------------------------------------------------- memcached
mport="$(free_port)"
user=(); [ "$(id -u)" -eq 0 ] && user=(-u root)
memcached -t 2 -m "$mb" -p "$mport" -l 127.0.0.1 -U 0 "${user[@]}" >"$tmp/memcached.log" 2>&1 &
mpid=$!; pids+=("$mpid")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null && break; sleep 0.05; done
log "storing $items items of 2 KB in memcached"
preload "$mport"
mc_rss="$(rss_mb "$mpid")"
stop "$mpid"

# ---------------------------------------------------------------- Tandem: memory, recovery
a_wire="$(free_port)"; b_wire="$(free_port)"
start_a() {
    "$tandemd_bin" -t 2 -m "$mb" -p 0 --wire-port "$a_wire" --peer "127.0.0.1:$b_wire" --node-name a \
        --data-dir "$tmp/a" >"$1" 2>&1 &
    apid=$!; pids+=("$apid")
    wait_log "$1" "listening on" 600 "$apid"
}
start_a "$tmp/a1.log"
log "storing $items items of 2 KB in tandemd"
preload "$(port_of "$tmp/a1.log")"
t_rss="$(rss_mb "$apid")"
stop "$apid"
disk_mb="$(du -sm "$tmp/a" | cut -f1)"

# Each timed phase starts with the previous phase's writes on disk (sync):
# otherwise the kernel writing back gigabytes of dirty pages of the phase
# before is timed with it.
sync
start_a "$tmp/a2.log"
recovery_s="$(sed -n 's/.*seconds=\([0-9.]*\) .*recovery done.*/\1/p' "$tmp/a2.log" | head -1)"
t_rss_recovered="$(rss_mb "$apid")"

# Recovery again with the file out of the page cache (as after a reboot),
# when this user may drop the caches.
recovery_cold_s="not measured (needs root to drop the page cache)"
if [ -w /proc/sys/vm/drop_caches ]; then
    stop "$apid"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start_a "$tmp/a3.log"
    recovery_cold_s="$(sed -n 's/.*seconds=\([0-9.]*\) .*recovery done.*/\1/p' "$tmp/a3.log" | head -1) s"
fi
sync

# ---------------------------------------------------------------- full resync
log "an empty backup joins"
"$tandemd_bin" -t 2 -m "$mb" -p 0 --wire-port "$b_wire" --peer "127.0.0.1:$a_wire" --node-name b --role backup \
    --data-dir "$tmp/b" >"$tmp/b.log" 2>&1 &
bpid=$!; pids+=("$bpid")
wait_log "$tmp/b.log" "full resync done" 600 "$bpid"
resync_s="$(sed -n 's/.*seconds=\([0-9.]*\) .*full resync done.*/\1/p' "$tmp/b.log" | head -1 | awk '{ printf "%.2f", $1 }')"
b_rss="$(rss_mb "$bpid")"
stop "$bpid"; stop "$apid"

cat <<EOF
| $items items of 2 KB | Tandem | memcached | ratio |
|---|--:|--:|--:|
| resident memory, items stored | $t_rss MB | $mc_rss MB | $(awk -v a="$t_rss" -v b="$mc_rss" 'BEGIN { printf "%.2f×", a / b }') |
| resident memory after a restart (recovered) | $t_rss_recovered MB | | $(awk -v a="$t_rss_recovered" -v b="$mc_rss" 'BEGIN { printf "%.2f×", a / b }') |
| recovery at start (SIGTERM, start again) | $recovery_s s | | |
| recovery with the file not in the page cache | $recovery_cold_s | | |
| full resync of an empty backup | $resync_s s (backup: $b_rss MB) | | |
| data directory | $disk_mb MB | | |
EOF
