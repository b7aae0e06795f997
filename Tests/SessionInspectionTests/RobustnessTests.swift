import SessionInspection
import TandemTestSupport
import Testing

/// Bad input must give an answer, never a crash: truncations, mutations, random
/// bytes and text. A trap would end the test process, so finishing is the test;
/// the expectations check the answers are sensible too.
@Suite("Robustness")
struct RobustnessTests {
    /// Decodes and renders `value` both ways, as tandemctl would.
    @discardableResult
    static func exercise(key: String?, value: [UInt8]) -> MsmDecoding {
        let decoding = MsmValue.decode(key: key, value: value)
        _ = decoding.renderedText()
        _ = decoding.json().jsonText
        if let reason = decoding.notMsmReason {
            #expect(!reason.isEmpty)
        }
        return decoding
    }

    /// Every proper prefix of every fixture: with its key it is `notMsm` (each format
    /// either has a fixed size or ends with data the prefix cuts off); without a key
    /// anything but a crash is fine (the first 20 bytes of a session can pass for a
    /// validity record).
    @Test(arguments: Fixtures.names)
    func everyTruncation(of file: String) throws {
        let value = try Fixtures.bytes(file)
        let key = try #require(Fixtures.keys[file])
        for length in 0..<value.count {
            let prefix = Array(value.prefix(length))
            let decoding = Self.exercise(key: key, value: prefix)
            #expect(decoding.notMsmReason != nil, "\(file) cut to \(length) bytes: \(decoding)")
            Self.exercise(key: nil, value: prefix)
        }
    }

    enum Mutation: CaseIterable {
        case flipBit, randomByte, insertBytes, deleteRange, interestingInteger, duplicateRange, truncate
    }

    /// Lengths, counts and handles that make decoders misbehave.
    static let interesting: [UInt32] = [
        0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x1_0000,
        0x7E_0000, 0x7E_0001, 0x7E_FFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
    ]

    static func mutate(_ original: [UInt8], using rng: inout SplitMix64) -> [UInt8] {
        var bytes = original
        for _ in 0..<rng.int(1...4) {
            switch Mutation.allCases[rng.int(0...Mutation.allCases.count - 1)] {
            case .flipBit where !bytes.isEmpty:
                bytes[rng.int(0...bytes.count - 1)] ^= UInt8(1) << UInt8(rng.int(0...7))
            case .randomByte where !bytes.isEmpty:
                bytes[rng.int(0...bytes.count - 1)] = UInt8.random(in: 0...255, using: &rng)
            case .insertBytes:
                bytes.insert(contentsOf: rng.bytes(rng.int(1...8)), at: rng.int(0...bytes.count))
            case .deleteRange where bytes.count >= 2:
                let start = rng.int(0...bytes.count - 2)
                bytes.removeSubrange(start..<min(bytes.count, start + rng.int(1...8)))
            case .interestingInteger where bytes.count >= 4:
                // Written as 1, 2 or 4 bytes, where lengths and counts of all sizes live.
                let value = interesting[rng.int(0...interesting.count - 1)]
                let width = [1, 2, 4][rng.int(0...2)]
                let at = rng.int(0...bytes.count - width)
                for index in 0..<width {
                    bytes[at + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(width - 1 - index)))
                }
            case .duplicateRange where bytes.count >= 2:
                let start = rng.int(0...bytes.count - 2)
                let range = start..<min(bytes.count, start + rng.int(1...32))
                bytes.insert(contentsOf: Array(bytes[range]), at: rng.int(0...bytes.count))
            case .truncate where !bytes.isEmpty:
                bytes.removeLast(rng.int(1...bytes.count))
            default:
                break
            }
        }
        return bytes
    }

    @Test func fiveThousandMutations() throws {
        let fixtures = try Fixtures.names.map { (name: $0, key: Fixtures.keys[$0], value: try Fixtures.bytes($0)) }
        var rng = SplitMix64(seed: 0x6D73_6D2D_6465_636F)
        var sessions = 0
        var notMsm = 0
        for _ in 0..<5_000 {
            let fixture = fixtures[rng.int(0...fixtures.count - 1)]
            let mutated = Self.mutate(fixture.value, using: &rng)
            let decoding = Self.exercise(key: rng.chance(80) ? fixture.key : nil, value: mutated)
            switch decoding {
            case .session: sessions += 1
            case .notMsm: notMsm += 1
            case .validity, .lock, .pingMarker: break
            }
        }
        // Some mutations hit only attribute values and still decode; most break the value.
        #expect(sessions > 100)
        #expect(notMsm > 1_000)
    }

    /// Mutations of the Java stream sections alone decode or throw, never trap.
    @Test func mutatedJavaStreams() throws {
        let value = try Fixtures.bytes("session-rich-attributes.bin")
        let stream = Array(value[87...])
        var rng = SplitMix64(seed: 42)
        var decoded = 0
        for _ in 0..<2_000 {
            if let objects = try? JavaObjectStream.readObjects(from: Self.mutate(stream, using: &rng)) {
                decoded += 1
                for object in objects {
                    _ = object.renderedText()
                    _ = object.json().jsonText
                }
            }
        }
        #expect(decoded > 0)
    }

    @Test func randomBytesAreNotMsm() {
        var rng = SplitMix64(seed: 7)
        let keys: [String?] = [
            nil, "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", "validity:0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1",
            "bak:0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", "lock:0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", "ping-n1",
        ]
        for round in 0..<2_000 {
            // Lengths from 2 up, so the one-byte ping marker 0x01 cannot come up; 20 is a validity record's size.
            let length = round % 10 == 0 ? 20 : rng.int(2...600)
            var value = rng.bytes(length)
            if rng.chance(30) {
                // Start like a session value, so decoding gets past the first checks.
                value.replaceSubrange(0..<2, with: [0x00, 0x02])
            }
            for key in keys {
                let decoding = Self.exercise(key: key, value: value)
                #expect(decoding.notMsmReason != nil, "random \(length) bytes under \(key ?? "no key"): \(decoding)")
            }
        }
    }

    @Test(arguments: [
        "hello world", "", "42", "locked\r\n", "<html><body>session</body></html>", "{\"id\":\"x\"}",
        "abcdefghijklmnopqrst",  // 20 bytes: the size of a validity record
        "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1",
    ])
    func plainTextIsNotMsm(_ text: String) {
        for key in [nil, "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", "validity:0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1"] {
            let decoding = Self.exercise(key: key, value: Array(text.utf8))
            let reason = decoding.notMsmReason
            #expect(reason != nil, "\(text) under \(key ?? "no key"): \(decoding)")
            #expect(decoding.renderedText().hasPrefix("not an msm value: "))
        }
    }
}
