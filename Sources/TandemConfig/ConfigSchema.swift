/// The settings a configuration file may hold, and how a file's entries
/// become command-line arguments.
///
/// A file is turned into arguments placed *before* the real command line,
/// so the command-line parser checks both the same way (value formats,
/// ranges, `validate()`), and a flag given on the command line wins: for an
/// option the last value counts, and entries the command line sets are left
/// out altogether (which is what makes `-v` on the command line replace the
/// file's `log-level`, and not add to its `verbose`).
public struct ConfigSchema: Sendable {
    public let keys: [ConfigKey]

    public init(keys: [ConfigKey]) {
        self.keys = keys
    }

    public func key(named name: String) -> ConfigKey? {
        keys.first { $0.name == name }
    }

    /// The value of `--config PATH` (or `--config=PATH`) on a command line;
    /// the last one when given twice, as for any option. nil when absent (or
    /// given without a value, which the command-line parser then reports).
    public static func configPath(in arguments: [String], flag: String = "--config") -> String? {
        var path: String?
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            if argument == "--" { break }
            if argument == flag, index + 1 < arguments.endIndex {
                path = arguments[index + 1]
                index += 2
                continue
            }
            if argument.hasPrefix(flag + "=") {
                path = String(argument.dropFirst(flag.count + 1))
            }
            index += 1
        }
        return path
    }

    /// Checks every entry of `file` and returns the arguments it stands for,
    /// followed by `commandLine`.
    public func merge(_ file: ConfigFile, commandLine: [String]) throws(ConfigFileError) -> MergedConfiguration {
        var arguments: [String] = []
        var applied: [ConfigFile.Entry] = []
        for entry in file.entries {
            guard let key = key(named: entry.key) else {
                var message = "unknown key \"\(entry.key)\""
                if let suggestion = suggestion(for: entry.key) { message += " (did you mean \"\(suggestion)\"?)" }
                throw ConfigFileError(path: file.path, line: entry.line, message: message)
            }
            let tokens = try key.arguments(for: entry.value, path: file.path, line: entry.line)
            // The command line overrides: an entry it sets (or one of the
            // entry's group) is left out, checked but unused.
            let group = keys.filter { $0.name == key.name || (key.group != nil && $0.group == key.group) }
            if group.contains(where: { $0.isSet(in: commandLine) }) { continue }
            arguments += tokens
            applied.append(entry)
        }
        return MergedConfiguration(path: file.path, arguments: arguments + commandLine, applied: applied)
    }

    /// The key a mistyped `name` most likely meant: the same name written
    /// as a flag (`--port`, `-p`) or with underscores, the closest name
    /// within a few edits, or the one name it is the start of.
    public func suggestion(for name: String) -> String? {
        var normalized = name.lowercased().replacingUnderscores()
        while normalized.hasPrefix("-") { normalized.removeFirst() }
        if let exact = keys.first(where: { $0.name == normalized }) { return exact.name }
        if normalized.count == 1, let short = keys.first(where: { $0.shortName.map(String.init) == normalized }) {
            return short.name
        }
        var best: (name: String, distance: Int)?
        for key in keys {
            let distance = editDistance(normalized, key.name)
            if distance <= max(2, key.name.count / 4), distance < (best?.distance ?? .max) {
                best = (key.name, distance)
            }
        }
        if let best { return best.name }
        // A name cut short ("memory" for "memory-limit"), when only one key starts so.
        let extensions = keys.filter { normalized.count >= 3 && $0.name.hasPrefix(normalized) }
        return extensions.count == 1 ? extensions.first?.name : nil
    }
}

/// A file's entries as command-line arguments, and where each came from.
public struct MergedConfiguration: Sendable {
    public let path: String
    /// The file's arguments, then the command line's.
    public let arguments: [String]
    /// The entries that took effect (those the command line did not override).
    public let applied: [ConfigFile.Entry]

    /// A command-line parser's complaint about the merged arguments, pinned to
    /// the line of the file it concerns: the first applied entry whose flag
    /// (`--port`) the message names. nil when it names none of them (the
    /// command line's own arguments are at fault).
    public func attribute(_ message: String, schema: ConfigSchema) -> ConfigFileError? {
        for entry in applied {
            guard let key = schema.key(named: entry.key) else { continue }
            if message.containsFlag("--" + key.name) {
                return ConfigFileError(path: path, line: entry.line, message: "\(entry.key) = \(entry.value): \(message)")
            }
        }
        return nil
    }
}

/// One setting: the long flag it stands for and the value it takes.
public struct ConfigKey: Sendable {
    public enum Kind: Sendable {
        /// A string option; `choices` lists the values it accepts (all when empty).
        case string(choices: [String] = [])
        /// An integer option.
        case integer
        /// A size: an integer number of bytes, or a string with a k/m/g suffix;
        /// `accepts` checks the string form as the command line would.
        case size(accepts: @Sendable (String) -> Bool)
        /// A flag without a value: `true` sets it, `false` leaves it off.
        case flag
        /// A flag that counts (`-v -v`): 0 to `max`, or a boolean (1 or 0).
        case count(max: Int)
    }

    /// The long flag without its dashes: `data-dir` for `--data-dir`.
    public let name: String
    public let kind: Kind
    /// The one-letter flag, if any (`p` for `-p`).
    public let shortName: Character?
    /// Keys of one group override each other as a whole from the command line
    /// (`verbose` and `log-level` both set the log level).
    public let group: String?

    public init(_ name: String, _ kind: Kind, short: Character? = nil, group: String? = nil) {
        self.name = name
        self.kind = kind
        self.shortName = short
        self.group = group
    }

    /// The arguments `value` stands for, or the reason it cannot be used.
    func arguments(for value: ConfigValue, path: String, line: Int) throws(ConfigFileError) -> [String] {
        func fail(_ expected: String) -> ConfigFileError {
            ConfigFileError(path: path, line: line, message: "\"\(name)\" must be \(expected), got \(value)")
        }
        // `--name=value`: a value that starts with "-" is not taken for a flag.
        switch (kind, value) {
        case (.string(let choices), .string(let text)):
            guard choices.isEmpty || choices.contains(text) else {
                throw fail("one of " + choices.map(\.debugDescription).joined(separator: ", "))
            }
            return ["--\(name)=\(text)"]
        case (.string(let choices), _):
            throw fail(choices.isEmpty ? "a string in double quotes" : "one of " + choices.map(\.debugDescription).joined(separator: ", "))
        case (.integer, .integer(let number)):
            return ["--\(name)=\(number)"]
        case (.integer, .string(let text)) where Int(text) != nil:
            throw fail("an integer, without quotes")
        case (.integer, _):
            throw fail("an integer")
        case (.size, .integer(let number)):
            return ["--\(name)=\(number)"]
        case (.size(let accepts), .string(let text)):
            guard accepts(text) else { throw fail("a size: bytes (1048576) or a string with a k, m or g suffix (\"1m\")") }
            return ["--\(name)=\(text)"]
        case (.size, .boolean):
            throw fail("a size: bytes (1048576) or a string with a k, m or g suffix (\"1m\")")
        case (.flag, .boolean(let on)):
            return on ? ["--\(name)"] : []
        case (.flag, _):
            throw fail("true or false")
        case (.count(let max), .integer(let count)):
            guard (0...max).contains(count) else { throw fail("between 0 and \(max) (or true/false)") }
            return Array(repeating: "--\(name)", count: count)
        case (.count, .boolean(let on)):
            return on ? ["--\(name)"] : []
        case (.count(let max), .string):
            throw fail("between 0 and \(max) (or true/false)")
        }
    }

    /// Whether `commandLine` sets this key: `--name`, `--name=…`, `-x`, or
    /// `x` among combined one-letter flags (`-vv`, `-Mv`).
    func isSet(in commandLine: [String]) -> Bool {
        for argument in commandLine {
            if argument == "--" { return false }
            if argument == "--\(name)" || argument.hasPrefix("--\(name)=") { return true }
            if let shortName, argument.count >= 2, argument.hasPrefix("-"), !argument.hasPrefix("--"),
                argument.dropFirst().allSatisfy({ $0.isLetter }), argument.dropFirst().contains(shortName)
            {
                return true
            }
        }
        return false
    }
}

extension String {
    func replacingUnderscores() -> String {
        String(map { $0 == "_" ? "-" : $0 })
    }

    /// Whether `flag` occurs as a whole flag (`--port` in "--port must…", not in "--port-x").
    func containsFlag(_ flag: String) -> Bool {
        var searchStart = startIndex
        while let range = self[searchStart...].range(of: flag) {
            let after = range.upperBound
            if after == endIndex { return true }
            let next = self[after]
            if !(next.isLetter || next.isNumber || next == "-" || next == "_") { return true }
            searchStart = after
        }
        return false
    }
}

/// Levenshtein distance, for suggestions among a few dozen short names.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = Array(repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}

extension Substring {
    /// Range of `other` in this substring (a dependency-free `range(of:)`).
    func range(of other: String) -> Range<Index>? {
        guard !other.isEmpty else { return nil }
        var index = startIndex
        while index < endIndex {
            if self[index...].hasPrefix(other) {
                return index..<self.index(index, offsetBy: other.count)
            }
            index = self.index(after: index)
        }
        return nil
    }
}
