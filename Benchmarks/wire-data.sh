#!/usr/bin/env bash
# The data path side by side on one tandemd: TandemClient's typed get/set over
# the wire protocol, and the memcached text protocol through a pipelined
# client, the same work (Benchmarks/wire-data/WireDataBench.swift says which).
#
#   Benchmarks/wire-data.sh                      # 5 s per run, 4 connections x 16 in flight
#   Benchmarks/wire-data.sh --seconds 10 --connections 8 --in-flight 8
#   Benchmarks/wire-data.sh --no-build           # reuse the last release build in .build-bench
#
# Builds tandemd and wire-data-bench in release (.build-bench), starts
# `tandemd -t 2 -m 1024 -p <free> --wire-port <free> --data-dir <fresh>`,
# runs the benchmark (two rounds, alternating the protocols) and prints a
# Markdown table. The benchmark and the node share the machine's cores.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"
seconds=5
connections=4
inflight=16
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --in-flight) inflight="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "wire-data: unknown option $1" >&2; exit 1 ;;
    esac
done

scratch="$repo/.build-bench"
if [ "$build" = 1 ]; then
    echo "wire-data: building tandemd and wire-data-bench (release, $scratch)" >&2
    (cd "$repo" && swift build -c release --scratch-path "$scratch" --product tandemd >&2)
    (cd "$repo" && swift build -c release --scratch-path "$scratch" --product wire-data-bench >&2)
fi
bin="$(cd "$repo" && swift build -c release --scratch-path "$scratch" --show-bin-path)"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tmp="$(mktemp -d)"
port="$(free_port)"
wire="$(free_port)"
"$bin/tandemd" -t 2 -m 1024 -p "$port" --wire-port "$wire" --data-dir "$tmp/data" >"$tmp/tandemd.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
deadline=$((SECONDS + 60))
until port_open "$port" && port_open "$wire"; do
    kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || { echo "wire-data: tandemd did not start" >&2; cat "$tmp/tandemd.log" >&2; exit 2; }
    sleep 0.05
done
echo "# tandemd $(cd "$repo" && git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
# Four timed runs, the stores before them and the connections: a run that
# hangs (a node that stopped answering) is ended rather than waited for.
timeout "$((seconds * 4 + 120))" "$bin/wire-data-bench" 127.0.0.1 "$port" "$wire" "$seconds" "$connections" "$inflight"
