import NIOCore

/// The memcached binary protocol's opcodes (protocol_binary.h in memcached).
public enum BinaryOpcode: UInt8, Sendable, CaseIterable {
    case get = 0x00, set = 0x01, add = 0x02, replace = 0x03, delete = 0x04
    case increment = 0x05, decrement = 0x06, quit = 0x07, flush = 0x08, getQ = 0x09
    case noop = 0x0A, version = 0x0B, getK = 0x0C, getKQ = 0x0D, append = 0x0E, prepend = 0x0F
    case stat = 0x10, setQ = 0x11, addQ = 0x12, replaceQ = 0x13, deleteQ = 0x14
    case incrementQ = 0x15, decrementQ = 0x16, quitQ = 0x17, flushQ = 0x18, appendQ = 0x19, prependQ = 0x1A
    case verbosity = 0x1B, touch = 0x1C, gat = 0x1D, gatQ = 0x1E
    case saslListMechs = 0x20, saslAuth = 0x21, saslStep = 0x22
    case gatK = 0x23, gatKQ = 0x24

    /// Whether the request carries a value to store (its body may be swallowed when too large).
    public static func isStorage(_ raw: UInt8) -> Bool {
        switch raw {
        case 0x01, 0x02, 0x03, 0x0E, 0x0F, 0x11, 0x12, 0x13, 0x19, 0x1A: return true
        default: return false
        }
    }

    /// GAT and its forms: a read that also sets a new expiry.
    public var touches: Bool {
        switch self {
        case .gat, .gatQ, .gatK, .gatKQ: return true
        default: return false
        }
    }

    /// The forms whose hit response carries the key.
    public var returnsKey: Bool {
        switch self {
        case .getK, .getKQ, .gatK, .gatKQ: return true
        default: return false
        }
    }

    /// Quiet opcodes say nothing on success (and the quiet gets nothing on a miss).
    public var isQuiet: Bool {
        switch self {
        case .getQ, .getKQ, .setQ, .addQ, .replaceQ, .deleteQ, .incrementQ, .decrementQ, .quitQ, .flushQ,
            .appendQ, .prependQ, .gatQ, .gatKQ:
            return true
        default:
            return false
        }
    }
}

/// Response status codes.
public enum BinaryStatus: UInt16, Sendable {
    case noError = 0x0000
    case keyNotFound = 0x0001
    case keyExists = 0x0002
    case valueTooLarge = 0x0003
    case invalidArguments = 0x0004
    case itemNotStored = 0x0005
    case nonNumericValue = 0x0006
    case authError = 0x0020
    case authContinue = 0x0021
    case unknownCommand = 0x0081
    case outOfMemory = 0x0082
    /// memcached's ETMPFAIL: try again (a backup whose primary is unreachable).
    case temporaryFailure = 0x0086

    /// memcached's texts for the error statuses (clients log them).
    public var message: StaticString {
        switch self {
        case .noError: return ""
        case .keyNotFound: return "Not found"
        case .keyExists: return "Data exists for key."
        case .valueTooLarge: return "Too large."
        case .invalidArguments: return "Invalid arguments"
        case .itemNotStored: return "Not stored."
        case .nonNumericValue: return "Non-numeric server-side value for incr or decr"
        case .authError: return "Auth failure."
        case .authContinue: return "Auth continue"
        case .unknownCommand: return "Unknown command"
        case .outOfMemory: return "Out of memory"
        case .temporaryFailure: return "Temporary failure"
        }
    }
}

/// One binary request: the header's fields and slices of the read buffer.
public struct BinaryRequest: Sendable, Equatable {
    public var opcode: BinaryOpcode
    public var key: ByteBuffer
    public var extras: ByteBuffer
    public var value: ByteBuffer
    public var opaque: UInt32
    public var cas: UInt64

    public init(opcode: BinaryOpcode, key: ByteBuffer, extras: ByteBuffer, value: ByteBuffer, opaque: UInt32, cas: UInt64) {
        self.opcode = opcode
        self.key = key
        self.extras = extras
        self.value = value
        self.opaque = opaque
        self.cas = cas
    }
}

/// What the binary decoder produces.
public enum BinaryCommand: Sendable, Equatable {
    /// A well-formed request.
    case request(BinaryRequest)
    /// A request refused as a whole (its body was consumed): answer `status` with this opcode and opaque.
    case refused(opcode: UInt8, opaque: UInt32, status: BinaryStatus, key: ByteBuffer)
}

/// Errors after which the binary stream cannot be trusted: the connection closes.
public enum BinaryProtocolError: Error, Sendable, Equatable {
    /// A request that does not start with the request magic 0x80.
    case badMagic(UInt8)
    /// A body larger than any request may have (the item limit plus key and extras).
    case bodyTooLarge(UInt32)
}

/// Turns bytes into binary requests. It touches no store.
public struct BinaryDecoder: Sendable {
    public static let requestMagic: UInt8 = 0x80
    public static let responseMagic: UInt8 = 0x81
    public static let headerSize = 24

    /// Where the decoder is in the stream.
    enum State: Sendable {
        case header
        /// Dropping the body of a refused request.
        case swallowing(remaining: Int)
    }

    public let limits: MemcacheDecoderLimits
    private var state = State.header

    public init(limits: MemcacheDecoderLimits = MemcacheDecoderLimits()) {
        self.limits = limits
    }

    /// The longest body accepted: the largest value, a key and the largest extras.
    var maximumBody: Int { limits.maxItemSize + limits.maxKeyLength + 20 }

    public mutating func next(_ buffer: inout ByteBuffer) throws(BinaryProtocolError) -> BinaryCommand? {
        while true {
            switch state {
            case .swallowing(let remaining):
                let dropped = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: dropped)
                guard dropped == remaining else {
                    state = .swallowing(remaining: remaining - dropped)
                    return nil
                }
                state = .header
            case .header:
                guard buffer.readableBytes >= Self.headerSize else { return nil }
                let start = buffer.readerIndex
                let magic = buffer.getInteger(at: start, as: UInt8.self)!
                guard magic == Self.requestMagic else { throw .badMagic(magic) }
                let opcode = buffer.getInteger(at: start + 1, as: UInt8.self)!
                let keyLength = Int(buffer.getInteger(at: start + 2, as: UInt16.self)!)
                let extrasLength = Int(buffer.getInteger(at: start + 4, as: UInt8.self)!)
                let bodyLength = buffer.getInteger(at: start + 8, as: UInt32.self)!
                let opaque = buffer.getInteger(at: start + 12, as: UInt32.self)!
                let cas = buffer.getInteger(at: start + 16, as: UInt64.self)!
                let body = Int(bodyLength)
                let isStorage = BinaryOpcode.isStorage(opcode)
                if body > maximumBody {
                    // A storage request's value can be dropped as it arrives; anything else this large is not a client.
                    guard isStorage else { throw .bodyTooLarge(bodyLength) }
                    buffer.moveReaderIndex(forwardBy: Self.headerSize)
                    state = .swallowing(remaining: body)
                    return .refused(opcode: opcode, opaque: opaque, status: .valueTooLarge, key: ByteBuffer())
                }
                guard buffer.readableBytes >= Self.headerSize + body else { return nil }
                buffer.moveReaderIndex(forwardBy: Self.headerSize)
                var payload = buffer.readSlice(length: body)!
                guard keyLength + extrasLength <= body else {
                    return .refused(opcode: opcode, opaque: opaque, status: .invalidArguments, key: ByteBuffer())
                }
                let extras = payload.readSlice(length: extrasLength)!
                let key = payload.readSlice(length: keyLength)!
                guard let known = BinaryOpcode(rawValue: opcode) else {
                    return .refused(opcode: opcode, opaque: opaque, status: .unknownCommand, key: ByteBuffer())
                }
                guard Self.shapeIsValid(known, extras: extrasLength, key: key, value: payload.readableBytes, limits: limits) else {
                    return .refused(opcode: opcode, opaque: opaque, status: .invalidArguments, key: key)
                }
                if isStorage, payload.readableBytes > limits.maxItemSize {
                    return .refused(opcode: opcode, opaque: opaque, status: .valueTooLarge, key: key)
                }
                return .request(BinaryRequest(opcode: known, key: key, extras: extras, value: payload, opaque: opaque, cas: cas))
            }
        }
    }

    /// The extras, key and value each opcode must (not) have (memcached's binary protocol spec).
    static func shapeIsValid(_ opcode: BinaryOpcode, extras: Int, key: ByteBuffer, value: Int, limits: MemcacheDecoderLimits) -> Bool {
        let keyValid = key.withUnsafeReadableBytes { bytes in
            bytes.count <= limits.maxKeyLength && (bytes.isEmpty || !bytes.contains { $0 == 0x0A || $0 == 0x0D || $0 == 0x00 })
        }
        guard keyValid else { return false }
        let hasKey = key.readableBytes > 0
        switch opcode {
        case .get, .getQ, .getK, .getKQ, .delete, .deleteQ:
            return extras == 0 && hasKey && value == 0
        case .set, .setQ, .add, .addQ, .replace, .replaceQ:
            return extras == 8 && hasKey
        case .append, .appendQ, .prepend, .prependQ:
            return extras == 0 && hasKey
        case .increment, .incrementQ, .decrement, .decrementQ:
            return extras == 20 && hasKey && value == 0
        case .quit, .quitQ, .noop, .version:
            return extras == 0 && !hasKey && value == 0
        case .flush, .flushQ:
            return (extras == 0 || extras == 4) && !hasKey && value == 0
        case .stat:
            return extras == 0 && value == 0
        case .verbosity:
            return extras == 4 && !hasKey && value == 0
        case .touch, .gat, .gatQ, .gatK, .gatKQ:
            return extras == 4 && hasKey && value == 0
        case .saslListMechs:
            return extras == 0 && !hasKey && value == 0
        case .saslAuth, .saslStep:
            return extras == 0 && hasKey
        }
    }
}

extension ByteBuffer {
    /// Writes one binary response: header, extras, key, value.
    public mutating func writeBinaryResponse(
        opcode: UInt8, status: BinaryStatus, opaque: UInt32, cas: UInt64 = 0,
        extras: UnsafeRawBufferPointer? = nil, key: ByteBuffer? = nil, value: UnsafeRawBufferPointer? = nil
    ) {
        let extrasCount = extras?.count ?? 0
        let keyCount = key?.readableBytes ?? 0
        let valueCount = value?.count ?? 0
        writeInteger(BinaryDecoder.responseMagic)
        writeInteger(opcode)
        writeInteger(UInt16(keyCount))
        writeInteger(UInt8(extrasCount))
        writeInteger(UInt8(0))
        writeInteger(status.rawValue)
        writeInteger(UInt32(extrasCount + keyCount + valueCount))
        writeInteger(opaque)
        writeInteger(cas)
        if let extras { writeBytes(extras) }
        if let key { writeImmutableBuffer(key) }
        if let value { writeBytes(value) }
    }

    /// An error response carrying memcached's message for the status.
    public mutating func writeBinaryError(opcode: UInt8, status: BinaryStatus, opaque: UInt32) {
        status.message.withUTF8Buffer { text in
            writeBinaryResponse(opcode: opcode, status: status, opaque: opaque, value: UnsafeRawBufferPointer(text))
        }
    }

    /// Re-encodes a request (a backup forwards binary writes this way).
    public mutating func writeBinaryRequest(_ request: BinaryRequest) {
        writeInteger(BinaryDecoder.requestMagic)
        writeInteger(request.opcode.rawValue)
        writeInteger(UInt16(request.key.readableBytes))
        writeInteger(UInt8(request.extras.readableBytes))
        writeInteger(UInt8(0))
        writeInteger(UInt16(0))
        writeInteger(UInt32(request.extras.readableBytes + request.key.readableBytes + request.value.readableBytes))
        writeInteger(request.opaque)
        writeInteger(request.cas)
        writeImmutableBuffer(request.extras)
        writeImmutableBuffer(request.key)
        writeImmutableBuffer(request.value)
    }
}

extension BinaryCommand {
    /// Whether the request can change the store (a backup forwards these).
    public var isWrite: Bool {
        guard case .request(let request) = self else { return false }
        switch request.opcode {
        case .set, .setQ, .add, .addQ, .replace, .replaceQ, .append, .appendQ, .prepend, .prependQ,
            .delete, .deleteQ, .increment, .incrementQ, .decrement, .decrementQ, .flush, .flushQ,
            .touch, .gat, .gatQ, .gatK, .gatKQ:
            return true
        case .get, .getQ, .getK, .getKQ, .quit, .quitQ, .noop, .version, .stat, .verbosity,
            .saslListMechs, .saslAuth, .saslStep:
            return false
        }
    }

    /// Whether running the write a second time leaves what running it once
    /// did, and answers the same: a `set` without a CAS token, a `touch`.
    public var isRepeatableWrite: Bool {
        guard case .request(let request) = self else { return false }
        switch request.opcode {
        case .set, .setQ: return request.cas == 0
        case .touch: return true
        default: return false
        }
    }
}
