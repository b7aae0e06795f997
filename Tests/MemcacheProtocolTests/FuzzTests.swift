@testable import MemcacheProtocol
import NIOCore
import TandemTestSupport
import Testing

/// Builds random valid command streams together with the commands they must decode to.
struct StreamGenerator<RNG: RandomNumberGenerator> {
    var rng: RNG

    static var metaFlagsByVerb: [(String, MetaVerb, String)] {
        [
            ("mg", .get, "bcfhklOqstuvCENRT"),
            ("ms", .set, "bcCEFIkOqsSTMN"),
            ("md", .delete, "bCEIkOqTx"),
            ("ma", .arithmetic, "bCENJDTMOqtcvk"),
            ("me", .debug, "b"),
        ]
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int {
        Int.random(in: range, using: &rng)
    }

    mutating func chance(_ percent: Int) -> Bool {
        int(0...99) < percent
    }

    mutating func pick<T>(_ choices: [T]) -> T {
        choices[int(0...choices.count - 1)]
    }

    mutating func spaces() -> String {
        chance(80) ? " " : String(repeating: " ", count: int(2...4))
    }

    mutating func eol() -> String {
        chance(85) ? "\r\n" : "\n"
    }

    mutating func key() -> String {
        let length = chance(3) ? int(200...250) : int(1...16)
        return String(decoding: (0..<length).map { _ in UInt8(int(0x21...0x7E)) }, as: UTF8.self)
    }

    mutating func value() -> [UInt8] {
        let length = chance(5) ? int(100...2000) : int(0...24)
        return (0..<length).map { _ in chance(10) ? pick([0x0D, 0x0A, 0x20, 0x00]) : UInt8(int(0...255)) }
    }

    mutating func exptime() -> Int64 {
        switch int(0...4) {
        case 0: return 0
        case 1: return Int64(int(-100...(-1)))
        case 2: return Int64.random(in: Int64.min...Int64.max, using: &rng)
        default: return Int64(int(1...2_592_000))
        }
    }

    mutating func unsigned() -> UInt64 {
        UInt64.random(in: 0...UInt64.max, using: &rng) >> UInt64(int(0...63))
    }

    /// One command: its bytes and what it decodes to.
    mutating func command() -> ([UInt8], MemcacheCommand) {
        let noreply = chance(30)
        let noreplyText = noreply ? spaces() + "noreply" : ""
        switch int(0...13) {
        case 0:
            // get/gets/gat/gats with several keys and uneven spacing.
            let verb = pick(["get", "gets", "gat", "gats"])
            let touch: Int64? = verb.hasPrefix("gat") ? exptime() : nil
            var region = key()
            for _ in 0..<int(0...5) { region += spaces() + key() }
            var line = verb + spaces()
            if let touch { line += "\(touch)" + spaces() }
            line += region + (chance(20) ? spaces() : "") + eol()
            return (Array(line.utf8), retrieve(region, cas: verb.hasSuffix("s"), touch: touch))
        case 1, 2:
            let verb = pick([("set", StorageVerb.set), ("add", .add), ("replace", .replace), ("append", .append), ("prepend", .prepend), ("cas", .cas)])
            let key = key(), flags = UInt32.random(in: 0...UInt32.max, using: &rng), exptime = exptime(), value = value()
            let cas: UInt64 = verb.1 == .cas ? unsigned() : 0
            var line = [verb.0, key, "\(flags)", "\(exptime)", "\(value.count)"].joined(separator: spaces())
            if verb.1 == .cas { line += spaces() + "\(cas)" }
            line += noreplyText + eol()
            let command = StorageCommand(verb: verb.1, key: bb(key), flags: flags, exptime: exptime, casUnique: cas, noreply: noreply, value: bb(value))
            return (Array(line.utf8) + value + [0x0D, 0x0A], .store(command))
        case 3:
            let key = key()
            let hold = chance(30) ? spaces() + "0" : ""
            return (Array(("delete" + spaces() + key + hold + noreplyText + eol()).utf8), .delete(key: bb(key), noreply: noreply))
        case 4:
            let key = key(), delta = unsigned(), increment = chance(50)
            let line = (increment ? "incr" : "decr") + spaces() + key + spaces() + "\(delta)" + noreplyText + eol()
            return (Array(line.utf8), .arithmetic(key: bb(key), increment: increment, delta: delta, noreply: noreply))
        case 5:
            let key = key(), exptime = exptime()
            return (Array(("touch" + spaces() + key + spaces() + "\(exptime)" + noreplyText + eol()).utf8), .touch(key: bb(key), exptime: exptime, noreply: noreply))
        case 6:
            let delay: Int64 = chance(50) ? 0 : Int64(int(0...100_000))
            let delayText = delay == 0 && chance(50) ? "" : spaces() + "\(delay)"
            return (Array(("flush_all" + delayText + noreplyText + eol()).utf8), .flushAll(delay: delay, noreply: noreply))
        case 7:
            let choice: (String, MemcacheCommand) = pick([
                ("version", .version), ("quit", .quit), ("stats", .stats(group: .general)), ("stats settings", .stats(group: .settings)),
                ("stats items", .stats(group: .items)), ("stats slabs", .stats(group: .slabs)), ("stats reset", .stats(group: .reset)),
                ("mn", metaNoop),
            ])
            return (Array((choice.0 + eol()).utf8), choice.1)
        case 8:
            let level = UInt64(int(0...5))
            return (Array(("verbosity" + spaces() + "\(level)" + noreplyText + eol()).utf8), .verbosity(level: level, noreply: noreply))
        default:
            return metaCommand()
        }
    }

    mutating func metaCommand() -> ([UInt8], MemcacheCommand) {
        let (name, verb, allowed) = pick(Self.metaFlagsByVerb)
        var letters = Array(allowed.utf8)
        letters.shuffle(using: &rng)
        letters = Array(letters.prefix(int(0...letters.count)))
        var flags = MetaFlags()
        var tokens: [String] = []
        var keyText = key()
        var keyBytes = bb(keyText)
        for letter in letters {
            _ = flags.insert(letter)
            var token = String(UnicodeScalar(letter))
            switch letter {
            case UInt8(ascii: "b"):
                let raw = (0..<int(1...40)).map { _ in UInt8(int(0...255)) }
                var encoded = ByteBuffer()
                raw.withUnsafeBytes { Base64.encode($0, into: &encoded) }
                keyText = String(buffer: encoded)
                keyBytes = bb(raw)
            case UInt8(ascii: "O"):
                // memcached's bound is 32 bytes for the token, `O` included.
                let opaque = String(decoding: (0..<int(0...31)).map { _ in UInt8(int(0x21...0x7E)) }, as: UTF8.self)
                token += opaque
                flags.opaque = bb(opaque)
            case UInt8(ascii: "T"):
                let value = exptime()
                token += "\(value)"
                flags.ttl = value
            case UInt8(ascii: "N"):
                let value = exptime()
                token += "\(value)"
                flags.vivifyTTL = value
            case UInt8(ascii: "R"):
                let value = Int64(int(-10...1000))
                token += "\(value)"
                flags.recacheSeconds = value
            case UInt8(ascii: "C"):
                let value = unsigned()
                token += "\(value)"
                flags.compareCas = value
            case UInt8(ascii: "E"):
                let value = unsigned()
                token += "\(value)"
                flags.explicitCas = value
            case UInt8(ascii: "F"):
                let value = UInt32.random(in: 0...UInt32.max, using: &rng)
                token += "\(value)"
                flags.clientFlags = value
            case UInt8(ascii: "D"):
                let value = unsigned()
                token += "\(value)"
                flags.delta = value
            case UInt8(ascii: "J"):
                let value = unsigned()
                token += "\(value)"
                flags.initial = value
            case UInt8(ascii: "M"):
                let mode = pick(Array((verb == .set ? "EAPRS" : "I+D-").utf8))
                token += String(UnicodeScalar(mode))
                flags.mode = mode
            default:
                break
            }
            tokens.append(token)
            // Proxy hints are accepted anywhere and ignored.
            if chance(5) { tokens.append(pick(["P", "L", "Pproxy", "L1"])) }
        }
        var value: [UInt8]? = nil
        var line = name + spaces() + keyText
        if verb == .set {
            value = self.value()
            line += spaces() + "\(value!.count)"
        }
        for token in tokens { line += spaces() + token }
        line += eol()
        var bytes = Array(line.utf8)
        if let value { bytes += value + [0x0D, 0x0A] }
        return (bytes, .meta(MetaCommand(verb: verb, key: keyBytes, flags: flags, value: value.map(bb))))
    }

    /// A stream of `count` commands.
    mutating func stream(count: Int) -> ([UInt8], [MemcacheCommand]) {
        var bytes: [UInt8] = []
        var commands: [MemcacheCommand] = []
        for _ in 0..<count {
            let (commandBytes, command) = command()
            bytes += commandBytes
            commands.append(command)
        }
        return (bytes, commands)
    }

    /// Damages `bytes` in one to three ways.
    mutating func mutate(_ input: [UInt8]) -> [UInt8] {
        var bytes = input
        for _ in 0..<int(1...3) {
            let position = bytes.isEmpty ? 0 : int(0...bytes.count - 1)
            switch int(0...9) {
            case 0 where !bytes.isEmpty:
                bytes[position] ^= 1 << UInt8(int(0...7))
            case 1:
                bytes = Array(bytes.prefix(position))
            case 2, 3:
                let inserted: [UInt8] = (0..<int(1...3)).map { _ in pick([0x20, 0x0D, 0x0A]) }
                bytes.insert(contentsOf: inserted, at: position)
            case 4, 5:
                // Replace a run of digits with a huge, negative or overflowing number.
                if let start = bytes[position...].firstIndex(where: { $0 >= 0x30 && $0 <= 0x39 }) {
                    let end = bytes[start...].firstIndex(where: { $0 < 0x30 || $0 > 0x39 }) ?? bytes.count
                    let replacement = pick([
                        "99999999999999999999999", "18446744073709551616", "9223372036854775808", "-1", "-9223372036854775809",
                        "-0", "2147483647", "2147483646", "4294967296", "1048577", "0",
                    ])
                    bytes.replaceSubrange(start..<end, with: Array(replacement.utf8))
                }
            case 6 where !bytes.isEmpty:
                let end = min(bytes.count, position + int(1...16))
                bytes.removeSubrange(position..<end)
            case 7 where !bytes.isEmpty:
                let end = min(bytes.count, position + int(1...64))
                let copied = Array(bytes[position..<end])
                bytes.insert(contentsOf: copied, at: int(0...bytes.count))
            case 8:
                bytes.insert(contentsOf: (0..<int(1...8)).map { _ in UInt8(int(0...255)) }, at: position)
            default:
                bytes.insert(
                    contentsOf: Array(pick(["get ", "ms k 5 ", "set k 0 0 3\r\n", " b", " noreply", "\r\n", "mg ", " O", "gat -1 ", " HTTP/1.1"]).utf8),
                    at: position)
            }
        }
        return bytes
    }

    /// Random bytes, biased towards protocol words so that they get past the first token.
    mutating func noise() -> [UInt8] {
        var bytes: [UInt8] = []
        let words = [
            "get ", "gets ", "gat ", "set ", "cas ", "incr ", "delete ", "touch ", "flush_all", "stats ", "verbosity ", "mg ", "ms ",
            "md ", "ma ", "me ", "mn", " ", " ", "\r\n", "\n", "\r", "0", "1", "5", "-1", "99999999999999999999", "noreply", "b", "k",
            "v", "T", "O", "M", "q", "a2V5", "==", "HTTP/1.1", "GET ",
        ]
        for _ in 0..<int(0...40) {
            if chance(60) {
                bytes += Array(pick(words).utf8)
            } else {
                bytes += (0..<int(1...4)).map { _ in UInt8(int(0...255)) }
            }
        }
        return bytes
    }
}

/// Bounded, deterministic fuzzing of the decoder: it must never crash, never
/// loop, only ever throw `lineTooLong` or `httpRequest`, and decode the same
/// bytes the same way however they are split into reads.
@Suite("Decoder fuzzing")
struct FuzzTests {
    /// Small limits so that the size checks are hit often.
    static let limits = MemcacheDecoderLimits(maxLineLength: 512, maxRetrievalLineLength: 4096, maxKeyLength: 250, maxItemSize: 1500)

    static func describe(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self).debugDescription
    }

    /// Decodes `bytes` whole, in random splits and (sometimes) byte by byte, and checks they agree.
    static func checkSplitInvariance(
        _ bytes: [UInt8], rng: inout SplitMix64, limits: MemcacheDecoderLimits, dripFeed: Bool, context: String
    ) throws -> DecodeResult {
        let whole = try decode(bytes, limits: limits)
        if whole.error == nil, whole.leftover > max(limits.maxRetrievalLineLength, limits.maxItemSize + 2) {
            Issue.record("\(context): \(whole.leftover) bytes buffered without a command: \(describe(bytes))")
        }
        let splits = rng.splits(of: bytes.count, maxChunk: 32)
        let split = try decode(bytes, splits: splits, limits: limits)
        if split != whole {
            Issue.record("\(context): split \(splits) gave \(split), whole gave \(whole), input \(describe(bytes))")
        }
        if dripFeed {
            let dripped = try decodeByteByByte(bytes, limits: limits)
            if dripped != whole {
                Issue.record("\(context): byte by byte gave \(dripped), whole gave \(whole), input \(describe(bytes))")
            }
        }
        return whole
    }

    @Test func validStreamsDecodeToTheirCommands() throws {
        var generator = StreamGenerator(rng: SplitMix64(seed: 0x7A4D_E111))
        var splitRNG = SplitMix64(seed: 1)
        let limits = MemcacheDecoderLimits()
        for index in 0..<7_500 {
            let (bytes, expected) = generator.stream(count: generator.int(1...8))
            let result = try Self.checkSplitInvariance(
                bytes, rng: &splitRNG, limits: limits, dripFeed: index % 100 == 0, context: "valid #\(index)")
            if result != DecodeResult(commands: expected) {
                Issue.record("valid #\(index): expected \(expected), got \(result), input \(Self.describe(bytes))")
            }
        }
    }

    @Test func mutatedStreamsAreSafeAndSplitInvariant() throws {
        var generator = StreamGenerator(rng: SplitMix64(seed: 0xBAD_C0DE))
        var splitRNG = SplitMix64(seed: 2)
        var commands = 0
        var errors = 0
        for index in 0..<7_500 {
            let (bytes, _) = generator.stream(count: generator.int(1...6))
            let mutated = generator.mutate(bytes)
            let limits = index % 2 == 0 ? Self.limits : MemcacheDecoderLimits()
            let result = try Self.checkSplitInvariance(
                mutated, rng: &splitRNG, limits: limits, dripFeed: index % 100 == 0, context: "mutated #\(index)")
            commands += result.commands.count
            if result.error != nil { errors += 1 }
            Self.checkSilentErrors(result, context: "mutated #\(index)")
        }
        // The mutations must not all be so destructive that nothing decodes.
        #expect(commands > 10_000)
        #expect(errors < 7_500 / 10)
    }

    @Test func randomBytesAreSafeAndSplitInvariant() throws {
        var generator = StreamGenerator(rng: SplitMix64(seed: 0x5EED))
        var splitRNG = SplitMix64(seed: 3)
        var invalid = 0
        var http = 0
        for index in 0..<5_000 {
            let bytes = generator.noise()
            let result = try Self.checkSplitInvariance(
                bytes, rng: &splitRNG, limits: Self.limits, dripFeed: index % 50 == 0, context: "noise #\(index)")
            invalid += result.commands.filter { if case .invalid = $0 { true } else { false } }.count
            if result.error == .httpRequest { http += 1 }
            Self.checkSilentErrors(result, context: "noise #\(index)")
        }
        #expect(invalid > 1_000)
        // The noise does reach the HTTP rule now and then.
        #expect(http > 0)
    }

    /// Only a command that takes noreply can make its error silent, and never
    /// for having no command at all or for an over-long multiget.
    static func checkSilentErrors(_ result: DecodeResult, context: String) {
        for command in result.commands {
            guard case .invalid(let error, noreply: true) = command else { continue }
            if error == .unknownCommand || error == .lineTooLong {
                Issue.record("\(context): silent \(error)")
            }
        }
    }

    @Test func longRandomLinesHitTheLineLimit() throws {
        // Long noise without newlines: a retrieval line is answered `lineTooLong`
        // and dropped, any other closes the connection; the same way however split.
        var generator = StreamGenerator(rng: SplitMix64(seed: 0x10A6))
        var splitRNG = SplitMix64(seed: 4)
        var retrievals = 0
        for index in 0..<200 {
            var bytes = Array(generator.pick(["get ", "gats 1 ", "set ", "", "mg "]).utf8)
            while bytes.count < 5000 {
                bytes += generator.noise().filter { $0 != 0x0A }
            }
            let result = try Self.checkSplitInvariance(bytes, rng: &splitRNG, limits: Self.limits, dripFeed: false, context: "long #\(index)")
            let retrieval = ["get ", "gets ", "gat ", "gats "].contains { bytes.starts(with: Array($0.utf8)) }
            if retrieval {
                retrievals += 1
                if result != DecodeResult(commands: [invalid(.lineTooLong)]) {
                    Issue.record("long #\(index): retrieval not refused as too long: \(result)")
                }
            } else if result.error != .lineTooLong(limit: Self.limits.maxLineLength) {
                Issue.record("long #\(index): no lineTooLong: \(result)")
            }
        }
        #expect(retrievals >= 40)
    }
}
