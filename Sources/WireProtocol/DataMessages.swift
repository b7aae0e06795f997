import NIOCore

// The data messages of Protocol.md 1.4.5 (version 5 on): an application's
// get, set, add, replace, cas, touch and delete, typed.

/// A `store` request: one memcached storage command (`set`, `add`,
/// `replace` or `cas`), with a TTL in milliseconds instead of an exptime.
public struct DataWrite: Sendable, Equatable {
    /// Which storage command this is; the memcached semantics of each apply.
    public enum Mode: UInt8, Sendable, Equatable, CustomStringConvertible {
        /// Store whatever the key holds.
        case set = 1
        /// Store only if the key holds nothing (`notStored` otherwise).
        case add = 2
        /// Store only if the key holds an item (`notStored` otherwise).
        case replace = 3
        /// Store only if the item's stamp is still `stamp` (`exists` if it
        /// changed, `notFound` if the key holds nothing).
        case compareAndSet = 4

        public var description: String {
            switch self {
            case .set: return "set"
            case .add: return "add"
            case .replace: return "replace"
            case .compareAndSet: return "cas"
            }
        }
    }

    public var mode: Mode
    /// A slice of the received frame (copy it before keeping it).
    public var key: ByteBuffer
    /// A slice of the received frame (copy it before keeping it).
    public var value: ByteBuffer
    /// The client's flags, stored with the item as memcached stores them.
    public var flags: UInt32
    /// 0: never expires; above 0: expires this many milliseconds after the
    /// node runs the request (kept in whole seconds, rounded up, as
    /// memcached keeps them); below 0: already expired.
    public var ttlMillis: Int64
    /// For `compareAndSet`: the stamp the item must still have. Sent as 0
    /// and ignored for the other modes.
    public var stamp: UInt64

    public init(mode: Mode, key: ByteBuffer, value: ByteBuffer, flags: UInt32 = 0, ttlMillis: Int64 = 0, stamp: UInt64 = 0) {
        self.mode = mode
        self.key = key
        self.value = value
        self.flags = flags
        self.ttlMillis = ttlMillis
        self.stamp = stamp
    }
}

/// One item a `get` found.
public struct DataItem: Sendable, Equatable {
    /// A slice of the received frame (copy it before keeping it).
    public var key: ByteBuffer
    /// A slice of the received frame (copy it before keeping it).
    public var value: ByteBuffer
    public var flags: UInt32
    /// Absolute expiry in milliseconds since the epoch; 0 never.
    public var deadlineMillis: Int64
    /// The stamp of the write that made the item: its memcached CAS token.
    public var stamp: UInt64

    public init(key: ByteBuffer, value: ByteBuffer, flags: UInt32, deadlineMillis: Int64, stamp: UInt64) {
        self.key = key
        self.value = value
        self.flags = flags
        self.deadlineMillis = deadlineMillis
        self.stamp = stamp
    }
}

/// The answer to `store`, `touch` and `delete`.
public struct WriteResult: Sendable, Equatable {
    /// What the write came to; memcached's reply in brackets.
    public enum Outcome: UInt8, Sendable, Equatable {
        /// Stored, touched or deleted (`STORED`, `TOUCHED`, `DELETED`).
        case done = 1
        /// `add` on a live key, `replace` on a missing one (`NOT_STORED`).
        case notStored = 2
        /// `cas` with a stamp the item no longer has (`EXISTS`).
        case exists = 3
        /// `cas`, `touch` or `delete` of a key that holds nothing (`NOT_FOUND`).
        case notFound = 4
    }

    public var outcome: Outcome
    /// The stored item's new stamp (its CAS token) for a `store` that was
    /// `done`; 0 otherwise.
    public var stamp: UInt64

    public init(_ outcome: Outcome, stamp: UInt64 = 0) {
        self.outcome = outcome
        self.stamp = stamp
    }
}

/// Limits every node applies to the data messages (Protocol.md 1.4.5).
public enum DataLimits {
    /// The longest key, as in memcached: a key must be addressable by the
    /// memcached protocols too, since both reach the same items.
    public static let maximumKeyLength = 250
    /// The most keys one `get` may name. Bounded so that one request's
    /// answer cannot grow past a frame by its count alone; a `get` whose
    /// values do not fit one frame is answered `tooLarge`.
    public static let maximumKeysPerGet = 10_000

    /// Whether memcached's protocols can address `key`: 1 to 250 bytes, no
    /// space, no control byte (0x00–0x20, 0x7F).
    public static func isAddressable<Bytes: Collection>(_ key: Bytes) -> Bool where Bytes.Element == UInt8 {
        guard !key.isEmpty, key.count <= maximumKeyLength else { return false }
        return !key.contains { $0 <= 0x20 || $0 == 0x7F }
    }
}

extension WireEncodedSize {
    /// An `items` record without key and value: two lengths, flags, deadline, stamp.
    public static let dataItem = 4 + 4 + 4 + 8 + 8
    /// A `store` body without key and value: mode, two lengths, flags, ttl, stamp.
    public static let dataWrite = 1 + 4 + 4 + 4 + 8 + 8
}

extension ByteBuffer {
    mutating func writeDataItem(_ item: DataItem) {
        writeWireBytes(item.key)
        writeWireBytes(item.value)
        writeInteger(item.flags)
        writeInteger(item.deadlineMillis)
        writeInteger(item.stamp)
    }

    mutating func writeDataWrite(_ write: DataWrite) {
        writeInteger(write.mode.rawValue)
        writeWireBytes(write.key)
        writeWireBytes(write.value)
        writeInteger(write.flags)
        writeInteger(write.ttlMillis)
        writeInteger(write.stamp)
    }
}

extension WireBodyReader {
    mutating func dataKeys() throws(WireProtocolError) -> [ByteBuffer] {
        let count = try count("count", minimumElementSize: WireEncodedSize.bytesPrefix)
        var keys: [ByteBuffer] = []
        keys.reserveCapacity(count)
        for index in 0..<count {
            element = index
            keys.append(try bytes("key"))
        }
        element = nil
        return keys
    }

    mutating func dataItems() throws(WireProtocolError) -> [DataItem] {
        let count = try count("count", minimumElementSize: WireEncodedSize.dataItem)
        var items: [DataItem] = []
        items.reserveCapacity(count)
        for index in 0..<count {
            element = index
            let key = try bytes("key")
            let value = try bytes("value")
            let flags = try integer("flags", as: UInt32.self)
            let deadline = try integer("deadline", as: Int64.self)
            let stamp = try integer("stamp", as: UInt64.self)
            items.append(DataItem(key: key, value: value, flags: flags, deadlineMillis: deadline, stamp: stamp))
        }
        element = nil
        return items
    }

    mutating func dataWrite() throws(WireProtocolError) -> DataWrite {
        let mode = try enumeration("mode", as: DataWrite.Mode.self)
        let key = try bytes("key")
        let value = try bytes("value")
        let flags = try integer("flags", as: UInt32.self)
        let ttl = try integer("ttl_ms", as: Int64.self)
        let stamp = try integer("stamp", as: UInt64.self)
        return DataWrite(mode: mode, key: key, value: value, flags: flags, ttlMillis: ttl, stamp: stamp)
    }
}
