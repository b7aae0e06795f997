@testable import TandemServer
import Testing

@Suite("Key globs")
struct KeyGlobTests {
    func matches(_ pattern: String, _ key: String) throws -> Bool {
        let glob = try KeyGlob(pattern)
        return Array(key.utf8).withUnsafeBytes { glob.matches($0) }
    }

    @Test("stars, question marks, classes, ranges, negation and escapes")
    func shapes() throws {
        #expect(try matches("*-n1", "ABC-n1"))
        #expect(try !matches("*-n1", "ABC-n2"))
        #expect(try matches("validity:*", "validity:ABC"))
        #expect(try matches("*", ""))
        #expect(try !matches("?", ""))
        #expect(try matches("a?c", "abc"))
        #expect(try matches("[ab]x", "bx"))
        #expect(try !matches("[ab]x", "cx"))
        #expect(try matches("[0-9A-F]*", "7F"))
        #expect(try !matches("[!0-9]*", "7F"))
        #expect(try matches("[]]", "]"))
        #expect(try matches("a\\*", "a*"))
        #expect(try !matches("a\\*", "ab"))
        #expect(try matches("*a*b*c", "xxaxxbxxc"))
        #expect(try !matches("*a*b*c", "xxaxxcxxb"))
        #expect(try matches("abc", "abc"))
        #expect(try !matches("abc", "abcd"))
    }

    @Test("bad patterns are refused with a reason")
    func refused() {
        #expect(throws: KeyGlob.PatternError.self) { try KeyGlob("[abc") }
        #expect(throws: KeyGlob.PatternError.self) { try KeyGlob(String(repeating: "a", count: 2000)) }
    }

    @Test("a pathological pattern against a long key is quick (no exponential backtracking)")
    func noBlowUp() throws {
        let pattern = String(repeating: "*a", count: 100) + "b"
        let key = String(repeating: "a", count: 250)
        let started = ContinuousClock.now
        #expect(try !matches(pattern, key))
        #expect(started.duration(to: .now) < .seconds(1))
    }
}
