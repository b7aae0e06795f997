import SessionInspection

/// Writes Java serialization streams by hand (a class, so calls chain), for inputs no JDK writes (malformed
/// ones, limits) and for elements the vectors lack (long strings, long blocks).
final class StreamBuilder {
    enum Code: UInt8 {
        case null = 0x70, reference = 0x71, classDescriptor = 0x72, object = 0x73, string = 0x74, array = 0x75
        case `class` = 0x76, blockData = 0x77, endBlockData = 0x78, reset = 0x79, blockDataLong = 0x7A
        case exception = 0x7B, longString = 0x7C, proxyClassDescriptor = 0x7D, enumConstant = 0x7E
    }

    static let baseHandle: UInt32 = 0x7E_0000
    static let serializable: UInt8 = 0x02
    static let writeMethod: UInt8 = 0x01
    static let externalizable: UInt8 = 0x04
    static let blockDataMode: UInt8 = 0x08

    var bytes: [UInt8]

    /// Starts with the stream header unless told not to.
    init(header: Bool = true) {
        bytes = header ? [0xAC, 0xED, 0x00, 0x05] : []
    }

    @discardableResult func code(_ code: Code) -> StreamBuilder { bytes.append(code.rawValue); return self }
    @discardableResult func u8(_ value: UInt8) -> StreamBuilder { bytes.append(value); return self }
    @discardableResult func u16(_ value: UInt16) -> StreamBuilder { integer(UInt64(value), width: 2) }
    @discardableResult func u32(_ value: UInt32) -> StreamBuilder { integer(UInt64(value), width: 4) }
    @discardableResult func u64(_ value: UInt64) -> StreamBuilder { integer(value, width: 8) }
    @discardableResult func raw(_ more: [UInt8]) -> StreamBuilder { bytes += more; return self }

    @discardableResult func integer(_ value: UInt64, width: Int) -> StreamBuilder {
        for index in (0..<width).reversed() {
            bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))))
        }
        return self
    }

    /// A `writeUTF` string (ASCII only here, which is the same in modified UTF-8).
    @discardableResult func utf(_ text: String) -> StreamBuilder {
        u16(UInt16(text.utf8.count))
        return raw(Array(text.utf8))
    }

    @discardableResult func string(_ text: String) -> StreamBuilder {
        code(.string)
        return utf(text)
    }

    @discardableResult func reference(_ handleIndex: Int) -> StreamBuilder {
        code(.reference)
        return u32(Self.baseHandle + UInt32(handleIndex))
    }

    /// `TC_CLASSDESC` with its fields (`(type code, name, signature for L/[)`), an empty
    /// annotation and, unless `superclass` adds one, no superclass.
    @discardableResult func classDescriptor(
        _ name: String, flags: UInt8 = serializable, fields: [(Character, String, String?)] = [],
        superclass: ((StreamBuilder) -> Void)? = nil
    ) -> StreamBuilder {
        code(.classDescriptor)
        utf(name)
        u64(1)
        u8(flags)
        u16(UInt16(fields.count))
        for (type, name, signature) in fields {
            u8(type.asciiValue ?? 0)
            utf(name)
            if let signature { string(signature) }
        }
        code(.endBlockData)
        if let superclass {
            superclass(self)
        } else {
            code(.null)
        }
        return self
    }
}

/// Builds msm session values around an attributes block (FORMAT.md 2.2).
struct SessionValueBuilder {
    var version: Int16 = 2
    var id = "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1"
    var creationTime: Int64 = 1_795_319_222_551
    var lastAccessedTime: Int64 = 1_795_319_224_782
    var maxInactiveInterval: Int32 = 1800
    var isNew: UInt8 = UInt8(ascii: "0")
    var isValid: UInt8 = UInt8(ascii: "1")
    var thisAccessedTime: Int64 = 1_795_319_224_782
    var lastBackupTime: Int64 = 1_795_319_224_782
    var authType: UInt16 = 0
    var principal: [UInt8] = []
    var savedRequest: [UInt8] = []
    var savedPrincipal: [UInt8] = []
    /// Added to the computed fieldsLength, to make it wrong.
    var fieldsLengthError = 0
    /// The attributes block: by default an empty one (`Integer(0)`).
    var attributes: [UInt8] = SessionValueBuilder.attributesBlock(count: 0)

    var bytes: [UInt8] {
        let fields = StreamBuilder(header: false)
        let idBytes = Array(id.utf8)
        var fieldsLength = 44 + idBytes.count + 4 + principal.count
        if version >= 2 { fieldsLength += 4 + savedRequest.count + savedPrincipal.count }
        fields.u16(UInt16(bitPattern: version))
        fields.u16(UInt16(truncatingIfNeeded: fieldsLength + fieldsLengthError))
        fields.u64(UInt64(bitPattern: creationTime)).u64(UInt64(bitPattern: lastAccessedTime))
        fields.u32(UInt32(bitPattern: maxInactiveInterval)).u8(isNew).u8(isValid)
        fields.u64(UInt64(bitPattern: thisAccessedTime)).u64(UInt64(bitPattern: lastBackupTime))
        fields.u16(UInt16(idBytes.count)).raw(idBytes)
        fields.u16(authType)
        fields.u16(UInt16(principal.count)).raw(principal)
        if version >= 2 {
            fields.u16(UInt16(savedRequest.count)).raw(savedRequest)
            fields.u16(UInt16(savedPrincipal.count)).raw(savedPrincipal)
        }
        return fields.bytes + attributes
    }

    /// A stream with `Integer(count)` and then `pairs` as written by `body`.
    static func attributesBlock(count: Int32, body: (StreamBuilder) -> Void = { _ in }) -> [UInt8] {
        let stream = StreamBuilder()
        stream.integer(count)
        body(stream)
        return stream.bytes
    }
}

extension StreamBuilder {
    /// A `java.lang.Integer` with its class descriptors written out (handles 0…2 when
    /// first in a stream: Integer's descriptor, Number's, the object).
    @discardableResult func integer(_ value: Int32) -> StreamBuilder {
        code(.object)
        classDescriptor("java.lang.Integer", fields: [("I", "value", nil)]) { stream in
            stream.classDescriptor("java.lang.Number")
        }
        return u32(UInt32(bitPattern: value))
    }
}
