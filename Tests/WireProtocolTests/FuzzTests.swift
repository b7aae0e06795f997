import NIOCore
import TandemTestSupport
import Testing
import WireProtocol

/// Deterministic fuzzing: random and mutated streams, fed in random splits. The frame
/// decoder and `WireMessage.init(type:body:)` must never crash, only throw
/// `WireProtocolError` (their typed `throws` guarantee the type), and must behave the
/// same however the stream is split.
@Suite("Fuzz")
struct FuzzTests {
    /// Values that make lengths and counts interesting.
    static let interestingU32: [UInt32] = [0, 1, 2, 7, 8, 9, 12, 13, 16, 28, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x1_0000,
                                           UInt32(WireFrame.maximumFrameLength), UInt32(WireFrame.maximumFrameLength) + 1,
                                           0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]

    /// The low byte of the highest message type, plus a few unknown ones above it.
    static let highestTypeByte = UInt8(truncatingIfNeeded: WireMessageType.allCases.map(\.rawValue).max()! + 0x0F)

    struct Statistics {
        var cases = 0
        var frames = 0
        var messages = 0
        /// The types of the messages that decoded.
        var decodedTypes = Set<WireMessageType>()
        var malformed = 0
        var unknownType = 0
        var frameErrors = 0
    }

    /// Stream of 1–4 valid frames of random messages.
    static func validStream(_ generator: inout MessageGenerator<SplitMix64>) -> ByteBuffer {
        var stream = ByteBuffer()
        for _ in 0..<generator.rng.int(1...4) {
            let message = generator.message()
            try! stream.writeWireMessage(message, flags: generator.rng.chance(50) ? WireFrame.Flags.response : 0, requestID: generator.rng.u32())
        }
        return stream
    }

    static func mutate(_ stream: ByteBuffer, using rng: inout SplitMix64) -> ByteBuffer {
        var bytes = Array(stream.readableBytesView)
        for _ in 0..<rng.int(1...4) {
            switch rng.int(0...7) {
            case 0 where !bytes.isEmpty:  // flip a bit
                bytes[rng.int(0...bytes.count - 1)] ^= UInt8(1) << UInt8(rng.int(0...7))
            case 1 where !bytes.isEmpty:  // a random byte
                bytes[rng.int(0...bytes.count - 1)] = UInt8.random(in: 0...255, using: &rng)
            case 2 where bytes.count >= 4:  // an interesting u32 anywhere (lengths, counts)
                let at = rng.int(0...bytes.count - 4)
                let value = rng.pick(interestingU32)
                for index in 0..<4 { bytes[at + index] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(index))) }
            case 3 where !bytes.isEmpty:  // truncate
                bytes.removeLast(rng.int(1...min(bytes.count, 16)))
            case 4:  // insert random bytes
                let at = rng.int(0...bytes.count)
                bytes.insert(contentsOf: rng.bytes(rng.int(1...8)), at: at)
            case 5 where bytes.count >= 2:  // delete a range
                let at = rng.int(0...bytes.count - 2)
                bytes.removeSubrange(at..<min(bytes.count, at + rng.int(1...8)))
            case 6 where bytes.count >= 12:  // a random type in the first frame
                bytes[4] = rng.chance(50) ? 0 : UInt8.random(in: 0...255, using: &rng)
                // Up to just past the highest type, so the administration messages (0x0060–0x0081) get bodies of other types.
                bytes[5] = UInt8.random(in: 0...Self.highestTypeByte, using: &rng)
            case 7 where bytes.count >= 13:  // an enumerated byte: 0…4
                bytes[rng.int(12...bytes.count - 1)] = UInt8(rng.int(0...4))
            default:
                break
            }
        }
        return bb(bytes)
    }

    /// A random header with a random (mostly valid) type and a random body.
    static func randomFrame(using rng: inout SplitMix64) -> ByteBuffer {
        let type: UInt16 = rng.chance(85) ? rng.pick(WireMessageType.allCases).rawValue : rng.u16()
        var body = rng.bytes(rng.int(0...48))
        // Small counts and lengths make deeper parses likely.
        if body.count >= 4, rng.chance(50) {
            body[0] = 0; body[1] = 0; body[2] = 0; body[3] = UInt8(rng.int(0...3))
        }
        var frame = frameBytes(type: type, flags: rng.u16(), requestID: rng.u32(), body: bb(body))
        if rng.chance(10) { frame.setInteger(rng.pick(interestingU32), at: 0) }
        return frame
    }

    /// Decodes `stream` whole and in random splits, checks both agree, and parses every frame.
    static func check(_ stream: ByteBuffer, using rng: inout SplitMix64, into statistics: inout Statistics) {
        statistics.cases += 1
        let whole = decodeStream([stream])
        let split = decodeStream(randomSplits(stream, maximumPieces: rng.pick([2, 4, 16, stream.readableBytes]), using: &rng))
        #expect(whole.frames == split.frames)
        #expect(whole.error == split.error)
        if whole.error != nil { statistics.frameErrors += 1 }
        statistics.frames += whole.frames.count

        for frame in whole.frames {
            do {
                let message = try frame.message()
                statistics.messages += 1
                statistics.decodedTypes.insert(message.type)
                #expect(message.type.rawValue == frame.type)
                // Whatever decodes re-encodes to the same bytes (the encoding is canonical),
                // except unknown error codes, which are reported as `.unknown`.
                if case .error(let error) = message, error.code == .unknown { continue }
                let body = encodedBody(message)
                if body != frame.body {
                    Issue.record("\(message.type) re-encodes differently: \(hex(frame.body)) → \(hex(body))")
                }
            } catch {
                switch error {
                case .malformed: statistics.malformed += 1
                case .unknownMessageType: statistics.unknownType += 1
                default: Issue.record("message parsing threw a frame error: \(error)")
                }
            }
        }
    }

    @Test("20,000 random and mutated streams")
    func fuzz() {
        var rng = SplitMix64(seed: 0x7A4D_E3)
        var generator = MessageGenerator(rng: SplitMix64(seed: 0xC0FFEE))
        var statistics = Statistics()
        for round in 0..<20_000 {
            let stream: ByteBuffer
            switch round % 3 {
            case 0:
                var random = ByteBuffer()
                for _ in 0..<rng.int(1...3) {
                    random.writeImmutableBuffer(Self.randomFrame(using: &rng))
                }
                stream = random
            case 1:
                stream = Self.mutate(Self.validStream(&generator), using: &rng)
            default:
                // Valid streams must decode to exactly their messages.
                let valid = Self.validStream(&generator)
                let decoded = decodeStream(randomSplits(valid, maximumPieces: 8, using: &rng))
                #expect(decoded.error == nil)
                stream = rng.chance(50) ? valid : Self.mutate(valid, using: &rng)
            }
            Self.check(stream, using: &rng, into: &statistics)
        }
        // The cases reached every outcome.
        #expect(statistics.cases == 20_000)
        #expect(statistics.messages > 5_000)
        #expect(statistics.malformed > 1_000)
        #expect(statistics.unknownType > 100)
        #expect(statistics.frameErrors > 1_000)
        // Every message type, the newest included, was generated, framed and decoded.
        #expect(statistics.decodedTypes == Set(WireMessageType.allCases), "never decoded: \(Set(WireMessageType.allCases).subtracting(statistics.decodedTypes))")
    }

    @Test("pure noise never crashes the decoder")
    func noise() {
        var rng = SplitMix64(seed: 99)
        for _ in 0..<2_000 {
            let noise = bb(rng.bytes(rng.int(0...64)))
            let whole = decodeStream([noise])
            let split = decodeStream(randomSplits(noise, maximumPieces: 10, using: &rng))
            #expect(whole.frames == split.frames && whole.error == split.error)
            for frame in whole.frames {
                _ = try? frame.message()
            }
            for type in WireMessageType.allCases {
                _ = try? WireMessage(type: type.rawValue, body: noise)
            }
        }
    }
}
