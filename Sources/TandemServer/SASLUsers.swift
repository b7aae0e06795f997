import Foundation

/// The users allowed to authenticate with SASL PLAIN (`--sasl-users FILE`):
/// one `user:password` a line; blank lines and lines starting with `#` are
/// ignored. The file holds passwords in clear: keep it readable by the
/// service's user only (`chmod 600`).
public struct SASLUsers: Sendable {
    private let passwords: [String: [UInt8]]

    /// Why a users file cannot be used.
    public enum LoadError: Error, CustomStringConvertible {
        case unreadable(path: String, reason: String)
        case badLine(path: String, line: Int)
        case empty(path: String)

        public var description: String {
            switch self {
            case .unreadable(let path, let reason): return "cannot read the SASL users file \(path): \(reason)"
            case .badLine(let path, let line): return "\(path), line \(line): expected user:password"
            case .empty(let path): return "the SASL users file \(path) names no user"
            }
        }
    }

    public init(passwords: [String: String]) {
        self.passwords = passwords.mapValues { Array($0.utf8) }
    }

    public static func load(path: String) throws(LoadError) -> SASLUsers {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unreadable(path: path, reason: "\(error.localizedDescription)")
        }
        var passwords: [String: String] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw .badLine(path: path, line: index + 1)
            }
            passwords[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        guard !passwords.isEmpty else { throw .empty(path: path) }
        return SASLUsers(passwords: passwords)
    }

    /// Checks a PLAIN message (`authzid NUL authcid NUL password`), comparing
    /// the password in constant time.
    public func authenticatePlain(_ message: [UInt8]) -> Bool {
        let parts = message.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return false }
        let user = String(decoding: parts[1], as: UTF8.self)
        let given = Array(parts[2])
        guard let expected = passwords[user] else {
            // Spend the same time as a comparison, so user names cannot be probed by timing.
            _ = Self.constantTimeEqual(given, given)
            return false
        }
        return Self.constantTimeEqual(given, expected)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
