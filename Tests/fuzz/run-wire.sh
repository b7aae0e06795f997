#!/usr/bin/env bash
# Builds a libFuzzer binary over WireFrameDecoder and WireMessage parsing and
# runs it for a bounded time.
#
#   Tests/fuzz/run-wire.sh [seconds] [extra libFuzzer flags...]
#
# FUZZ_CONFIG=debug builds without optimisation (slower, more readable traces).
#
# WireProtocol and its dependencies are built by SwiftPM with
# `--sanitize=fuzzer --sanitize=address` into .build-fuzz-wire (gitignored;
# separate from the memcached fuzzer's .build-fuzz so both can run at once),
# then Tests/fuzz/WireFrameFuzz.swift is compiled and linked against those
# objects with the same flags SwiftPM used. Crashing inputs are written to
# .build-fuzz-wire/fuzz-artifacts/; reproduce one with
#   .build-fuzz-wire/wire-frame-fuzz-release <file>
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRATCH="${FUZZ_SCRATCH_PATH:-$ROOT/.build-fuzz-wire}"
CONFIG="${FUZZ_CONFIG:-release}"
SECONDS_TO_RUN="${1:-30}"
shift || true
BIN="$SCRATCH/wire-frame-fuzz-$CONFIG"

cd "$ROOT"
swift build --scratch-path "$SCRATCH" -c "$CONFIG" --target WireProtocol --sanitize=fuzzer --sanitize=address

# The -I, -Xcc (C module maps) and module cache flags SwiftPM compiled WireProtocol with.
FLAGS_FILE="$SCRATCH/fuzz-swiftc-flags.txt"
python3 - "$SCRATCH/$CONFIG.yaml" >"$FLAGS_FILE" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
start = text.index('"C.WireProtocol-')
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

# Every object of the WireProtocol closure (only that target is built here).
mapfile -t OBJECTS < <(find -L "$SCRATCH/$CONFIG" -maxdepth 3 -name '*.o' -path '*.build/*' | sort)

if [ "$CONFIG" = release ]; then OPT=-O; else OPT=-Onone; fi
swiftc -module-name WireFrameFuzz -parse-as-library "$OPT" -g \
    -sanitize=fuzzer,address "${FLAGS[@]}" \
    Tests/fuzz/WireFrameFuzz.swift "${OBJECTS[@]}" -o "$BIN"

CORPUS="$SCRATCH/fuzz-corpus"
ARTIFACTS="$SCRATCH/fuzz-artifacts"
mkdir -p "$CORPUS" "$ARTIFACTS"
# Seeds: a byte of split seed, a byte of message type choice, then frames.
seed() { printf "$2" >"$CORPUS/seed-$1"; }
# ping, request id 7 (Protocol.md 1.6)
seed ping '\x07\x05\x00\x00\x00\x10\x00\x10\x00\x00\x00\x00\x00\x07\x00\x00\x01\xa2\x01\xa0\x1c\x80'
# changes: one upsert (Protocol.md 1.6), then an ack
seed changes '\x03\x0c\x00\x00\x00\x34\x00\x25\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x2a\x01\x00\x00\x00\x01\x6b\x00\x00\x00\x02\x68\x69\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x10\x00\x26\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a'
# hello: magic, versions 1-1, peer, name "a", 16-byte nonce
seed hello '\x01\x00\x00\x00\x00\x2a\x00\x01\x00\x00\x00\x00\x00\x01\x54\x4e\x44\x4d\x00\x01\x00\x01\x02\x00\x00\x00\x01\x61\x00\x00\x00\x10\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f'
# properties: one pair, and a statusRequest
seed properties '\x09\x12\x00\x00\x00\x19\x00\x42\x00\x01\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04\x72\x6f\x6c\x65\x00\x00\x00\x01\x70\x00\x00\x00\x08\x00\x40\x00\x00\x00\x00\x00\x03'

echo "fuzzing for ${SECONDS_TO_RUN}s: $BIN"
"$BIN" "$CORPUS" -max_len=4096 -max_total_time="$SECONDS_TO_RUN" \
    -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "$@"
