#!/usr/bin/env bash
# The writer's CPU per persisted write, per thread, for two or more tandemd
# binaries in alternation, on (c) of side-by-side.sh (100% set, 2 KB values,
# 50,000 keys, 50 connections).
#
#   Benchmarks/writer-cpu.sh --rounds 3 --duration 10 before=/path/tandemd after=/path/tandemd
#   Benchmarks/writer-cpu.sh --workload e ...   # (e) msm-shaped, 25,000 sessions
#   Benchmarks/writer-cpu.sh --ttl 1 ...        # (c) whose every set expires after 1 s
#
# Each run starts the binary fresh (-t 2 -m 1024, a new data directory),
# drives (c) with the load generator, waits until nothing is pending, then
# reads utime+stime of the writer and checkpointer threads
# (`/proc/<pid>/task/*/stat`) and divides by every set the node stored
# (`cmd_set`, the preload's included: the writer persisted all of them;
# for (e) that is per write, a request being about two of them).
# Prints one line per run and the medians per binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds=3
duration=10
workload=c
ttl=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --workload) workload="$2"; shift 2 ;;
        --ttl) ttl="$2"; shift 2 ;;
        *=*) break ;;
        *) echo "writer-cpu: unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -ge 1 ] || { echo "writer-cpu: name=binary arguments missing" >&2; exit 2; }
make -s -C "$here/loadgen" CC="$(command -v cc || command -v gcc)" >&2
loadgen="$here/loadgen/tandem-load"
tick=$(getconf CLK_TCK)
work="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

stat_of() {  # port name -> value
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(65536)
for line in data.decode().split("\r\n"):
    parts = line.split(" ")
    if len(parts) >= 3 and parts[1] == sys.argv[2]:
        print(parts[2])
PY
}
thread_ticks() {  # pid -> "comm ticks" per thread other than the event loops and the main thread, most CPU first
    local t
    for t in /proc/"$1"/task/*; do
        [ "${t##*/}" = "$1" ] && continue
        awk -v c="$(cat "$t/comm")" '{ print c "\t" $14 + $15 }' "$t/stat"
    done | grep -v '^NIO-ELT' | sort -t "$(printf '\t')" -k2,2nr
}

results="$work/results"
for round in $(seq 1 "$rounds"); do
    for pair in "$@"; do
        name="${pair%%=*}"; bin="${pair#*=}"
        data="$work/data-$name-$round"; log="$work/log-$name-$round"
        "$bin" -t 2 -m 1024 -p 0 --data-dir "$data" >"$log" 2>&1 &
        pid=$!
        port=""
        for _ in $(seq 1 500); do
            port="$(grep -oE 'listening on [^ ]+:[0-9]+' "$log" | head -1 | grep -oE '[0-9]+$' || true)"
            [ -n "$port" ] && break
            sleep 0.02
        done
        [ -n "$port" ] || { echo "writer-cpu: $bin did not start" >&2; cat "$log" >&2; exit 1; }
        case "$workload" in
            c) shape="--workload mix --set 100 --keys 50000 --ttl $ttl" ;;
            e) shape="--workload msm --sessions 25000" ;;
            *) echo "writer-cpu: --workload is c or e" >&2; exit 2 ;;
        esac
        # shellcheck disable=SC2086
        "$loadgen" --port "$port" $shape --connections 50 --pipeline 1 \
            --value-size 2048 --preload --settle --threads 2 --warmup 1 --duration "$duration" --json >"$work/out.json"
        for _ in $(seq 1 600); do
            [ "$(stat_of "$port" persistence_pending)" = 0 ] && break
            sleep 0.05
        done
        sets="$(stat_of "$port" cmd_set)"
        # Builds before the threads named themselves show them under the name
        # of the thread that started them: the writer is the busiest thread
        # besides the event loops and the main thread, the checkpointer the next.
        threads="$(thread_ticks "$pid")"
        echo "$name round $round threads: $(echo "$threads" | head -3 | tr '\t\n' ': ')" >&2
        writer="$(echo "$threads" | sed -n 1p | cut -f2)"
        checkpointer="$(echo "$threads" | sed -n 2p | cut -f2)"
        process="$(awk '{ print $14 + $15 }' /proc/"$pid"/stat)"
        segments="$(stat_of "$port" persistence_segments)"
        kill "$pid"; wait "$pid" || true; pid=""
        file=$(( $(stat -c %s "$data/tandem.sqlite3") ))
        rate="$(grep -oE '"throughput":[0-9.]+' "$work/out.json" | head -1 | cut -d: -f2)"
        line="$(awk -v n="$name" -v r="$round" -v s="$sets" -v w="$writer" -v c="$checkpointer" -v p="$process" -v t="$tick" \
            -v f="$file" -v g="${segments:-}" -v o="${rate:-?}" 'BEGIN {
            printf "%s round %d: sets %d, req/s %s, writer %.2f us/write, checkpointer %.2f us/write, process %.2f us/write, file %.0f MB%s\n",
                n, r, s, o, w * 1e6 / t / s, c * 1e6 / t / s, p * 1e6 / t / s, f / 1048576, (g == "" ? "" : ", segments " g) }')"
        echo "$line"
        echo "$line" >>"$results"
    done
done
echo "medians:"
for pair in "$@"; do
    name="${pair%%=*}"
    for field in writer checkpointer process; do
        grep "^$name round" "$results" | grep -oE "$field [0-9.]+" | awk '{ print $2 }' | sort -n \
            | awk -v n="$name" -v f="$field" '{ v[NR] = $1 } END { printf "  %s %s: %.2f us/write\n", n, f, v[int((NR + 1) / 2)] }'
    done
done
