/// A shell-style pattern over key bytes: `*` any run, `?` one byte, `[abc]`,
/// `[a-z]` and `[!x]` classes, `\` escapes the next byte. Matching keeps only
/// the last `*` to return to, so it takes time linear in key × pattern at
/// worst (no exponential backtracking on patterns like `*a*a*a*b`).
struct KeyGlob: Sendable {
    private enum Token: Sendable {
        case byte(UInt8)
        case any
        case anyRun
        case set([ClosedRange<UInt8>], negated: Bool)
    }

    private let tokens: [Token]

    /// Longest pattern accepted: keys are at most 250 bytes.
    static let maximumLength = 1024

    /// Why a pattern was refused.
    enum PatternError: Error, CustomStringConvertible {
        case tooLong
        case unclosedClass

        var description: String {
            switch self {
            case .tooLong: return "the pattern is longer than \(KeyGlob.maximumLength) bytes"
            case .unclosedClass: return "the pattern has a '[' without its ']'"
            }
        }
    }

    init(_ pattern: String) throws(PatternError) {
        let bytes = Array(pattern.utf8)
        guard bytes.count <= Self.maximumLength else { throw .tooLong }
        var tokens: [Token] = []
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "*"):
                if case .anyRun? = tokens.last {} else { tokens.append(.anyRun) }
                index += 1
            case UInt8(ascii: "?"):
                tokens.append(.any)
                index += 1
            case UInt8(ascii: "\\") where index + 1 < bytes.count:
                tokens.append(.byte(bytes[index + 1]))
                index += 2
            case UInt8(ascii: "["):
                var cursor = index + 1
                var negated = false
                if cursor < bytes.count, bytes[cursor] == UInt8(ascii: "!") || bytes[cursor] == UInt8(ascii: "^") {
                    negated = true
                    cursor += 1
                }
                var ranges: [ClosedRange<UInt8>] = []
                var first = true
                while cursor < bytes.count, bytes[cursor] != UInt8(ascii: "]") || first {
                    first = false
                    let low = bytes[cursor]
                    if cursor + 2 < bytes.count, bytes[cursor + 1] == UInt8(ascii: "-"), bytes[cursor + 2] != UInt8(ascii: "]") {
                        let high = bytes[cursor + 2]
                        ranges.append(min(low, high)...max(low, high))
                        cursor += 3
                    } else {
                        ranges.append(low...low)
                        cursor += 1
                    }
                }
                guard cursor < bytes.count else { throw .unclosedClass }
                tokens.append(.set(ranges, negated: negated))
                index = cursor + 1
            default:
                tokens.append(.byte(byte))
                index += 1
            }
        }
        self.tokens = tokens
    }

    func matches(_ key: UnsafeRawBufferPointer) -> Bool {
        var k = 0
        var t = 0
        var star: (token: Int, key: Int)?
        while k < key.count {
            if t < tokens.count {
                switch tokens[t] {
                case .anyRun:
                    star = (t, k)
                    t += 1
                    continue
                case .any:
                    k += 1
                    t += 1
                    continue
                case .byte(let byte) where byte == key[k]:
                    k += 1
                    t += 1
                    continue
                case .set(let ranges, let negated) where ranges.contains { $0.contains(key[k]) } != negated:
                    k += 1
                    t += 1
                    continue
                case .byte, .set:
                    break
                }
            }
            // Mismatch: let the last `*` take one more byte, or fail.
            guard let last = star else { return false }
            star = (last.token, last.key + 1)
            t = last.token + 1
            k = last.key + 1
        }
        while t < tokens.count, case .anyRun = tokens[t] { t += 1 }
        return t == tokens.count
    }
}
