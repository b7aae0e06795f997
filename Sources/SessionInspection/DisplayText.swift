/// Makes text from a session safe to print on a terminal. Everything in a session
/// value (ids, class names, strings) comes from the application or from whoever
/// wrote to memcached, so control characters (escape sequences), line breaks and
/// bidirectional overrides are escaped rather than printed.
enum DisplayText {
    /// `text` in double quotes with Java-style escapes; at most `limit` characters of
    /// it, then `…` and how many more there are.
    static func quoted(_ text: String, limit: Int) -> String {
        var output = "\""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit {
                let rest = text.unicodeScalars.count - count
                output += "\"… (\(rest) more character\(rest == 1 ? "" : "s"))"
                return output
            }
            count += 1
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            default: appendEscaped(scalar, to: &output)
            }
        }
        return output + "\""
    }

    /// `text` with the characters that could disturb a terminal escaped, no quotes.
    static func escaped(_ text: String) -> String {
        var output = ""
        for scalar in text.unicodeScalars {
            appendEscaped(scalar, to: &output)
        }
        return output
    }

    /// A Java `char` literal (a UTF-16 unit, which may be half a surrogate pair).
    static func quoted(char unit: UInt16) -> String {
        guard let scalar = Unicode.Scalar(unit) else { return "'\\u\(hex4(unit))'" }
        switch scalar {
        case "'": return "'\\''"
        case "\\": return "'\\\\'"
        default:
            var output = "'"
            appendEscaped(scalar, to: &output)
            return output + "'"
        }
    }

    private static func appendEscaped(_ scalar: Unicode.Scalar, to output: inout String) {
        switch scalar {
        case "\n": output += "\\n"
        case "\r": output += "\\r"
        case "\t": output += "\\t"
        default:
            if needsEscape(scalar) {
                output += "\\u\(hex4(UInt16(truncatingIfNeeded: scalar.value)))"
            } else {
                output.unicodeScalars.append(scalar)
            }
        }
    }

    /// C0 and C1 controls, DEL, line/paragraph separators and the bidi embedding,
    /// override and isolate controls (all in the BMP, so `\uXXXX` can show them).
    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069, 0x200E, 0x200F, 0x061C:
            return true
        default:
            return false
        }
    }

    private static func hex4(_ value: UInt16) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: 4 - digits.count) + digits
    }
}
