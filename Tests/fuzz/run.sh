#!/usr/bin/env bash
# Builds a libFuzzer binary over MemcacheDecoder and runs it for a bounded time.
#
#   Tests/fuzz/run.sh [seconds] [extra libFuzzer flags...]
#
# FUZZ_CONFIG=debug builds without optimisation (slower, more readable traces).
#
# MemcacheProtocol and its dependencies are built by SwiftPM with
# `--sanitize=fuzzer --sanitize=address` into .build-fuzz (gitignored), then
# Tests/fuzz/MemcacheDecoderFuzz.swift is compiled and linked against those
# objects with the same flags SwiftPM used. Crashing inputs are written to
# .build-fuzz/fuzz-artifacts/; reproduce one with
#   .build-fuzz/memcache-decoder-fuzz-release <file>
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRATCH="${FUZZ_SCRATCH_PATH:-$ROOT/.build-fuzz}"
CONFIG="${FUZZ_CONFIG:-release}"
SECONDS_TO_RUN="${1:-30}"
shift || true
BIN="$SCRATCH/memcache-decoder-fuzz-$CONFIG"

cd "$ROOT"
swift build --scratch-path "$SCRATCH" -c "$CONFIG" --target MemcacheProtocol --sanitize=fuzzer --sanitize=address

# The -I, -Xcc (C module maps) and module cache flags SwiftPM compiled MemcacheProtocol with.
FLAGS_FILE="$SCRATCH/fuzz-swiftc-flags.txt"
python3 - "$SCRATCH/$CONFIG.yaml" >"$FLAGS_FILE" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
start = text.index('"C.MemcacheProtocol-')
match = re.search(r'^\s*args: (\[.*\])$', text[start:], re.MULTILINE)
args = json.loads(match.group(1))
keep = []
i = 0
while i < len(args):
    a = args[i]
    if a in ("-I", "-Xcc", "-module-cache-path", "-target"):
        keep += [a, args[i + 1]]
        i += 2
        continue
    if a.startswith("-D"):
        keep.append(a)
    i += 1
print("\n".join(keep))
PY
mapfile -t FLAGS <"$FLAGS_FILE"

# Every object of the MemcacheProtocol closure (only that target is built here).
mapfile -t OBJECTS < <(find -L "$SCRATCH/$CONFIG" -maxdepth 3 -name '*.o' -path '*.build/*' | sort)

if [ "$CONFIG" = release ]; then OPT=-O; else OPT=-Onone; fi
swiftc -module-name MemcacheDecoderFuzz -parse-as-library "$OPT" -g \
    -sanitize=fuzzer,address "${FLAGS[@]}" \
    Tests/fuzz/MemcacheDecoderFuzz.swift "${OBJECTS[@]}" -o "$BIN"

CORPUS="$SCRATCH/fuzz-corpus"
ARTIFACTS="$SCRATCH/fuzz-artifacts"
mkdir -p "$CORPUS" "$ARTIFACTS"
# Seeds: a byte of configuration, a byte of split seed, then a command stream.
seed() { printf "$2" >"$CORPUS/seed-$1"; }
seed get '\x00\x07get a b c\r\ngets k\r\ngat 10 k\r\n'
seed set '\x01\x03set k 1 2 3\r\nabc\r\ncas k 0 0 1 5 noreply\r\nx\r\n'
seed other '\x02\x05delete k 0 noreply\r\nincr k 5\r\ntouch k 1\r\nflush_all 0\r\nversion\r\nstats items\r\nverbosity 1\r\n'
seed meta '\x03\x09mg k v c f k O123 T30 N5 R3 E4 C5\r\nms a2V5 2 b F1 MS I\r\nhi\r\nmd k q x\r\nma k D3 J4 MD\r\nmn\r\nme k\r\n'
seed bad '\x00\x01set k x 0 3\r\nabc\r\nms k 3 Z\r\nabc\r\nset k 0 0 3\r\nabcXYget a\r\n'

echo "fuzzing for ${SECONDS_TO_RUN}s: $BIN"
"$BIN" "$CORPUS" -dict="$ROOT/Tests/fuzz/memcache.dict" -max_len=8192 -max_total_time="$SECONDS_TO_RUN" \
    -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "$@"
