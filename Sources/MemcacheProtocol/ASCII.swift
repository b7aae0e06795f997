/// Byte constants and allocation-free number parsing for the text protocol.
public enum ASCII {
    public static let space: UInt8 = 0x20
    public static let cr: UInt8 = 0x0D
    public static let lf: UInt8 = 0x0A

    /// Parses an unsigned decimal number, rejecting empty input, signs, other
    /// characters and overflow (memcached's `safe_strtoull`).
    @inlinable
    public static func parseUInt64(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in bytes {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(byte &- 0x30))
            if o1 || o2 { return nil }
            value = sum
        }
        return value
    }

    /// Parses a signed decimal number with an optional leading `-`.
    @inlinable
    public static func parseInt64(_ bytes: UnsafeRawBufferPointer) -> Int64? {
        guard let first = bytes.first else { return nil }
        if first == UInt8(ascii: "-") {
            guard let magnitude = parseUInt64(UnsafeRawBufferPointer(rebasing: bytes.dropFirst())),
                magnitude <= UInt64(Int64.max) + 1
            else { return nil }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard let magnitude = parseUInt64(bytes), magnitude <= UInt64(Int64.max) else { return nil }
        return Int64(magnitude)
    }

    /// Whether `bytes` is a valid memcached key: 1–250 bytes, no control characters or spaces.
    @inlinable
    public static func isValidKey(_ bytes: UnsafeRawBufferPointer, maxLength: Int = 250) -> Bool {
        guard !bytes.isEmpty, bytes.count <= maxLength else { return false }
        for byte in bytes where byte <= 0x20 || byte == 0x7F {
            return false
        }
        return true
    }

    /// Whether `bytes` is a list of valid keys separated by spaces (the keys
    /// of a multiget), checked in one pass without splitting it.
    @inlinable
    public static func isValidKeyList(_ bytes: UnsafeRawBufferPointer, maxKeyLength: Int = 250) -> Bool {
        var run = 0
        for byte in bytes {
            if byte == space {
                run = 0
                continue
            }
            guard byte > 0x20, byte != 0x7F else { return false }
            run += 1
            guard run <= maxKeyLength else { return false }
        }
        return true
    }
}
