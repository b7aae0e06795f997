/// Java's "modified UTF-8" (`DataOutput.writeUTF`, the strings of a serialization
/// stream): UTF-8 applied to UTF-16 code units, so NUL is `C0 80` and a character
/// outside the BMP is two 3-byte surrogates. Standard UTF-8 decoding would reject
/// both, which is why this has its own decoder.
enum ModifiedUTF8 {
    /// Decodes `bytes`; `offset` is where they start in the input, for errors.
    /// Like `DataInputStream.readUTF`, a byte sequence that is not 1-, 2- or 3-byte
    /// UTF-8 is an error; overlong forms are accepted (NUL depends on one).
    /// Unpaired surrogates become U+FFFD, as Swift strings cannot hold them.
    static func decode(_ bytes: ArraySlice<UInt8>, offset: Int) throws(SessionInspectionError) -> String {
        var units: [UInt16] = []
        units.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let lead = bytes[index]
            let position = offset + (index - bytes.startIndex)
            switch lead {
            case 0x00...0x7F:
                units.append(UInt16(lead))
                index += 1
            case 0xC0...0xDF:
                guard index + 1 < bytes.endIndex, isContinuation(bytes[index + 1]) else {
                    throw .malformed(offset: position, detail: "bad 2-byte sequence in a modified UTF-8 string")
                }
                units.append(UInt16(lead & 0x1F) << 6 | UInt16(bytes[index + 1] & 0x3F))
                index += 2
            case 0xE0...0xEF:
                guard index + 2 < bytes.endIndex, isContinuation(bytes[index + 1]), isContinuation(bytes[index + 2]) else {
                    throw .malformed(offset: position, detail: "bad 3-byte sequence in a modified UTF-8 string")
                }
                units.append(UInt16(lead & 0x0F) << 12 | UInt16(bytes[index + 1] & 0x3F) << 6 | UInt16(bytes[index + 2] & 0x3F))
                index += 3
            default:
                throw .malformed(offset: position, detail: "byte 0x\(hex(lead)) cannot start a modified UTF-8 character")
            }
        }
        return String(decoding: units, as: UTF16.self)
    }

    private static func isContinuation(_ byte: UInt8) -> Bool {
        byte & 0xC0 == 0x80
    }
}

/// Two lower-case hex digits.
func hex(_ byte: UInt8) -> String {
    let digits = String(byte, radix: 16)
    return byte < 0x10 ? "0" + digits : digits
}

/// Lower-case hex digits of all `bytes`, no separators.
func hex<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
    var text = ""
    for byte in bytes { text += hex(byte) }
    return text
}
