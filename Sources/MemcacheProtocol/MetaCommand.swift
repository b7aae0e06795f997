import NIOCore

/// Which meta command.
public enum MetaVerb: Sendable, Equatable {
    /// `mg`: get, gets, gat, touch and more through flags.
    case get
    /// `ms`: every storage mode through `M`.
    case set
    /// `md`: delete or invalidate.
    case delete
    /// `ma`: increment or decrement.
    case arithmetic
    /// `mn`: a no-op that answers `MN`, to end a quiet pipeline.
    case noop
    /// `me`: a human-readable dump of an item's metadata.
    case debug
}

/// A decoded meta command.
public struct MetaCommand: Sendable, Equatable {
    public var verb: MetaVerb
    /// The key, already base64-decoded when the `b` flag was given.
    public var key: ByteBuffer
    public var flags: MetaFlags
    /// The data block of `ms`.
    public var value: ByteBuffer?

    public init(verb: MetaVerb, key: ByteBuffer, flags: MetaFlags, value: ByteBuffer? = nil) {
        self.verb = verb
        self.key = key
        self.flags = flags
        self.value = value
    }
}

/// The flags of a meta command, with their tokens parsed.
public struct MetaFlags: Sendable, Equatable {
    /// One bit per flag letter present (`a`–`z` are bits 0–25, `A`–`Z` bits 26–51).
    public private(set) var present: UInt64 = 0
    /// The flag letters in request order; returned flags are echoed in this order.
    public private(set) var order: [UInt8] = []
    /// `O`: opaque token echoed back.
    public var opaque: ByteBuffer?
    /// `T`: new TTL (exptime semantics).
    public var ttl: Int64?
    /// `N`: vivify on miss with this TTL.
    public var vivifyTTL: Int64?
    /// `R`: win the recache token when fewer seconds than this remain.
    public var recacheSeconds: Int64?
    /// `C`: compare CAS.
    public var compareCas: UInt64?
    /// `E`: explicit new CAS.
    public var explicitCas: UInt64?
    /// `F`: client flags to store.
    public var clientFlags: UInt32?
    /// `M`: mode character.
    public var mode: UInt8?
    /// `D`: delta for `ma`.
    public var delta: UInt64?
    /// `J`: initial value for `ma` with `N`.
    public var initial: UInt64?

    public init() {}

    @inlinable
    static func bit(_ letter: UInt8) -> UInt64 {
        switch letter {
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return 1 << UInt64(letter - UInt8(ascii: "a"))
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return 1 << UInt64(26 + letter - UInt8(ascii: "A"))
        default: return 0
        }
    }

    /// Whether the flag `letter` was given.
    @inlinable
    public func has(_ letter: Unicode.Scalar) -> Bool {
        present & Self.bit(UInt8(ascii: letter)) != 0
    }

    /// Records a flag; returns false if it was already present.
    mutating func insert(_ letter: UInt8) -> Bool {
        let bit = Self.bit(letter)
        if present & bit != 0 { return false }
        present |= bit
        order.append(letter)
        return true
    }
}

/// Base64 (RFC 4648, standard alphabet, padded) for meta's binary keys.
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static func value(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return byte - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return byte - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }

    /// Decodes padded base64; nil if the input is not valid.
    public static func decode(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard input.count % 4 == 0, !input.isEmpty else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(input.count / 4 * 3)
        var index = 0
        while index < input.count {
            let last = index + 4 == input.count
            let c0 = input[index], c1 = input[index + 1], c2 = input[index + 2], c3 = input[index + 3]
            guard let v0 = value(c0), let v1 = value(c1) else { return nil }
            output.append(v0 << 2 | v1 >> 4)
            if c2 == UInt8(ascii: "=") {
                guard last, c3 == UInt8(ascii: "=") else { return nil }
            } else {
                guard let v2 = value(c2) else { return nil }
                output.append((v1 & 0x0F) << 4 | v2 >> 2)
                if c3 == UInt8(ascii: "=") {
                    guard last else { return nil }
                } else {
                    guard let v3 = value(c3) else { return nil }
                    output.append((v2 & 0x03) << 6 | v3)
                }
            }
            index += 4
        }
        return output
    }

    /// Appends the padded base64 encoding of `input` to `buffer`.
    public static func encode(_ input: UnsafeRawBufferPointer, into buffer: inout ByteBuffer) {
        var index = 0
        while index < input.count {
            let remaining = input.count - index
            let b0 = input[index]
            let b1 = remaining > 1 ? input[index + 1] : 0
            let b2 = remaining > 2 ? input[index + 2] : 0
            buffer.writeInteger(alphabet[Int(b0 >> 2)])
            buffer.writeInteger(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            buffer.writeInteger(remaining > 1 ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            buffer.writeInteger(remaining > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
    }
}
