#!/usr/bin/env bash
# Builds a libFuzzer binary over one of Tandem's decoders and runs it for a
# bounded time.
#
#   Tests/fuzz/run.sh memcache [seconds] [extra libFuzzer flags...]   # MemcacheDecoder
#   Tests/fuzz/run.sh wire [seconds] [extra libFuzzer flags...]       # WireFrameDecoder + WireMessage parsing
#   Tests/fuzz/run.sh msm [seconds] [extra libFuzzer flags...]        # MsmValue.decode + JavaObjectStream
#
# FUZZ_CONFIG=debug builds without optimisation (slower, more readable traces).
#
# The decoder's target and its dependencies are built by SwiftPM with
# `--sanitize=fuzzer --sanitize=address` into .build-fuzz-<name> (gitignored;
# one per fuzzer, so both can run at once), then the harness in Tests/fuzz is
# compiled and linked against those objects with the same flags SwiftPM used.
# Crashing inputs are written to .build-fuzz-<name>/fuzz-artifacts/; reproduce
# one by running the binary the script names with the file as its argument.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NAME="${1:-}"
case "$NAME" in
    memcache) TARGET=MemcacheProtocol; HARNESS=MemcacheDecoderFuzz; MAX_LEN=8192; DICT=(-dict="$ROOT/Tests/fuzz/memcache.dict"); EXTRA=() ;;
    wire) TARGET=WireProtocol; HARNESS=WireFrameFuzz; MAX_LEN=4096; DICT=(); EXTRA=() ;;
    # SwiftPM passes --sanitize=fuzzer and --sanitize=address to swiftc as two
    # -sanitize= flags, of which swiftc keeps the last: the objects get ASan but no
    # coverage. A combined flag after them restores coverage (checked with
    # `objdump -h` for __sancov sections) for this target, which has no C dependencies.
    msm) TARGET=SessionInspection; HARNESS=MsmValueFuzz; MAX_LEN=4096; DICT=(); EXTRA=(-Xswiftc -sanitize=fuzzer,address) ;;
    *) echo "usage: Tests/fuzz/run.sh memcache|wire|msm [seconds] [libFuzzer flags...]" >&2; exit 2 ;;
esac
shift
SCRATCH="${FUZZ_SCRATCH_PATH:-$ROOT/.build-fuzz-$NAME}"
CONFIG="${FUZZ_CONFIG:-release}"
SECONDS_TO_RUN="${1:-30}"
shift || true
BIN="$SCRATCH/$NAME-fuzz-$CONFIG"

cd "$ROOT"
swift build --scratch-path "$SCRATCH" -c "$CONFIG" --target "$TARGET" --sanitize=fuzzer --sanitize=address "${EXTRA[@]}"

# The -I, -Xcc (C module maps) and module cache flags SwiftPM compiled the target with.
FLAGS_FILE="$SCRATCH/fuzz-swiftc-flags.txt"
python3 - "$SCRATCH/$CONFIG.yaml" "$TARGET" >"$FLAGS_FILE" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
start = text.index('"C.%s-' % sys.argv[2])
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

# Every object of the target's closure (only that target is built here).
mapfile -t OBJECTS < <(find -L "$SCRATCH/$CONFIG" -maxdepth 3 -name '*.o' -path '*.build/*' | sort)

if [ "$CONFIG" = release ]; then OPT=-O; else OPT=-Onone; fi
swiftc -module-name "$HARNESS" -parse-as-library "$OPT" -g \
    -sanitize=fuzzer,address "${FLAGS[@]}" \
    "Tests/fuzz/$HARNESS.swift" "${OBJECTS[@]}" -o "$BIN"

CORPUS="$SCRATCH/fuzz-corpus"
ARTIFACTS="$SCRATCH/fuzz-artifacts"
mkdir -p "$CORPUS" "$ARTIFACTS"
seed() { printf "$2" >"$CORPUS/seed-$1"; }
if [ "$NAME" = memcache ]; then
    # A byte of configuration, a byte of split seed, then a command stream.
    seed get '\x00\x07get a b c\r\ngets k\r\ngat 10 k\r\n'
    seed set '\x01\x03set k 1 2 3\r\nabc\r\ncas k 0 0 1 5 noreply\r\nx\r\n'
    seed other '\x02\x05delete k 0 noreply\r\nincr k 5\r\ntouch k 1\r\nflush_all 0\r\nversion\r\nstats items\r\nverbosity 1\r\n'
    seed meta '\x03\x09mg k v c f k O123 T30 N5 R3 E4 C5\r\nms a2V5 2 b F1 MS I\r\nhi\r\nmd k q x\r\nma k D3 J4 MD\r\nmn\r\nme k\r\n'
    seed bad '\x00\x01set k x 0 3\r\nabc\r\nms k 3 Z\r\nabc\r\nset k 0 0 3\r\nabcXYget a\r\n'
elif [ "$NAME" = msm ]; then
    # A byte choosing the key (MsmValueFuzz.swift), then a value: msm's own
    # recorded values (Tests/fixtures/msm/README.md).
    FIXTURES="$ROOT/Tests/fixtures/msm"
    [ -d "$FIXTURES" ] || { echo "msm fuzzing seeds from $FIXTURES, which is missing" >&2; exit 1; }
    for fixture in "$FIXTURES"/*.bin; do
        name="$(basename "$fixture" .bin)"
        case "$name" in
            validity-*) role='\x02' ;;
            bak-session-*) role='\x03' ;;
            bak-validity-*) role='\x04' ;;
            lock) role='\x05' ;;
            *) role='\x01' ;;
        esac
        { printf "$role"; cat "$fixture"; } >"$CORPUS/seed-$name"
    done
else
    # A byte of split seed, a byte of message type choice, then frames.
    # ping, request id 7 (Protocol.md 1.6)
    seed ping '\x07\x05\x00\x00\x00\x10\x00\x10\x00\x00\x00\x00\x00\x07\x00\x00\x01\xa2\x01\xa0\x1c\x80'
    # changes: one upsert (Protocol.md 1.6), then an ack
    seed changes '\x03\x0c\x00\x00\x00\x34\x00\x25\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x2a\x01\x00\x00\x00\x01\x6b\x00\x00\x00\x02\x68\x69\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x10\x00\x26\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a'
    # hello: magic, versions 1-1, peer, name "a", 16-byte nonce
    seed hello '\x01\x00\x00\x00\x00\x2a\x00\x01\x00\x00\x00\x00\x00\x01\x54\x4e\x44\x4d\x00\x01\x00\x01\x02\x00\x00\x00\x01\x61\x00\x00\x00\x10\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f'
    # pairStatus with request id 5 and its pairStatusReply (Protocol.md 1.6)
    seed pairstatus '\x05\x1c\x00\x00\x00\x08\x00\x53\x00\x00\x00\x00\x00\x05\x00\x00\x00\x47\x00\x54\x00\x01\x00\x00\x00\x05\x01\x02\x00\x00\x00\x00\x00\x00\x00\x02\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x00\x00\x00\x00\x00\x00\x04\xb0\x20\x21\x22\x23\x24\x25\x26\x27\x28\x29\x2a\x2b\x2c\x2d\x2e\x2f\x00\x00\x00\x00\x00\x00\x03\xe8\x00\x00\x00\x01\x62'
    # properties: one pair, and a statusRequest
    seed properties '\x09\x12\x00\x00\x00\x19\x00\x42\x00\x01\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04\x72\x6f\x6c\x65\x00\x00\x00\x01\x70\x00\x00\x00\x08\x00\x40\x00\x00\x00\x00\x00\x03'
fi

echo "fuzzing for ${SECONDS_TO_RUN}s: $BIN"
"$BIN" "$CORPUS" "${DICT[@]}" -max_len="$MAX_LEN" -max_total_time="$SECONDS_TO_RUN" \
    -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "$@"
