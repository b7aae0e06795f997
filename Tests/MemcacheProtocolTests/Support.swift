@testable import MemcacheProtocol
import NIOCore
import NIOTestUtils

// MARK: Building expected values

/// A buffer holding the UTF-8 bytes of `string`.
func bb(_ string: String) -> ByteBuffer {
    ByteBuffer(string: string)
}

/// A buffer holding `bytes`.
func bb(_ bytes: [UInt8]) -> ByteBuffer {
    ByteBuffer(bytes: bytes)
}

/// `get`/`gets`/`gat`/`gats`: `keys` is the key region exactly as sent (spaces included).
func retrieve(_ keys: String, cas: Bool = false, touch: Int64? = nil) -> MemcacheCommand {
    .retrieve(RetrievalCommand(keys: KeyList(bytes: bb(keys)), returnsCas: cas, touchExptime: touch))
}

func store(
    _ verb: StorageVerb, _ key: String, flags: UInt32 = 0, exptime: Int64 = 0, cas: UInt64 = 0,
    noreply: Bool = false, _ value: String
) -> MemcacheCommand {
    .store(StorageCommand(verb: verb, key: bb(key), flags: flags, exptime: exptime, casUnique: cas, noreply: noreply, value: bb(value)))
}

/// A meta command whose flags are `letters` in request order, with `tokens` filling in the token values.
func meta(
    _ verb: MetaVerb, _ key: ByteBuffer, _ letters: String = "", value: ByteBuffer? = nil,
    _ tokens: (inout MetaFlags) -> Void = { _ in }
) -> MemcacheCommand {
    var flags = MetaFlags()
    for letter in letters.utf8 {
        precondition(flags.insert(letter), "duplicate flag in expectation")
    }
    tokens(&flags)
    return .meta(MetaCommand(verb: verb, key: key, flags: flags, value: value))
}

func meta(
    _ verb: MetaVerb, _ key: String, _ letters: String = "", value: String? = nil,
    _ tokens: (inout MetaFlags) -> Void = { _ in }
) -> MemcacheCommand {
    meta(verb, bb(key), letters, value: value.map(bb), tokens)
}

let metaNoop = MemcacheCommand.meta(MetaCommand(verb: .noop, key: ByteBuffer(), flags: MetaFlags()))

/// A refused request; `noreply` when its line ended in `noreply`, which silences the error.
func invalid(_ error: MemcacheRequestError, noreply: Bool = false) -> MemcacheCommand {
    .invalid(error, noreply: noreply)
}

// MARK: Feeding the decoder

/// Runs `ByteToMessageDecoderVerifier` (whole, drip-fed byte by byte, all at
/// once) over string inputs. Every input must leave the decoder between commands.
func verify(
    _ pairs: [(String, [MemcacheCommand])], limits: MemcacheDecoderLimits = MemcacheDecoderLimits()
) throws {
    try ByteToMessageDecoderVerifier.verifyDecoder(
        inputOutputPairs: pairs.map { (bb($0.0), $0.1) },
        decoderFactory: { MemcacheDecoder(limits: limits) }
    )
}

func verify(
    bytes pairs: [([UInt8], [MemcacheCommand])], limits: MemcacheDecoderLimits = MemcacheDecoderLimits()
) throws {
    try ByteToMessageDecoderVerifier.verifyDecoder(
        inputOutputPairs: pairs.map { (bb($0.0), $0.1) },
        decoderFactory: { MemcacheDecoder(limits: limits) }
    )
}

/// What a decoder made of a byte stream.
struct DecodeResult: Equatable, CustomStringConvertible {
    var commands: [MemcacheCommand] = []
    /// The fatal error, if the stream ended in one.
    var error: MemcacheProtocolError?
    /// Bytes left undecoded at the end (a partial command). Always 0 after an
    /// error: how much was buffered when the error came depends on the reads.
    var leftover = 0

    var description: String {
        "\(commands.count) commands \(commands), error \(String(describing: error)), leftover \(leftover)"
    }
}

/// Errors found by `decode` in the decoder's contract (not in its output).
struct DecoderContractViolation: Error, CustomStringConvertible {
    var description: String
}

/// Feeds `bytes` to a fresh decoder in chunks of the given sizes (the rest
/// in one chunk), draining it after each chunk the way a channel handler does.
///
/// Checks the decoder's contract while at it: every command it returns
/// consumes at least one byte, and it never loops (the number of `next` calls
/// is bounded by the input size).
func decode(
    _ bytes: [UInt8], splits: [Int] = [], limits: MemcacheDecoderLimits = MemcacheDecoderLimits()
) throws -> DecodeResult {
    var decoder = MemcacheDecoder(limits: limits)
    var buffer = ByteBufferAllocator().buffer(capacity: 256)
    var result = DecodeResult()
    var offset = 0
    var chunks = splits
    chunks.append(bytes.count)
    var calls = 0
    for size in chunks where offset < bytes.count {
        let end = min(bytes.count, offset + max(size, 0))
        buffer.writeBytes(bytes[offset..<end])
        offset = end
        while true {
            calls += 1
            if calls > 2 * bytes.count + 2 * chunks.count + 4 {
                throw DecoderContractViolation(description: "decoder loops: \(calls) calls for \(bytes.count) bytes")
            }
            let before = buffer.readerIndex
            let command: MemcacheCommand?
            do {
                command = try decoder.next(&buffer)
            } catch {
                result.error = error
                return result
            }
            guard let command else { break }
            if buffer.readerIndex <= before {
                throw DecoderContractViolation(description: "\(command) consumed no bytes")
            }
            result.commands.append(command)
        }
    }
    result.leftover = buffer.readableBytes
    return result
}

func decode(
    _ string: String, splits: [Int] = [], limits: MemcacheDecoderLimits = MemcacheDecoderLimits()
) throws -> DecodeResult {
    try decode(Array(string.utf8), splits: splits, limits: limits)
}

/// Decodes every byte in its own `next` round.
func decodeByteByByte(_ bytes: [UInt8], limits: MemcacheDecoderLimits = MemcacheDecoderLimits()) throws -> DecodeResult {
    try decode(bytes, splits: Array(repeating: 1, count: bytes.count), limits: limits)
}

// MARK: Randomness

extension RandomNumberGenerator {
    /// A random split of `count` bytes into chunks (sizes sum to `count`).
    mutating func splits(of count: Int, maxChunk: Int = 16) -> [Int] {
        var sizes: [Int] = []
        var total = 0
        while total < count {
            // Mostly small chunks, sometimes big ones, sometimes single bytes.
            let size: Int
            switch Int.random(in: 0..<8, using: &self) {
            case 0: size = 1
            case 1: size = Int.random(in: 1...max(1, count), using: &self)
            default: size = Int.random(in: 1...maxChunk, using: &self)
            }
            sizes.append(min(size, count - total))
            total += size
        }
        return sizes
    }
}
