import NIOCore

/// The fixed status lines of the text and meta protocols.
public enum MemcacheStatus: Sendable {
    case stored, notStored, exists, notFound, deleted, touched, end, ok, error
    /// meta: `HD`, `NS`, `EX`, `NF`, `EN`, `MN`
    case metaHeader, metaNotStored, metaExists, metaNotFound, metaMiss, metaNoop

    public var line: StaticString {
        switch self {
        case .stored: return "STORED\r\n"
        case .notStored: return "NOT_STORED\r\n"
        case .exists: return "EXISTS\r\n"
        case .notFound: return "NOT_FOUND\r\n"
        case .deleted: return "DELETED\r\n"
        case .touched: return "TOUCHED\r\n"
        case .end: return "END\r\n"
        case .ok: return "OK\r\n"
        case .error: return "ERROR\r\n"
        case .metaHeader: return "HD"
        case .metaNotStored: return "NS"
        case .metaExists: return "EX"
        case .metaNotFound: return "NF"
        case .metaMiss: return "EN\r\n"
        case .metaNoop: return "MN\r\n"
        }
    }
}

/// Writes replies into the connection's outbound buffer without intermediate strings.
extension ByteBuffer {
    /// Writes a complete status line (`STORED\r\n`, …) or a meta code (`HD`, without terminator).
    @inlinable
    public mutating func writeStatus(_ status: MemcacheStatus) {
        writeStaticString(status.line)
    }

    /// `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`
    public mutating func writeValue(key: ByteBuffer, flags: UInt32, value: UnsafeRawBufferPointer, cas: UInt64?) {
        writeStaticString("VALUE ")
        writeImmutableBuffer(key)
        writeInteger(ASCII.space)
        writeDecimal(UInt64(flags))
        writeInteger(ASCII.space)
        writeDecimal(UInt64(value.count))
        if let cas {
            writeInteger(ASCII.space)
            writeDecimal(cas)
        }
        writeStaticString("\r\n")
        writeBytes(value)
        writeStaticString("\r\n")
    }

    /// `CLIENT_ERROR <message>\r\n`
    public mutating func writeClientError(_ message: String) {
        writeStaticString("CLIENT_ERROR ")
        writeString(message)
        writeStaticString("\r\n")
    }

    /// `SERVER_ERROR <message>\r\n`
    public mutating func writeServerError(_ message: String) {
        writeStaticString("SERVER_ERROR ")
        writeString(message)
        writeStaticString("\r\n")
    }

    /// `STAT <name> <value>\r\n`
    public mutating func writeStat(_ name: String, _ value: String) {
        writeStaticString("STAT ")
        writeString(name)
        writeInteger(ASCII.space)
        writeString(value)
        writeStaticString("\r\n")
    }

    /// An unsigned decimal number, without allocating.
    @inlinable
    public mutating func writeDecimal(_ value: UInt64) {
        if value < 10 {
            writeInteger(UInt8(truncatingIfNeeded: value) &+ 0x30)
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        let count = withUnsafeMutableBytes(of: &digits) { scratch -> Int in
            var remaining = value
            var index = scratch.count
            while remaining > 0 {
                index -= 1
                scratch[index] = UInt8(truncatingIfNeeded: remaining % 10) &+ 0x30
                remaining /= 10
            }
            return scratch.count - index
        }
        _ = withUnsafeBytes(of: &digits) { scratch in
            writeBytes(UnsafeRawBufferPointer(rebasing: scratch[(scratch.count - count)...]))
        }
    }

    /// A signed decimal number, without allocating.
    @inlinable
    public mutating func writeDecimal(_ value: Int64) {
        if value < 0 {
            writeInteger(UInt8(ascii: "-"))
            writeDecimal(value.magnitude)
        } else {
            writeDecimal(UInt64(value))
        }
    }
}
