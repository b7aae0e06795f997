// libFuzzer harness for MemcacheDecoder. Not part of the SwiftPM package:
// Tests/fuzz/run.sh compiles it against the MemcacheProtocol target built
// with `--sanitize=fuzzer --sanitize=address` and runs it.
//
// Input layout: byte 0 picks the limits and the feeding pattern, byte 1
// seeds the read splits, the rest is the byte stream a client sends.
//
// Checked for every input:
// - no crash, trap or memory error (ASan), and only `lineTooLong` or
//   `httpRequest` is thrown (typed throws);
// - every command returned consumes at least one byte, and the number of
//   `next` calls is bounded by the input size (no infinite loop);
// - without an error, what stays buffered is bounded by the limits;
// - decoding the stream whole, in random splits and byte by byte gives the
//   same commands and the same error;
// - keys that come out are valid (1...maxKeyLength bytes, no spaces or
//   control bytes unless base64-decoded).

import MemcacheProtocol
import NIOCore

struct SplitMix64 {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

struct Outcome: Equatable {
    var commands: [MemcacheCommand] = []
    var error: MemcacheProtocolError?
}

enum Feeding {
    case whole
    case random(SplitMix64)
    case byteByByte
}

let smallLimits = MemcacheDecoderLimits(maxLineLength: 256, maxRetrievalLineLength: 1024, maxKeyLength: 250, maxItemSize: 512)
let defaultLimits = MemcacheDecoderLimits()

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError(message()) }
}

func checkKey(_ key: ByteBuffer, limits: MemcacheDecoderLimits, binary: Bool, _ command: MemcacheCommand) {
    check(key.readableBytes >= 1 && key.readableBytes <= limits.maxKeyLength, "bad key length in \(command)")
    if !binary {
        let valid = key.withUnsafeReadableBytes { ASCII.isValidKey($0, maxLength: limits.maxKeyLength) }
        check(valid, "invalid key in \(command)")
    }
}

func checkSemantics(_ command: MemcacheCommand, limits: MemcacheDecoderLimits) {
    switch command {
    case .retrieve(let retrieval):
        var count = 0
        for key in retrieval.keys {
            checkKey(key, limits: limits, binary: false, command)
            count += 1
        }
        check(count >= 1, "retrieval without keys: \(command)")
    case .store(let storage):
        checkKey(storage.key, limits: limits, binary: false, command)
        check(storage.value.readableBytes <= limits.maxItemSize, "value over maxItemSize: \(command)")
    case .refusedSet(let key, _):
        checkKey(key, limits: limits, binary: false, command)
    case .delete(let key, _), .arithmetic(let key, _, _, _), .touch(let key, _, _):
        checkKey(key, limits: limits, binary: false, command)
    case .flushAll(let delay, _):
        check(delay >= 0, "negative flush delay: \(command)")
    case .meta(let meta):
        if meta.verb == .noop { break }
        checkKey(meta.key, limits: limits, binary: meta.flags.has("b"), command)
        check((meta.verb == .set) == (meta.value != nil), "value presence: \(command)")
        if let value = meta.value {
            check(value.readableBytes <= limits.maxItemSize, "meta value over maxItemSize: \(command)")
        }
        if let opaque = meta.flags.opaque {
            // The bound is on the whole token, its `O` included.
            check(opaque.readableBytes < limits.maxOpaqueTokenLength, "opaque too long: \(command)")
        }
    case .invalid(let error, let noreply):
        // Only commands that take `noreply` can make an error silent.
        if noreply {
            check(error != .unknownCommand && error != .lineTooLong, "silent \(error): \(command)")
        }
    case .version, .verbosity, .quit, .stats:
        break
    }
}

func decode(_ input: UnsafeRawBufferPointer, feeding: Feeding, limits: MemcacheDecoderLimits) -> Outcome {
    var decoder = MemcacheDecoder(limits: limits)
    var buffer = ByteBufferAllocator().buffer(capacity: 64)
    var outcome = Outcome()
    var rng: SplitMix64? = nil
    if case .random(let generator) = feeding { rng = generator }
    var offset = 0
    var calls = 0
    var reads = 0
    while offset < input.count {
        let size: Int
        switch feeding {
        case .whole: size = input.count
        case .byteByByte: size = 1
        case .random: size = Int(rng!.next() % 97) + 1
        }
        let end = min(input.count, offset + size)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: input[offset..<end]))
        offset = end
        reads += 1
        while true {
            calls += 1
            check(calls <= input.count + reads + 1, "decoder loops: \(calls) calls for \(input.count) bytes")
            let before = buffer.readerIndex
            let command: MemcacheCommand?
            do {
                command = try decoder.next(&buffer)
            } catch {
                outcome.error = error
                return outcome
            }
            guard let command else { break }
            check(buffer.readerIndex > before, "\(command) consumed no bytes")
            checkSemantics(command, limits: limits)
            outcome.commands.append(command)
        }
        // What a channel handler does between reads; must not confuse the decoder.
        if buffer.readerIndex > 512 { buffer.discardReadBytes() }
    }
    let bound = max(limits.maxRetrievalLineLength, limits.maxItemSize + 2)
    check(buffer.readableBytes <= bound, "\(buffer.readableBytes) bytes buffered without a command")
    return outcome
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let config = data[0]
    let limits = config & 1 == 0 ? smallLimits : defaultLimits
    let input = UnsafeRawBufferPointer(start: data + 2, count: size - 2)
    let whole = decode(input, feeding: .whole, limits: limits)
    let split = decode(input, feeding: .random(SplitMix64(state: UInt64(data[1]))), limits: limits)
    check(split == whole, "split decoding differs:\nwhole: \(whole)\nsplit: \(split)")
    if config & 2 != 0, input.count <= 4096 {
        let dripped = decode(input, feeding: .byteByByte, limits: limits)
        check(dripped == whole, "byte-by-byte decoding differs:\nwhole: \(whole)\ndripped: \(dripped)")
    }
    return 0
}
