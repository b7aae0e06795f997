import MemcacheProtocol
import NIOCore
import TandemTestSupport
import Testing

private func parseU(_ string: String) -> UInt64? {
    Array(string.utf8).withUnsafeBytes { ASCII.parseUInt64($0) }
}

private func parseI(_ string: String) -> Int64? {
    Array(string.utf8).withUnsafeBytes { ASCII.parseInt64($0) }
}

private func validKey(_ bytes: [UInt8], maxLength: Int = 250) -> Bool {
    bytes.withUnsafeBytes { ASCII.isValidKey($0, maxLength: maxLength) }
}

private func base64Decode(_ string: String) -> [UInt8]? {
    Array(string.utf8).withUnsafeBytes { Base64.decode($0) }
}

private func base64Encode(_ bytes: [UInt8]) -> String {
    var buffer = ByteBuffer()
    bytes.withUnsafeBytes { Base64.encode($0, into: &buffer) }
    return String(buffer: buffer)
}

@Suite("ASCII number parsing and keys")
struct ASCIITests {
    @Test(arguments: [
        ("0", 0), ("7", 7), ("42", 42), ("0042", 42), ("4294967296", 4_294_967_296),
        ("18446744073709551615", UInt64.max), ("09223372036854775807", 9_223_372_036_854_775_807),
    ] as [(String, UInt64)])
    func parseUInt64Accepts(_ input: String, _ expected: UInt64) {
        #expect(parseU(input) == expected)
    }

    @Test(arguments: [
        "", "-", "+", "-1", "+1", " 1", "1 ", "1a", "a1", "0x10", "1.0", "1e3", "\u{0}",
        // Overflow, by one and by a lot, and 21 digits.
        "18446744073709551616", "18446744073709551620", "99999999999999999999", "184467440737095516150",
        "100000000000000000000",
    ])
    func parseUInt64Rejects(_ input: String) {
        #expect(parseU(input) == nil)
    }

    @Test(arguments: [
        ("0", 0), ("-0", 0), ("1", 1), ("-1", -1), ("123456", 123_456), ("-123456", -123_456),
        ("9223372036854775807", Int64.max), ("-9223372036854775808", Int64.min), ("-9223372036854775807", -Int64.max),
    ] as [(String, Int64)])
    func parseInt64Accepts(_ input: String, _ expected: Int64) {
        #expect(parseI(input) == expected)
    }

    @Test(arguments: [
        "", "-", "+", "+1", "--1", "-+1", "1-", " -1", "-1 ", "-a", "1x",
        "9223372036854775808", "-9223372036854775809", "18446744073709551615", "-18446744073709551615",
        "99999999999999999999", "-99999999999999999999",
    ])
    func parseInt64Rejects(_ input: String) {
        #expect(parseI(input) == nil)
    }

    @Test func parsersAgreeWithTheStandardLibrary() {
        var rng = SplitMix64(seed: 1)
        for _ in 0..<2000 {
            let unsigned = UInt64.random(in: 0...UInt64.max, using: &rng) >> UInt64.random(in: 0..<64, using: &rng)
            #expect(parseU(String(unsigned)) == unsigned)
            let signed = Int64.random(in: Int64.min...Int64.max, using: &rng) >> Int64.random(in: 0..<63, using: &rng)
            #expect(parseI(String(signed)) == signed)
        }
    }

    @Test func validKeys() {
        #expect(validKey(Array("k".utf8)))
        #expect(validKey(Array("some:key/with-punctuation_{}[]~!".utf8)))
        #expect(validKey(Array("cl\u{e9}".utf8)))  // UTF-8 bytes >= 0x80 are allowed
        #expect(validKey([0x21, 0x7E, 0x80, 0xFF]))
        #expect(validKey([UInt8](repeating: 0x61, count: 250)))
        #expect(validKey([UInt8](repeating: 0x61, count: 10), maxLength: 10))
    }

    @Test func invalidKeys() {
        #expect(!validKey([]))
        #expect(!validKey([UInt8](repeating: 0x61, count: 251)))
        #expect(!validKey([UInt8](repeating: 0x61, count: 11), maxLength: 10))
        for control in Array(UInt8(0)...UInt8(0x20)) + [0x7F] {
            #expect(!validKey([0x61, control, 0x62]), "byte \(control)")
            #expect(!validKey([control]), "byte \(control)")
        }
    }
}

@Suite("Base64")
struct Base64Tests {
    @Test(arguments: [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"), ("key", "a2V5"),
    ] as [(String, String)])
    func rfc4648Vectors(_ plain: String, _ encoded: String) {
        #expect(base64Encode(Array(plain.utf8)) == encoded)
        if !plain.isEmpty {
            #expect(base64Decode(encoded) == Array(plain.utf8))
        }
    }

    @Test func allByteValuesAndAlphabet() {
        let all = [UInt8](0...255)
        let encoded = base64Encode(all)
        #expect(base64Decode(encoded) == all)
        #expect(base64Decode("+/+/") == [0xFB, 0xFF, 0xBF])
        #expect(base64Encode([0xFB, 0xFF, 0xBF]) == "+/+/")
    }

    @Test func roundTrips() {
        var rng = SplitMix64(seed: 2)
        for _ in 0..<2000 {
            let count = Int.random(in: 1...64, using: &rng)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let encoded = base64Encode(bytes)
            #expect(encoded.utf8.count == (count + 2) / 3 * 4)
            #expect(base64Decode(encoded) == bytes)
        }
    }

    @Test(arguments: [
        // Empty, unpadded lengths, bad characters (URL-safe alphabet, space, newline, NUL).
        "", "Z", "Zg", "Zg=", "Zm9vY", "Zm9v-_==", "Zm 9", "Zm9\n", "Zm9\u{0}", "Zm9v!A==", "\u{80}AAA",
        // Padding anywhere but the end, or "x=" followed by a non-pad.
        "====", "=AAA", "A===", "Zg==Zg==", "Zm8=Zm8=", "Zg=A", "Z=g=", "Zm9=v", "Zm==Zm9v",
    ])
    func rejects(_ input: String) {
        #expect(base64Decode(input) == nil)
    }
}

@Suite("ByteBuffer.writeDecimal")
struct WriteDecimalTests {
    private func written(_ write: (inout ByteBuffer) -> Void) -> String {
        var buffer = ByteBuffer()
        write(&buffer)
        return String(buffer: buffer)
    }

    @Test(arguments: [0, 1, 9, 10, 11, 99, 100, 1234567890, UInt64(UInt32.max), UInt64(Int64.max), UInt64.max - 1, UInt64.max] as [UInt64])
    func unsigned(_ value: UInt64) {
        #expect(written { $0.writeDecimal(value) } == String(value))
    }

    @Test(arguments: [0, 9, 10, -1, -9, -10, 42, -42, Int64.max, Int64.min, Int64.min + 1] as [Int64])
    func signed(_ value: Int64) {
        #expect(written { $0.writeDecimal(value) } == String(value))
    }

    @Test func appendsAfterExistingBytes() {
        var buffer = ByteBuffer(string: "VALUE k ")
        buffer.writeDecimal(UInt64(0))
        buffer.writeInteger(ASCII.space)
        buffer.writeDecimal(Int64.min)
        buffer.writeInteger(ASCII.space)
        buffer.writeDecimal(UInt64.max)
        #expect(String(buffer: buffer) == "VALUE k 0 -9223372036854775808 18446744073709551615")
    }

    @Test func randomValuesMatchDescription() {
        var rng = SplitMix64(seed: 4)
        for _ in 0..<2000 {
            let unsigned = UInt64.random(in: 0...UInt64.max, using: &rng) >> UInt64.random(in: 0..<64, using: &rng)
            #expect(written { $0.writeDecimal(unsigned) } == String(unsigned))
            let signed = Int64.random(in: Int64.min...Int64.max, using: &rng) >> Int64.random(in: 0..<63, using: &rng)
            #expect(written { $0.writeDecimal(signed) } == String(signed))
        }
    }
}
