@testable import MemcacheProtocol
import NIOCore
import TandemTestSupport
import Testing

/// Requests a client got wrong: they come out as `.invalid`, and the stream
/// stays in frame so that the next command decodes.
@Suite("Bad input")
struct BadInputTests {
    static let next = ("get next\r\n", retrieve("next"))

    @Test func unknownCommands() throws {
        try verify([
            ("foo\r\n", [invalid(.unknownCommand)]),
            ("\r\n", [invalid(.unknownCommand)]),
            ("\n", [invalid(.unknownCommand)]),
            ("   \r\n", [invalid(.unknownCommand)]),
            ("GET k\r\n", [invalid(.unknownCommand)]),
            ("gett k\r\n", [invalid(.unknownCommand)]),
            ("ge k\r\n", [invalid(.unknownCommand)]),
            ("mx k\r\n", [invalid(.unknownCommand)]),
            ("m\r\n", [invalid(.unknownCommand)]),
            ("mgg k\r\n", [invalid(.unknownCommand)]),
            ("flush_al\r\n", [invalid(.unknownCommand)]),
            ("\u{0}\r\n", [invalid(.unknownCommand)]),
            // A tab is not a separator: "get\tk" is one unknown token.
            ("get\tk\r\n", [invalid(.unknownCommand)]),
            // Too few arguments: memcached answers ERROR.
            ("get\r\n", [invalid(.unknownCommand)]),
            ("gets\r\n", [invalid(.unknownCommand)]),
            ("gat 10\r\n", [invalid(.unknownCommand)]),
            ("gats\r\n", [invalid(.unknownCommand)]),
            ("delete\r\n", [invalid(.unknownCommand)]),
            ("incr k\r\n", [invalid(.unknownCommand)]),
            ("touch k\r\n", [invalid(.unknownCommand)]),
            ("verbosity\r\n", [invalid(.unknownCommand)]),
            ("verbosity 1 noreply x\r\n", [invalid(.unknownCommand)]),
            // Too many, likewise (memcached checks the token count first), and
            // a trailing noreply does not silence it.
            ("touch k 1 noreply x\r\n", [invalid(.unknownCommand)]),
            ("incr k 1 noreply x\r\n", [invalid(.unknownCommand)]),
            ("delete k 0 noreply x\r\n", [invalid(.unknownCommand)]),
            ("delete k 0 0 noreply\r\n", [invalid(.unknownCommand)]),
            ("flush_all 1 noreply x\r\n", [invalid(.unknownCommand)]),
            ("flush_all 0 0 noreply\r\n", [invalid(.unknownCommand)]),
            ("set k 0 0 1 2 noreply\r\n", [invalid(.unknownCommand)]),
            ("cas k 0 0 1 2 3 noreply\r\n", [invalid(.unknownCommand)]),
        ])
    }

    @Test func badNumbersAndArgumentCounts() throws {
        try verify([
            ("gat x k\r\n", [invalid(.badCommandLine)]),
            ("gat 1.5 k\r\n", [invalid(.badCommandLine)]),
            ("gats 99999999999999999999 k\r\n", [invalid(.badCommandLine)]),
            ("touch k x\r\n", [invalid(.badCommandLine)]),
            ("touch k 1 2\r\n", [invalid(.badCommandLine)]),
            ("incr k 1 x\r\n", [invalid(.badCommandLine)]),
            ("delete k 0 0\r\n", [invalid(.badCommandLine)]),
            ("delete k noreply 0\r\n", [invalid(.badCommandLine)]),
            ("flush_all x\r\n", [invalid(.badCommandLine)]),
            ("flush_all 1 2\r\n", [invalid(.badCommandLine)]),
            ("flush_all noreply 1\r\n", [invalid(.badCommandLine)]),
            ("flush_all 99999999999999999999\r\n", [invalid(.badCommandLine)]),
            ("stats items now\r\n", [invalid(.badCommandLine)]),
            ("stats cachedump 1 2\r\n", [invalid(.badCommandLine)]),
            // incr/decr deltas have their own error, like memcached's "invalid numeric delta argument".
            ("incr k x\r\n", [invalid(.invalidDelta)]),
            ("incr k -1\r\n", [invalid(.invalidDelta)]),
            ("decr k +1\r\n", [invalid(.invalidDelta)]),
            ("decr k 18446744073709551616\r\n", [invalid(.invalidDelta)]),
            // A non-zero delete hold time is refused with its own error.
            ("delete k 10\r\n", [invalid(.deleteWithTime)]),
            ("delete k x noreply\r\n", [invalid(.deleteWithTime, noreply: true)]),
        ])
    }

    /// memcached reads `noreply` from the last token of a command that takes
    /// it, before checking the rest, and then sends no error either.
    @Test func noreplySilencesTheErrorsOfCommandsThatTakeIt() throws {
        let longKey = String(repeating: "k", count: 251)
        let (next, nextCommand) = Self.next
        try verify([
            ("delete k 10 noreply\r\n", [invalid(.deleteWithTime, noreply: true)]),
            ("delete \(longKey) noreply\r\n", [invalid(.badKey, noreply: true)]),
            ("delete k 0 x noreply\r\n" + next, [invalid(.unknownCommand), nextCommand]),
            ("incr k x noreply\r\n", [invalid(.invalidDelta, noreply: true)]),
            ("decr \(longKey) 1 noreply\r\n", [invalid(.badKey, noreply: true)]),
            ("touch k x noreply\r\n", [invalid(.badCommandLine, noreply: true)]),
            ("flush_all x noreply\r\n", [invalid(.badCommandLine, noreply: true)]),
            ("set k 0 0 x noreply\r\n", [invalid(.badCommandLine, noreply: true)]),
            ("set k 0 0 -1 noreply\r\n", [invalid(.badCommandLine, noreply: true)]),
            // Refused with a known length: silent, and the data block is still swallowed.
            ("set k x 0 3 noreply\r\nabc\r\n" + next, [invalid(.badCommandLine, noreply: true), nextCommand]),
            ("set \(longKey) 0 0 3 noreply\r\nabc\r\n" + next, [invalid(.badKey, noreply: true), nextCommand]),
            // `noreply` in the cas-unique slot is no number, but still the last token.
            ("cas k 0 0 3 noreply\r\nabc\r\n" + next, [invalid(.badCommandLine, noreply: true), nextCommand]),
            // The line's noreply covers its data block.
            ("set k 0 0 3 noreply\r\nabcXY" + next, [invalid(.badDataChunk, noreply: true), nextCommand]),
            ("append k 0 0 1 noreply\r\nab\r\n" + next, [invalid(.badDataChunk, noreply: true), invalid(.unknownCommand), nextCommand]),
            // Without noreply as the last token, errors are answered.
            ("set k 0 0 3\r\nabcXY" + next, [invalid(.badDataChunk), nextCommand]),
            ("delete k noreply 0\r\n", [invalid(.badCommandLine)]),
            // Unknown commands, and meta commands (which have `q`, not noreply), always answer.
            ("bogus noreply\r\n", [invalid(.unknownCommand)]),
            ("get \(longKey) noreply\r\n", [invalid(.badKey)]),
            ("mg \(longKey) noreply\r\n", [invalid(.badKey)]),
            ("ms k 3 noreply\r\nabc\r\n" + next, [invalid(.badMetaFlag("invalid flag")), nextCommand]),
        ])
        try verify(
            [("set k 0 0 11 noreply\r\n0123456789a\r\n" + next, [.refusedSet(key: bb("k"), noreply: true), nextCommand])],
            limits: MemcacheDecoderLimits(maxItemSize: 10)
        )
    }

    /// memcached closes, without a word, a connection whose request line
    /// ends in an `HTTP/` token, unless its command table claims the line.
    @Test func httpRequestLinesAreFatal() throws {
        let closing = [
            "GET / HTTP/1.0\r\n", "PUT /a/b HTTP/1.1\r\n", "DELETE HTTP/1.1\r\n", "POST /x HTTP/1.1\n", "HTTP/1.1\r\n",
            "HTTP/\r\n", "xx HTTP/1.1\r\n", "mfoo HTTP/1.1\r\n", "GET   /   HTTP/2   \r\n", "bgets x HTTP/1.1\r\n",
        ]
        for line in closing {
            let bytes = Array(("version\r\n" + line + "version\r\n").utf8)
            var rng = SplitMix64(seed: 19)
            for splits in [[], rng.splits(of: bytes.count), Array(repeating: 1, count: bytes.count)] {
                // What came before is decoded; the HTTP line ends the stream.
                #expect(try decode(bytes, splits: splits) == DecodeResult(commands: [.version], error: .httpRequest), "\(line.debugDescription)")
            }
        }
        let answered: [(String, MemcacheCommand)] = [
            // Its own commands first: a get, a meta command, an unknown two-letter meta word.
            ("get / HTTP/1.1\r\n", retrieve("/ HTTP/1.1")),
            ("mg HTTP/1.1\r\n", meta(.get, "HTTP/1.1")),
            ("mz HTTP/1.1\r\n", invalid(.unknownCommand)),
            // Words of one byte, or starting like its common commands, or that it knows.
            ("x HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("gfoo HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("sfoo HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("tfoo HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("watch HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("lru_crawler HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("stats HTTP/1.1\r\n", .stats(group: .other("HTTP/1.1"))),
            ("verbosity a b HTTP/1.1\r\n", invalid(.unknownCommand)),
            ("flush_all a b HTTP/1.1\r\n", invalid(.unknownCommand)),
            // Not the last token, not HTTP/ exactly, or past memcached's 23 tokens.
            ("GET HTTP/1.1 x\r\n", invalid(.unknownCommand)),
            ("GET / http/1.1\r\n", invalid(.unknownCommand)),
            ("GET / XHTTP/1.1\r\n", invalid(.unknownCommand)),
            ("GET / HTTP\r\n", invalid(.unknownCommand)),
            ("XX" + String(repeating: " a", count: 22) + " HTTP/1.1\r\n", invalid(.unknownCommand)),
        ]
        try verify(answered.map { ($0.0, [$0.1]) })
        #expect(try decode("XX" + String(repeating: " a", count: 21) + " HTTP/1.1\r\n").error == .httpRequest)
    }

    @Test func storageCommandLineErrorsWithoutALength() throws {
        // Without a usable <bytes> the data block cannot be found: nothing is
        // swallowed, and what the client sends next is read as commands
        // (memcached does the same; protocol.txt warns clients about it).
        try verify([
            ("set k 0 0\r\n", [invalid(.unknownCommand)]),
            ("set k 0\r\n", [invalid(.unknownCommand)]),
            ("cas k 0 0 1\r\n", [invalid(.unknownCommand)]),
            ("set k 0 0 x\r\n", [invalid(.badCommandLine)]),
            ("set k 0 0 -1\r\n", [invalid(.badCommandLine)]),
            ("set k 0 0 1.0\r\n", [invalid(.badCommandLine)]),
            ("set k 0 0 99999999999999999999\r\n", [invalid(.badCommandLine)]),
            ("set k 0 0 2147483646\r\n", [invalid(.badCommandLine)]),
            ("set k 0 0 3 noreply extra\r\nabc\r\n", [invalid(.unknownCommand), invalid(.unknownCommand)]),
            ("ms k\r\n", [invalid(.badCommandLine)]),
            ("ms k x\r\n", [invalid(.badCommandLine)]),
            ("ms k -1 T0\r\n", [invalid(.badCommandLine)]),
        ])
    }

    @Test func refusedStorageCommandsSwallowTheirDataBlock() throws {
        let longKey = String(repeating: "k", count: 251)
        let (next, nextCommand) = Self.next
        let cases: [(String, MemcacheCommand)] = [
            ("set \(longKey) 0 0 3\r\nabc\r\n", invalid(.badKey)),
            ("set a\u{1}b 0 0 3\r\nabc\r\n", invalid(.badKey)),
            ("add a\u{7F} 0 0 3\r\nabc\r\n", invalid(.badKey)),
            ("set k x 0 3\r\nabc\r\n", invalid(.badCommandLine)),
            ("set k -1 0 3\r\nabc\r\n", invalid(.badCommandLine)),
            ("set k 4294967296 0 3\r\nabc\r\n", invalid(.badCommandLine)),
            ("replace k 0 x 3\r\nabc\r\n", invalid(.badCommandLine)),
            ("set k 0 0 3 noreplyy\r\nabc\r\n", invalid(.badCommandLine)),
            ("cas k 0 0 3 x\r\nabc\r\n", invalid(.badCommandLine)),
            ("cas k 0 0 3 -1\r\nabc\r\n", invalid(.badCommandLine)),
            // A data block that itself looks like commands is swallowed all the same.
            ("set k x 0 11\r\nget a\r\nmn\r\n\r\n", invalid(.badCommandLine)),
            // Meta set: a bad flag, token, mode, key or base64 key.
            ("ms k 3 Z\r\nabc\r\n", invalid(.badMetaFlag("invalid flag"))),
            ("ms k 3 v\r\nabc\r\n", invalid(.badMetaFlag("invalid flag"))),
            ("ms k 3 T1 T2\r\nabc\r\n", invalid(.badMetaFlag("duplicate flag"))),
            ("ms k 3 Tx\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 F4294967296\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 F-1\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 C1x\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 E\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 Nx\r\nabc\r\n", invalid(.badMetaFlag("bad token in command line format"))),
            ("ms k 3 qq\r\nabc\r\n", invalid(.badMetaFlag("invalid flag"))),
            ("ms k 3 O\(String(repeating: "o", count: 33))\r\nabc\r\n", invalid(.badMetaFlag("opaque token too long"))),
            ("ms k 3 MSS\r\nabc\r\n", invalid(.invalidMetaMode)),
            ("ms k 3 M\r\nabc\r\n", invalid(.invalidMetaMode)),
            ("ms !!!! 3 b\r\nabc\r\n", invalid(.badBase64Key)),
            ("ms a2V 3 b\r\nabc\r\n", invalid(.badBase64Key)),
            ("ms \(longKey) 3\r\nabc\r\n", invalid(.badKey)),
            ("ms k\u{7F} 3 T0\r\nabc\r\n", invalid(.badKey)),
        ]
        try verify(cases.map { ($0.0 + next, [$0.1, nextCommand]) })
        // And each one alone, in random splits.
        var rng = SplitMix64(seed: 7)
        for (input, expected) in cases {
            let bytes = Array((input + next).utf8)
            for _ in 0..<20 {
                let result = try decode(bytes, splits: rng.splits(of: bytes.count))
                #expect(result == DecodeResult(commands: [expected, nextCommand]), "\(input.debugDescription)")
            }
        }
    }

    @Test func tooLargeValuesAreRefusedAndSwallowed() throws {
        let limits = MemcacheDecoderLimits(maxItemSize: 10)
        let (next, nextCommand) = Self.next
        try verify(
            [
                ("set k 0 0 10\r\n0123456789\r\n", [store(.set, "k", "0123456789")]),
                ("set k 0 0 11\r\n0123456789a\r\n" + next, [.refusedSet(key: ByteBuffer(string: "k"), noreply: false), nextCommand]),
                ("set k 0 0 11 noreply\r\n0123456789a\r\n" + next, [.refusedSet(key: ByteBuffer(string: "k"), noreply: true), nextCommand]),
                ("cas k 0 0 11 5 noreply\r\n0123456789a\r\n" + next, [invalid(.tooLarge, noreply: true), nextCommand]),
                ("ms k 10 T0\r\n0123456789\r\n", [meta(.set, "k", "T", value: "0123456789") { $0.ttl = 0 }]),
                ("ms k 11 T0\r\n0123456789a\r\n" + next, [invalid(.tooLarge), nextCommand]),
                ("ms k 11 q b\r\n0123456789a\r\n" + next, [invalid(.badBase64Key), nextCommand]),
            ],
            limits: limits
        )
    }

    @Test func badKeys() throws {
        let longKey = String(repeating: "k", count: 251)
        try verify([
            ("get \(longKey)\r\n", [invalid(.badKey)]),
            ("get a \(longKey) b\r\n", [invalid(.badKey)]),
            ("gets a\u{1}b\r\n", [invalid(.badKey)]),
            ("get a\u{0}b\r\n", [invalid(.badKey)]),
            ("get a\tb\r\n", [invalid(.badKey)]),
            ("get a\u{7F}\r\n", [invalid(.badKey)]),
            ("get a\rb\r\n", [invalid(.badKey)]),
            // A lone CR before the "\r\n" belongs to the key.
            ("get a\r\r\n", [invalid(.badKey)]),
            ("gat 1 \(longKey)\r\n", [invalid(.badKey)]),
            ("delete \(longKey)\r\n", [invalid(.badKey)]),
            ("delete a\u{1b}\r\n", [invalid(.badKey)]),
            ("incr \(longKey) 1\r\n", [invalid(.badKey)]),
            ("decr a\u{2} 1\r\n", [invalid(.badKey)]),
            ("touch \(longKey) 1\r\n", [invalid(.badKey)]),
            ("mg \(longKey) v\r\n", [invalid(.badKey)]),
            ("mg a\u{1} v\r\n", [invalid(.badKey)]),
            ("md \(longKey)\r\n", [invalid(.badKey)]),
            ("ma a\u{7F}\r\n", [invalid(.badKey)]),
            ("me \(longKey)\r\n", [invalid(.badKey)]),
        ])
        // A smaller configured key limit applies everywhere.
        try verify(
            [("get abcde\r\n", [invalid(.badKey)]), ("get abcd\r\n", [retrieve("abcd")])],
            limits: MemcacheDecoderLimits(maxKeyLength: 4)
        )
    }

    @Test func badMetaFlags() throws {
        try verify([
            ("mg\r\n", [invalid(.badCommandLine)]),
            ("md\r\n", [invalid(.badCommandLine)]),
            ("ma\r\n", [invalid(.badCommandLine)]),
            ("me\r\n", [invalid(.badCommandLine)]),
            ("mg k Z\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("mg k 1\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("mg k vv\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("mg k v v\r\n", [invalid(.badMetaFlag("duplicate flag"))]),
            ("mg k F1\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("mg k MS\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("mg k Tx\r\n", [invalid(.badMetaFlag("bad token in command line format"))]),
            ("mg k T\r\n", [invalid(.badMetaFlag("bad token in command line format"))]),
            ("mg k R99999999999999999999\r\n", [invalid(.badMetaFlag("bad token in command line format"))]),
            ("mg k C-1\r\n", [invalid(.badMetaFlag("bad token in command line format"))]),
            ("mg k O\(String(repeating: "o", count: 33))\r\n", [invalid(.badMetaFlag("opaque token too long"))]),
            // memcached bounds the whole token at 32 bytes, its O included.
            ("mg k O\(String(repeating: "o", count: 32))\r\n", [invalid(.badMetaFlag("opaque token too long"))]),
            ("md k O\(String(repeating: "o", count: 32))\r\n", [invalid(.badMetaFlag("opaque token too long"))]),
            ("ma k O\(String(repeating: "o", count: 32))\r\n", [invalid(.badMetaFlag("opaque token too long"))]),
            ("md k v\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("md k x1\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("ma k Dx\r\n", [invalid(.badMetaFlag("invalid numeric delta argument"))]),
            ("ma k D-1\r\n", [invalid(.badMetaFlag("invalid numeric delta argument"))]),
            ("ma k J-1\r\n", [invalid(.badMetaFlag("invalid numeric initial value"))]),
            ("ma k MID\r\n", [invalid(.invalidMetaMode)]),
            ("ma k M\r\n", [invalid(.invalidMetaMode)]),
            ("ma k s\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            ("me k v\r\n", [invalid(.badMetaFlag("invalid flag"))]),
            // Base64 keys: bad alphabet, bad length, misplaced padding; a token over 250 bytes is a bad key.
            ("mg k b\r\n", [invalid(.badBase64Key)]),
            ("mg a2V5! b\r\n", [invalid(.badBase64Key)]),
            ("mg ==== b\r\n", [invalid(.badBase64Key)]),
            ("mg a=V5 b\r\n", [invalid(.badBase64Key)]),
            ("mg a2==a2V5 b\r\n", [invalid(.badBase64Key)]),
            ("mg \(String(repeating: "AAAA", count: 84)) b\r\n", [invalid(.badKey)]),
            ("md a2V5* b\r\n", [invalid(.badBase64Key)]),
        ])
    }

    @Test func dataBlockWithoutCRLF() throws {
        let (next, nextCommand) = Self.next
        try verify([
            // The decoder takes <bytes> + 2 bytes, refuses them, and carries on after them.
            ("set k 0 0 3\r\nabcXY" + next, [invalid(.badDataChunk), nextCommand]),
            ("set k 0 0 3\r\nabc\n\r" + next, [invalid(.badDataChunk), nextCommand]),
            ("cas k 0 0 0 1\r\nXX" + next, [invalid(.badDataChunk), nextCommand]),
            ("ms k 3 T0\r\nabcde" + next, [invalid(.badDataChunk), nextCommand]),
            // A value one byte longer than declared: "\r\n" is misplaced; the rest is read as a line.
            ("set k 0 0 3\r\nabcd\r\n" + next, [invalid(.badDataChunk), invalid(.unknownCommand), nextCommand]),
        ])
    }

    @Test func lineTooLongThrows() throws {
        let line = [UInt8](repeating: UInt8(ascii: "a"), count: 2048)
        var rng = SplitMix64(seed: 11)
        for splits in [[], Array(repeating: 1, count: 2048), rng.splits(of: 2048, maxChunk: 300)] {
            let result = try decode(line, splits: splits)
            #expect(result.error == .lineTooLong(limit: 2048))
            #expect(result.commands.isEmpty)
        }
        // One byte short of the limit: still waiting for the newline.
        let short = try decode(Array(line.dropLast()))
        #expect(short == DecodeResult(commands: [], error: nil, leftover: 2047))
        // A line of exactly 2048 bytes with its "\r\n" decodes; one more byte does not.
        let padded = "version" + String(repeating: " ", count: 2048 - 9) + "\r\n"
        #expect(try decode(padded) == DecodeResult(commands: [.version]))
        let over = "version" + String(repeating: " ", count: 2048 - 8) + "\r\n"
        #expect(try decode(over).error == .lineTooLong(limit: 2048))
        // Commands before the long line come out first.
        let after = try decode(Array("version\r\nmn\r\n".utf8) + line)
        #expect(after == DecodeResult(commands: [.version, metaNoop], error: .lineTooLong(limit: 2048)))
        // A storage command line is bounded like any other.
        let storage = try decode("set " + String(repeating: "k ", count: 1100) + "\r\n")
        #expect(storage.error == .lineTooLong(limit: 2048))
        // The throwing API surfaces the same error.
        var decoder = MemcacheDecoder()
        var buffer = ByteBuffer(bytes: line)
        #expect(throws: MemcacheProtocolError.lineTooLong(limit: 2048)) { try decoder.next(&buffer) }
    }

    @Test func retrievalLinesHaveTheirOwnBound() throws {
        // 250 keys of 250 bytes: 62,750 bytes of keys, under the 64 KiB retrieval bound.
        let keys = (0..<250).map { index in String(repeating: Character(Unicode.Scalar(UInt8(0x21 + index % 90))), count: 250) }
        let keyRegion = keys.joined(separator: " ")
        for verb in ["get", "gets", "gat 5", "gats 5"] {
            let line = "\(verb) \(keyRegion)\r\n"
            #expect(line.utf8.count > 2048 && line.utf8.count <= 64 * 1024)
            let expected = retrieve(keyRegion, cas: verb.hasPrefix("gets") || verb.hasPrefix("gats"), touch: verb.hasPrefix("gat") ? 5 : nil)
            var rng = SplitMix64(seed: 3)
            let bytes = Array(line.utf8)
            #expect(try decode(bytes) == DecodeResult(commands: [expected]))
            #expect(try decode(bytes, splits: rng.splits(of: bytes.count, maxChunk: 4096)) == DecodeResult(commands: [expected]))
        }
        // Other commands do not get the retrieval bound, even when they start alike.
        let getx = "getx " + String(repeating: "k ", count: 1100)
        #expect(try decode(getx).error == .lineTooLong(limit: 2048))
    }

    /// memcached answers multigets of any length; Tandem's bound is far
    /// beyond real ones, and a line past it is answered, not cut off.
    @Test func retrievalLineOverTheBoundIsAnsweredAndDropped() throws {
        let limits = MemcacheDecoderLimits(maxRetrievalLineLength: 64 * 1024)
        let (next, nextCommand) = Self.next
        for verb in ["get", "gets", "gat 0", "gats 0"] {
            let huge = "\(verb) " + String(repeating: "k ", count: 40 * 1024) + "\r\n" + next
            let bytes = Array(huge.utf8)
            var rng = SplitMix64(seed: 13)
            for splits in [[], rng.splits(of: bytes.count, maxChunk: 5000), Array(repeating: 1000, count: bytes.count / 1000)] {
                let result = try decode(bytes, splits: splits, limits: limits)
                #expect(result == DecodeResult(commands: [invalid(.lineTooLong), nextCommand]), "\(verb) split \(splits.count)")
            }
        }
        // A line of exactly the bound (newline included) is still a command.
        let region = String(repeating: "k ", count: 32 * 1024 - 4) + "kk"
        let exact = "get " + region + "\r\n"
        #expect(exact.utf8.count == 64 * 1024)
        #expect(try decode(exact, limits: limits) == DecodeResult(commands: [retrieve(region)]))
        // The rest of the refused line is dropped as it arrives, never buffered.
        var decoder = MemcacheDecoder(limits: limits)
        var buffer = ByteBuffer(string: "get " + String(repeating: "k ", count: 32 * 1024))
        #expect(try decoder.next(&buffer) == invalid(.lineTooLong))
        for _ in 0..<100 {
            buffer.writeString(String(repeating: "k ", count: 500))
            #expect(try decoder.next(&buffer) == nil)
            #expect(buffer.readableBytes == 0)
        }
        buffer.writeString("k\r\nmn\r\n")
        #expect(try decoder.next(&buffer) == metaNoop)
    }

    @Test func multigetOfEighteenThousandKeys() throws {
        // memcached answers such a line (~190 KB); so does Tandem, under its default bound.
        let keys = (0..<18_000).map { "session:\($0)" }
        let region = keys.joined(separator: " ")
        for verb in ["get", "gets", "gat 60", "gats 60"] {
            let bytes = Array("\(verb) \(region)\r\n".utf8)
            #expect(bytes.count > 190_000)
            let expected = retrieve(region, cas: verb.hasPrefix("gets") || verb.hasPrefix("gats"), touch: verb.hasPrefix("gat") ? 60 : nil)
            var rng = SplitMix64(seed: 17)
            #expect(try decode(bytes, splits: rng.splits(of: bytes.count, maxChunk: 8192)) == DecodeResult(commands: [expected]))
        }
    }

    @Test func dripFedRetrievalLineAtTheBound() throws {
        // A client that sends a maximal `get` one byte per read must not make
        // the decoder rescan the line on every byte (quadratic time).
        let keys = (0..<260).map { "key-\($0)-" + String(repeating: "x", count: 240) }
        let line = "get " + keys.joined(separator: " ") + "\r\n"
        let bytes = Array(line.utf8)
        #expect(bytes.count > 64_000 && bytes.count <= 64 * 1024)
        let clock = ContinuousClock()
        var result = DecodeResult()
        let elapsed = try clock.measure {
            result = try decodeByteByByte(bytes)
        }
        #expect(result.commands.count == 1)
        #expect(result.error == nil)
        // Rescanning would be ~2 billion byte comparisons; linear is ~64 thousand.
        #expect(elapsed < .seconds(5), "drip-feeding a 64 KiB get took \(elapsed)")
    }

    @Test func hugeMultiGetDoesNotLeaveAHugeTokenArray() throws {
        var decoder = MemcacheDecoder()
        let keys = (0..<20_000).map { _ in "k" }.joined(separator: " ")
        var buffer = ByteBuffer(string: "get \(keys)\r\nget a b\r\n")
        guard case .retrieve(let command) = try decoder.next(&buffer) else {
            Issue.record("not a retrieval")
            return
        }
        #expect(command.keys.reduce(0) { count, _ in count + 1 } == 20_000)
        #expect(decoder.tokens.capacity <= MemcacheDecoder.retainedTokenCapacity)
        #expect(try decoder.next(&buffer) == retrieve("a b"))
    }

    @Test func oversizedValueIsSwallowedWithoutBuffering() throws {
        let limits = MemcacheDecoderLimits(maxItemSize: 1024)
        var decoder = MemcacheDecoder(limits: limits)
        var buffer = ByteBufferAllocator().buffer(capacity: 8192)
        let declared = 10 * 1024 * 1024
        buffer.writeString("set big 0 0 \(declared)\r\n")
        #expect(try decoder.next(&buffer) == .refusedSet(key: ByteBuffer(string: "big"), noreply: false))
        #expect(buffer.readableBytes == 0)

        let chunk = [UInt8](repeating: UInt8(ascii: "v"), count: 4096)
        var sent = 0
        var maxBuffered = 0
        while sent < declared {
            let size = min(chunk.count, declared - sent)
            buffer.writeBytes(chunk[..<size])
            sent += size
            #expect(try decoder.next(&buffer) == nil)
            maxBuffered = max(maxBuffered, buffer.readableBytes)
            // What the channel handler does with consumed bytes.
            buffer.discardReadBytes()
        }
        #expect(maxBuffered == 0)
        #expect(buffer.capacity <= 16 * 1024)
        buffer.writeString("\r\nget next\r\n")
        #expect(try decoder.next(&buffer) == retrieve("next"))
        #expect(try decoder.next(&buffer) == nil)
        #expect(buffer.readableBytes == 0)
    }

    @Test func oversizedMetaValueIsSwallowedWithoutBuffering() throws {
        let limits = MemcacheDecoderLimits(maxItemSize: 100)
        var decoder = MemcacheDecoder(limits: limits)
        var buffer = ByteBuffer()
        buffer.writeString("ms big 100000 T0 q\r\n")
        #expect(try decoder.next(&buffer) == invalid(.tooLarge))
        var rng = SplitMix64(seed: 5)
        var remaining = 100_002
        while remaining > 0 {
            let size = min(remaining, Int.random(in: 1...999, using: &rng))
            buffer.writeBytes([UInt8](repeating: 0x0A, count: size))
            remaining -= size
            #expect(try decoder.next(&buffer) == nil)
            #expect(buffer.readableBytes == 0)
        }
        buffer.writeString("mn\r\n")
        #expect(try decoder.next(&buffer) == metaNoop)
    }

    @Test func largeValueWithinTheLimitIsAssembled() throws {
        let value = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let bytes = Array("set big 1 2 \(value.count)\r\n".utf8) + value + Array("\r\nmn\r\n".utf8)
        var rng = SplitMix64(seed: 9)
        let expected: [MemcacheCommand] = [
            .store(StorageCommand(verb: .set, key: bb("big"), flags: 1, exptime: 2, noreply: false, value: bb(value))), metaNoop,
        ]
        #expect(try decode(bytes) == DecodeResult(commands: expected))
        #expect(try decode(bytes, splits: rng.splits(of: bytes.count, maxChunk: 65536)) == DecodeResult(commands: expected))
    }

    @Test func decodeLastLeavesPartialCommands() throws {
        var decoder = MemcacheDecoder()
        var buffer = ByteBuffer(string: "get a\r\nset k 0 0 5\r\nab")
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == retrieve("a"))
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == nil)
        #expect(buffer.readableBytes == 2)
    }
}
