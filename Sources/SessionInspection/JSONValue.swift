/// A JSON value, and its text with object keys sorted so the same value always
/// prints the same way (for diffs, tests and scripts).
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// Printed exactly, also past 2^53 (a consumer may then lose precision).
    case integer(Int64)
    /// Non-finite values have no JSON form and print as `null`.
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Compact JSON text (no whitespace) with sorted keys.
    public var jsonText: String {
        var output = ""
        write(to: &output, indent: nil)
        return output
    }

    /// JSON text with sorted keys, indented by two spaces per level.
    public var prettyJSONText: String {
        var output = ""
        write(to: &output, indent: "")
        return output
    }

    private func write(to output: inout String, indent: String?) {
        switch self {
        case .null:
            output += "null"
        case .bool(let value):
            output += value ? "true" : "false"
        case .integer(let value):
            output += String(value)
        case .double(let value):
            output += value.isFinite ? String(value) : "null"
        case .string(let value):
            Self.writeString(value, to: &output)
        case .array(let elements):
            guard !elements.isEmpty else {
                output += "[]"
                return
            }
            let inner = indent.map { $0 + "  " }
            output += "["
            for (index, element) in elements.enumerated() {
                if index > 0 { output += "," }
                if let inner { output += "\n" + inner }
                element.write(to: &output, indent: inner)
            }
            if let indent { output += "\n" + indent }
            output += "]"
        case .object(let members):
            guard !members.isEmpty else {
                output += "{}"
                return
            }
            let inner = indent.map { $0 + "  " }
            output += "{"
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { output += "," }
                if let inner { output += "\n" + inner }
                Self.writeString(key, to: &output)
                output += indent == nil ? ":" : ": "
                members[key]?.write(to: &output, indent: inner)
            }
            if let indent { output += "\n" + indent }
            output += "}"
        }
    }

    private static func writeString(_ value: String, to output: inout String) {
        output += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case "\u{08}": output += "\\b"
            case "\u{0C}": output += "\\f"
            default:
                // Controls must be escaped; DEL, C1 controls and the line separators
                // are escaped too so the text is also safe on a terminal and in JavaScript.
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    let digits = String(scalar.value, radix: 16)
                    output += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output += "\""
    }
}
