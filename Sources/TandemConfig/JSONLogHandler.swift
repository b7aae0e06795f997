#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import Synchronization

/// `--log-format json`: one JSON object per line, for log shippers (journald
/// forwarding, Loki, Elasticsearch) that should not have to parse text:
///
///     {"time":"2026-11-22T08:07:00.123Z","level":"info","label":"tandemd","message":"listening on 127.0.0.1:11211","metadata":{"threads":"2"}}
///
/// `time` is UTC with milliseconds; `metadata` (the logger's and the call's,
/// the call's winning, plus `error` when the event carries one) is left out when empty; its values are strings, or
/// arrays and objects of them. Each line goes out in one `write` under a
/// lock, so lines from different threads never interleave.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let output: JSONLogOutput

    public init(label: String, level: Logger.Level, output: JSONLogOutput = .standardError, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.logLevel = level
        self.output = output
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let callMetadata = event.metadata { merged.merge(callMetadata) { _, new in new } }
        // An error passed with the event is one more field, as text.
        if let error = event.error { merged["error"] = .string("\(error)") }
        output.write(Self.line(time: Self.now(), level: event.level, label: label, message: event.message.description, metadata: merged))
    }

    /// The JSON line for one event, newline included.
    public static func line(time: String, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var line = "{\"time\":"
        appendString(time, to: &line)
        line += ",\"level\":"
        appendString(level.rawValue, to: &line)
        line += ",\"label\":"
        appendString(label, to: &line)
        line += ",\"message\":"
        appendString(message, to: &line)
        if !metadata.isEmpty {
            line += ",\"metadata\":"
            appendObject(metadata, to: &line)
        }
        line += "}\n"
        return line
    }

    static func appendValue(_ value: Logger.Metadata.Value, to line: inout String) {
        switch value {
        case .string(let text): appendString(text, to: &line)
        case .stringConvertible(let convertible): appendString(convertible.description, to: &line)
        case .array(let values):
            line += "["
            for (index, element) in values.enumerated() {
                if index > 0 { line += "," }
                appendValue(element, to: &line)
            }
            line += "]"
        case .dictionary(let dictionary): appendObject(dictionary, to: &line)
        }
    }

    /// Keys sorted, so equal metadata always prints the same.
    static func appendObject(_ object: Logger.Metadata, to line: inout String) {
        line += "{"
        for (index, key) in object.keys.sorted().enumerated() {
            if index > 0 { line += "," }
            appendString(key, to: &line)
            line += ":"
            if let value = object[key] { appendValue(value, to: &line) }
        }
        line += "}"
    }

    /// A JSON string (RFC 8259): quotes, backslashes and control characters escaped.
    static func appendString(_ text: String, to line: inout String) {
        line += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": line += "\\\""
            case "\\": line += "\\\\"
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                line += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: line.unicodeScalars.append(scalar)
            }
        }
        line += "\""
    }

    /// Now in UTC, `2026-11-22T08:07:00.123Z`.
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return timestamp(seconds: Int(spec.tv_sec), milliseconds: Int(spec.tv_nsec) / 1_000_000)
    }

    static func timestamp(seconds: Int, milliseconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds), 3))Z"
    }
}

/// Where JSON lines go: standard error (what systemd's journal collects), or
/// a collector in tests.
public struct JSONLogOutput: Sendable {
    let write: @Sendable (String) -> Void

    public init(_ write: @escaping @Sendable (String) -> Void) {
        self.write = write
    }

    func write(_ line: String) {
        write(line)
    }

    private static let lock = Mutex(())

    public static let standardError = JSONLogOutput { line in
        let bytes = Array(line.utf8)
        lock.withLock { _ in writeAll(bytes, to: STDERR_FILENO) }
    }
}

/// Writes every byte, retrying short writes and interruptions.
private func writeAll(_ bytes: [UInt8], to descriptor: Int32) {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { buffer in
            write(descriptor, buffer.baseAddress?.advanced(by: offset), buffer.count - offset)
        }
        if written < 0 {
            if errno == EINTR { continue }
            return  // Nowhere to report that logging failed.
        }
        offset += written
    }
}
