@testable import MemcacheProtocol
import NIOCore
import Testing

/// The meta commands `mg`, `ms`, `md`, `ma`, `mn`, `me` with every flag the decoder knows.
@Suite("Meta protocol decoding")
struct MetaCommandDecoderTests {
    @Test func noop() throws {
        try verify([
            ("mn\r\n", [metaNoop]),
            ("mn\n", [metaNoop]),
            ("mn\r\nmn\r\n", [metaNoop, metaNoop]),
        ])
    }

    @Test func metaGet() throws {
        try verify([
            ("mg k\r\n", [meta(.get, "k")]),
            ("mg k v\r\n", [meta(.get, "k", "v")]),
            // Every flag without a token, in request order.
            ("mg k b\r\n", [invalid(.badBase64Key)]),
            ("mg k c f h k l q s t u v\r\n", [meta(.get, "k", "cfhklqstuv")]),
            ("mg k v q k\r\n", [meta(.get, "k", "vqk")]),
            // Every flag with a token.
            (
                "mg k Oabc T30 N60 R10 E77 C88\r\n",
                [
                    meta(.get, "k", "OTNREC") {
                        $0.opaque = bb("abc")
                        $0.ttl = 30
                        $0.vivifyTTL = 60
                        $0.recacheSeconds = 10
                        $0.explicitCas = 77
                        $0.compareCas = 88
                    }
                ]
            ),
            ("mg k T-1\r\n", [meta(.get, "k", "T") { $0.ttl = -1 }]),
            ("mg k N0 R-5\r\n", [meta(.get, "k", "NR") { $0.vivifyTTL = 0; $0.recacheSeconds = -5 }]),
            ("mg k C18446744073709551615\r\n", [meta(.get, "k", "C") { $0.compareCas = .max }]),
            // An opaque may be empty, or up to 31 bytes (memcached bounds the token, O included, at 32).
            ("mg k O\r\n", [meta(.get, "k", "O") { $0.opaque = bb("") }]),
            (
                "mg k O\(String(repeating: "o", count: 31)) v\r\n",
                [meta(.get, "k", "Ov") { $0.opaque = bb(String(repeating: "o", count: 31)) }]
            ),
            // P and L are proxy hints: accepted, ignored, not recorded.
            ("mg k Pfoo v Lbar\r\n", [meta(.get, "k", "v")]),
            ("mg k P L\r\n", [meta(.get, "k")]),
        ])
    }

    @Test func flagOrderIsRecorded() throws {
        let result = try decode("mg k v O1 k c t T9 q\r\n")
        guard case .meta(let command) = try #require(result.commands.first) else {
            Issue.record("not meta: \(result)")
            return
        }
        #expect(command.flags.order == Array("vOkctTq".utf8))
        for letter in "vOkctTq".unicodeScalars {
            #expect(command.flags.has(letter))
        }
        for letter in "bfhlsuCENRFMDJIx".unicodeScalars {
            #expect(!command.flags.has(letter))
        }
    }

    @Test func base64Keys() throws {
        try verify([
            ("mg a2V5 b v\r\n", [meta(.get, "key", "bv")]),
            // Binary keys may hold spaces, control bytes, anything.
            ("mg AAEC/w== b\r\n", [meta(.get, bb([0, 1, 2, 0xFF]), "b")]),
            ("mg IA== b k\r\n", [meta(.get, bb(" "), "bk")]),
            ("ms a2V5 2 b T0\r\nhi\r\n", [meta(.set, "key", "bT", value: "hi") { $0.ttl = 0 }]),
            ("md a2V5 b q\r\n", [meta(.delete, "key", "bq")]),
            ("ma a2V5 b\r\n", [meta(.arithmetic, "key", "b")]),
            ("me a2V5 b\r\n", [meta(.debug, "key", "b")]),
        ])
    }

    /// memcached bounds the key token before decoding base64: 250 characters,
    /// so 186 raw bytes (248 characters) fit and 187 (252) do not.
    @Test func base64KeyOfMaximumLength() throws {
        func encoded(_ count: Int) -> ([UInt8], String) {
            var buffer = ByteBuffer()
            let raw = [UInt8](repeating: 0xAB, count: count)
            raw.withUnsafeBytes { Base64.encode($0, into: &buffer) }
            return (raw, String(buffer: buffer))
        }
        let (raw, longest) = encoded(186)
        #expect(longest.utf8.count == 248)
        let (_, tooLong) = encoded(187)
        #expect(tooLong.utf8.count == 252)
        try verify([
            ("mg \(longest) b v\r\n", [meta(.get, bb(raw), "bv")]),
            ("mg \(tooLong) b v\r\n", [invalid(.badKey)]),
            ("md \(tooLong) b\r\n", [invalid(.badKey)]),
            // 250 characters is not whole base64; 251 is over the token bound.
            ("mg \(String(repeating: "A", count: 250)) b\r\n", [invalid(.badBase64Key)]),
            ("mg \(String(repeating: "A", count: 251)) b\r\n", [invalid(.badKey)]),
            // An ms refused for its key still swallows its data block.
            ("ms \(tooLong) 2 b\r\nhi\r\nmn\r\n", [invalid(.badKey), metaNoop]),
        ])
    }

    @Test func metaSet() throws {
        try verify([
            ("ms k 3\r\nabc\r\n", [meta(.set, "k", value: "abc")]),
            ("ms k 0\r\n\r\n", [meta(.set, "k", value: "")]),
            (
                "ms k 3 c C10 E11 F5 I k Oxy q s T60 MS N30\r\nabc\r\n",
                [
                    meta(.set, "k", "cCEFIkOqsTMN", value: "abc") {
                        $0.compareCas = 10
                        $0.explicitCas = 11
                        $0.clientFlags = 5
                        $0.opaque = bb("xy")
                        $0.ttl = 60
                        $0.mode = UInt8(ascii: "S")
                        $0.vivifyTTL = 30
                    }
                ]
            ),
            ("ms k 1 F4294967295\r\nx\r\n", [meta(.set, "k", "F", value: "x") { $0.clientFlags = .max }]),
            ("ms k 1 S\r\nx\r\n", [meta(.set, "k", "S", value: "x")]),
            // Every mode letter, passed through for the dispatcher to judge.
            ("ms k 1 ME\r\nx\r\n", [meta(.set, "k", "M", value: "x") { $0.mode = UInt8(ascii: "E") }]),
            ("ms k 1 MA\r\nx\r\n", [meta(.set, "k", "M", value: "x") { $0.mode = UInt8(ascii: "A") }]),
            ("ms k 1 MP\r\nx\r\n", [meta(.set, "k", "M", value: "x") { $0.mode = UInt8(ascii: "P") }]),
            ("ms k 1 MR\r\nx\r\n", [meta(.set, "k", "M", value: "x") { $0.mode = UInt8(ascii: "R") }]),
            ("ms k 1 Ma\r\nx\r\n", [meta(.set, "k", "M", value: "x") { $0.mode = UInt8(ascii: "a") }]),
            // The data block is opaque.
            ("ms k 4 q\r\n\r\n\r\n\r\n", [meta(.set, "k", "q", value: "\r\n\r\n")]),
        ])
    }

    @Test func metaDelete() throws {
        try verify([
            ("md k\r\n", [meta(.delete, "k")]),
            (
                "md k C1 E2 I k Oa q T5 x\r\n",
                [
                    meta(.delete, "k", "CEIkOqTx") {
                        $0.compareCas = 1
                        $0.explicitCas = 2
                        $0.opaque = bb("a")
                        $0.ttl = 5
                    }
                ]
            ),
        ])
    }

    @Test func metaArithmetic() throws {
        try verify([
            ("ma k\r\n", [meta(.arithmetic, "k")]),
            (
                "ma k D5 J10 N0 T60 MD Oz q t c v k C4 E9\r\n",
                [
                    meta(.arithmetic, "k", "DJNTMOqtcvkCE") {
                        $0.delta = 5
                        $0.initial = 10
                        $0.vivifyTTL = 0
                        $0.ttl = 60
                        $0.mode = UInt8(ascii: "D")
                        $0.opaque = bb("z")
                        $0.compareCas = 4
                        $0.explicitCas = 9
                    }
                ]
            ),
            ("ma k M+ D18446744073709551615\r\n", [meta(.arithmetic, "k", "MD") { $0.mode = UInt8(ascii: "+"); $0.delta = .max }]),
            ("ma k M- J0\r\n", [meta(.arithmetic, "k", "MJ") { $0.mode = UInt8(ascii: "-"); $0.initial = 0 }]),
            ("ma k MI\r\n", [meta(.arithmetic, "k", "M") { $0.mode = UInt8(ascii: "I") }]),
        ])
    }

    @Test func metaDebug() throws {
        try verify([
            ("me k\r\n", [meta(.debug, "k")]),
            ("me some:key\r\n", [meta(.debug, "some:key")]),
        ])
    }

    @Test func metaAndTextInterleaved() throws {
        try verify([
            (
                "mg a v q\r\nmg b v q\r\nget c\r\nms d 1 q\r\n1\r\nset e 0 0 1 noreply\r\n2\r\nmn\r\n",
                [
                    meta(.get, "a", "vq"), meta(.get, "b", "vq"), retrieve("c"), meta(.set, "d", "q", value: "1"),
                    store(.set, "e", noreply: true, "2"), metaNoop,
                ]
            )
        ])
    }
}
