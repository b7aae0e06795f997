#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A parsed configuration file: `key = value` lines in a small subset of TOML.
///
/// The format (README "Configuration file", deploy/README.md):
///
///     # comment                  whole-line or after a value
///     port = 11211               integer (decimal, optional sign, `_` between digits)
///     data-dir = "/var/lib/tandem"   basic string: \" \\ \n \t \r \b \f \uXXXX \UXXXXXXXX
///     secret-file = '/etc/tandem/secret'   literal string: no escapes
///     insecure = false           boolean
///
/// A subset of TOML so that every file is also valid TOML (editors highlight
/// it, other tools can read it); what the subset leaves out (tables, arrays,
/// floats, dates, multi-line strings, dotted or quoted keys) is refused with
/// the line it is on, never silently misread. Keys are bare: letters, digits,
/// `-` and `_`. A key may appear once.
public struct ConfigFile: Sendable, Equatable {
    /// One `key = value` line.
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: ConfigValue
        /// 1-based line number, for messages.
        public var line: Int

        public init(key: String, value: ConfigValue, line: Int) {
            self.key = key
            self.value = value
            self.line = line
        }
    }

    /// The name messages use for the file (the path it was read from).
    public var path: String
    /// The entries in file order.
    public var entries: [Entry]

    public init(path: String, entries: [Entry]) {
        self.path = path
        self.entries = entries
    }

    /// Files larger than this are refused: a configuration is a few dozen lines.
    public static let maximumSize = 1 << 20

    /// Reads and parses the file at `path`.
    public static func load(path: String) throws(ConfigFileError) -> ConfigFile {
        func fail(_ reason: String) -> ConfigFileError {
            ConfigFileError(path: path, line: nil, message: "cannot read the configuration file: \(reason)")
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw fail(String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw fail(String(cString: strerror(errno))) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        guard Int(info.st_size) <= maximumSize else { throw fail("larger than \(maximumSize >> 20) MB") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw fail(String(cString: strerror(errno)))
            }
            if count == 0 { break }
            bytes += chunk[..<count]
            guard bytes.count <= maximumSize else { throw fail("larger than \(maximumSize >> 20) MB") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw fail("not UTF-8 text") }
        return try parse(text, path: path)
    }

    /// Parses `text`; `path` only names the file in errors.
    public static func parse(_ text: String, path: String) throws(ConfigFileError) -> ConfigFile {
        var entries: [Entry] = []
        var firstLine: [String: Int] = [:]
        // CRLF line ends (a file edited on Windows) are line ends too.
        // (In Swift "\r\n" is one Character, hence both separators.)
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, rawLine) in lines.enumerated() {
            let number = index + 1
            var scanner = LineScanner(Substring(rawLine), path: path, line: number)
            scanner.skipBlank()
            if scanner.atEndOrComment { continue }
            if scanner.peek == "[" {
                throw scanner.error("tables ([section]) are not supported: write every setting as key = value at the top level")
            }
            let key = try scanner.key()
            scanner.skipBlank()
            guard scanner.take("=") else {
                throw scanner.error("expected \"=\" after \"\(key)\" (lines are key = value)")
            }
            scanner.skipBlank()
            let value = try scanner.value(for: key)
            scanner.skipBlank()
            guard scanner.atEndOrComment else {
                throw scanner.error("unexpected text after the value of \"\(key)\": \(scanner.rest.debugDescription) (a comment starts with #)")
            }
            if let first = firstLine[key] {
                throw ConfigFileError(path: path, line: number, message: "\"\(key)\" is set twice (first on line \(first))")
            }
            firstLine[key] = number
            entries.append(Entry(key: key, value: value, line: number))
        }
        return ConfigFile(path: path, entries: entries)
    }
}

/// A value in a configuration file.
public enum ConfigValue: Sendable, Equatable, CustomStringConvertible {
    case string(String)
    case integer(Int)
    case boolean(Bool)

    /// The value as it would be written in a file, for messages.
    public var description: String {
        switch self {
        case .string(let text): return text.debugDescription
        case .integer(let number): return String(number)
        case .boolean(let flag): return flag ? "true" : "false"
        }
    }

    /// What kind of value it is, for messages ("an integer").
    public var kindName: String {
        switch self {
        case .string: return "a string"
        case .integer: return "an integer"
        case .boolean: return "a boolean"
        }
    }
}

/// Why a configuration file cannot be used: always names the file, and the
/// line when one is at fault. The only error type of this module.
public struct ConfigFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    /// nil when the file as a whole is at fault (it cannot be read).
    public var line: Int?
    public var message: String

    public init(path: String, line: Int?, message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    /// `path:line: message`, the form compilers use, which editors can jump to.
    public var description: String {
        if let line { return "\(path):\(line): \(message)" }
        return "\(path): \(message)"
    }
}

/// Reads one line left to right.
private struct LineScanner {
    var text: Substring
    let path: String
    let line: Int

    init(_ text: Substring, path: String, line: Int) {
        self.text = text
        self.path = path
        self.line = line
    }

    var peek: Character? { text.first }
    var rest: String { String(text) }

    var atEndOrComment: Bool {
        guard let first = text.first else { return true }
        return first == "#"
    }

    func error(_ message: String) -> ConfigFileError {
        ConfigFileError(path: path, line: line, message: message)
    }

    mutating func skipBlank() {
        // A stray \r counts as blank space.
        while let first = text.first, first == " " || first == "\t" || first == "\r" { text.removeFirst() }
    }

    mutating func take(_ character: Character) -> Bool {
        guard text.first == character else { return false }
        text.removeFirst()
        return true
    }

    static func isKeyCharacter(_ character: Character) -> Bool {
        guard character.isASCII, let ascii = character.asciiValue else { return false }
        switch ascii {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    mutating func key() throws(ConfigFileError) -> String {
        if text.first == "\"" || text.first == "'" {
            throw error("quoted keys are not supported: write the key bare, e.g. data-dir = \"...\"")
        }
        let key = text.prefix(while: Self.isKeyCharacter)
        guard !key.isEmpty else {
            throw error("expected a setting (key = value), found \(rest.debugDescription)")
        }
        text.removeFirst(key.count)
        if text.first == "." {
            throw error("dotted keys are not supported: write every setting as key = value at the top level")
        }
        return String(key)
    }

    mutating func value(for key: String) throws(ConfigFileError) -> ConfigValue {
        guard let first = text.first, first != "#" else {
            throw error("\"\(key)\" has no value (strings are quoted: \(key) = \"...\")")
        }
        if text.hasPrefix("\"\"\"") || text.hasPrefix("'''") {
            throw error("multi-line strings are not supported")
        }
        switch first {
        case "\"": return .string(try basicString())
        case "'": return .string(try literalString())
        case "[": throw error("arrays are not supported; \"\(key)\" takes a single value")
        case "{": throw error("inline tables are not supported; \"\(key)\" takes a single value")
        default: break
        }
        // A bare word: up to blank space or a comment.
        let word = String(text.prefix { $0 != " " && $0 != "\t" && $0 != "\r" && $0 != "#" })
        text.removeFirst(word.count)
        if word == "true" { return .boolean(true) }
        if word == "false" { return .boolean(false) }
        if let number = Self.integer(word) { return .integer(number) }
        if word.lowercased() == "true" || word.lowercased() == "false" {
            throw error("booleans are written in lower case: \(key) = \(word.lowercased())")
        }
        let signless = word.first == "+" || word.first == "-" ? word.dropFirst() : Substring(word)
        if !signless.isEmpty, signless.allSatisfy({ $0 == "_" || ($0.isASCII && $0.isNumber) }) {
            throw error("\"\(key)\" = \(word): not a valid integer (decimal, no leading zeros, _ only between digits, at most \(Int.max))")
        }
        if Double(word) != nil || word == "inf" || word == "nan" {
            throw error("\"\(key)\" = \(word): only whole numbers are supported")
        }
        throw error("\"\(key)\" = \(word): not a value (strings are quoted: \(key) = \"\(word)\")")
    }

    /// A TOML decimal integer: optional sign, digits, `_` only between digits, no leading zeros.
    static func integer(_ word: String) -> Int? {
        var digits = Substring(word)
        var negative = false
        if let sign = digits.first, sign == "+" || sign == "-" {
            negative = sign == "-"
            digits.removeFirst()
        }
        guard let first = digits.first, first.isASCII, first.isNumber, let last = digits.last, last.isASCII, last.isNumber else {
            return nil
        }
        if digits.count > 1, first == "0" { return nil }
        var previousUnderscore = false
        var cleaned = ""
        for character in digits {
            if character == "_" {
                guard !previousUnderscore else { return nil }
                previousUnderscore = true
                continue
            }
            guard character.isASCII, character.isNumber else { return nil }
            previousUnderscore = false
            cleaned.append(character)
        }
        return Int(negative ? "-" + cleaned : cleaned)
    }

    mutating func literalString() throws(ConfigFileError) -> String {
        text.removeFirst()
        guard let end = text.firstIndex(of: "'") else { throw error("unterminated string: a closing ' is missing") }
        let value = String(text[..<end])
        text = text[text.index(after: end)...]
        return value
    }

    mutating func basicString() throws(ConfigFileError) -> String {
        text.removeFirst()
        var value = ""
        while let character = text.first {
            text.removeFirst()
            switch character {
            case "\"":
                return value
            case "\\":
                guard let escape = text.first else { break }
                text.removeFirst()
                switch escape {
                case "\"": value.append("\"")
                case "\\": value.append("\\")
                case "n": value.append("\n")
                case "t": value.append("\t")
                case "r": value.append("\r")
                case "b": value.append("\u{08}")
                case "f": value.append("\u{0C}")
                case "u", "U":
                    let length = escape == "u" ? 4 : 8
                    let hex = String(text.prefix(length))
                    guard hex.count == length, let scalar = UInt32(hex, radix: 16).flatMap(Unicode.Scalar.init) else {
                        throw error("bad escape \\\(escape)\(hex) in a string")
                    }
                    text.removeFirst(length)
                    value.unicodeScalars.append(scalar)
                default:
                    throw error("bad escape \\\(escape) in a string (write \\\\ for a backslash, or use 'single quotes')")
                }
            default:
                if let ascii = character.asciiValue, ascii < 0x20 && ascii != 0x09 || ascii == 0x7F {
                    throw error("control character in a string; write it as an escape")
                }
                value.append(character)
            }
        }
        throw error("unterminated string: a closing \" is missing")
    }
}
