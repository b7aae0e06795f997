import NIOCore

// The bodies of the administration messages (Protocol.md 1.4, 0x0060–0x0081):
// what `tandemctl sessions`, `backup` and `watch` ask a node for.

/// Which items a `scan` looks at, and what it returns of them.
public struct ScanRequest: Sendable, Equatable {
    /// Where to go on: the `cursor` of the previous page; empty to begin.
    public var cursor: [UInt8]
    /// At most this many items in the page (the server may return fewer).
    public var limit: UInt32
    /// Only keys that start with these bytes (empty: all).
    public var prefix: [UInt8]
    /// Only keys matching this glob (`*`, `?`, `[…]`; empty: all).
    public var match: String
    /// Only items whose value is at least this many bytes.
    public var minimumSize: UInt32
    /// Only items that expire within this many milliseconds (negative: any).
    public var expiringWithinMillis: Int64
    /// What to return.
    public var options: Options

    public struct Options: OptionSet, Sendable, Equatable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Return each item's value as well.
        public static let values = Options(rawValue: 1 << 0)
        /// Return no items, only how many matched.
        public static let countOnly = Options(rawValue: 1 << 1)
    }

    public init(
        cursor: [UInt8] = [], limit: UInt32 = 1000, prefix: [UInt8] = [], match: String = "", minimumSize: UInt32 = 0,
        expiringWithinMillis: Int64 = -1, options: Options = []
    ) {
        self.cursor = cursor
        self.limit = limit
        self.prefix = prefix
        self.match = match
        self.minimumSize = minimumSize
        self.expiringWithinMillis = expiringWithinMillis
        self.options = options
    }
}

/// One item as the administration messages describe it.
public struct SessionRecord: Sendable, Equatable {
    /// Who wrote the item's current version.
    public enum Writer: UInt8, Sendable, Equatable {
        /// A client of this node (or a write forwarded to it).
        case thisNode = 1
        /// The other node of the pair (replicated or reconciled).
        case peer = 2
    }

    public var key: [UInt8]
    /// Empty unless values were asked for.
    public var value: [UInt8]
    public var flags: UInt32
    /// Absolute, milliseconds since the epoch; 0 never expires.
    public var deadlineMillis: Int64
    public var cas: UInt64
    /// The value's size in bytes (also when the value is not sent).
    public var size: UInt32
    /// Milliseconds since the epoch of the last read or write on this node.
    public var lastAccessMillis: Int64
    public var writer: Writer

    public init(key: [UInt8], value: [UInt8], flags: UInt32, deadlineMillis: Int64, cas: UInt64, size: UInt32, lastAccessMillis: Int64, writer: Writer) {
        self.key = key
        self.value = value
        self.flags = flags
        self.deadlineMillis = deadlineMillis
        self.cas = cas
        self.size = size
        self.lastAccessMillis = lastAccessMillis
        self.writer = writer
    }
}

/// A page of a scan.
public struct ScanPage: Sendable, Equatable {
    /// Where the next page starts; empty when the scan is done.
    public var cursor: [UInt8]
    /// Items examined for this page, and how many of them matched.
    public var scanned: UInt32
    public var matched: UInt32
    public var records: [SessionRecord]

    public init(cursor: [UInt8], scanned: UInt32, matched: UInt32, records: [SessionRecord]) {
        self.cursor = cursor
        self.scanned = scanned
        self.matched = matched
        self.records = records
    }
}

/// What an `importItems` did.
public struct ImportSummary: Sendable, Equatable {
    /// Stored (new, or different from what the node held).
    public var stored: UInt64
    /// Already held exactly so: importing the same file twice changes nothing.
    public var unchanged: UInt64
    /// Past their deadline: not stored.
    public var expired: UInt64

    public init(stored: UInt64, unchanged: UInt64, expired: UInt64) {
        self.stored = stored
        self.unchanged = unchanged
        self.expired = expired
    }
}

/// What an `importItems` did with one item (version 2's `importReport`).
public enum ImportOutcome: Sendable, Equatable {
    /// New, or different from what the node held: stored.
    case stored
    /// Already held with the same value, flags and deadline: left alone.
    case unchanged
    /// Past its deadline: not stored.
    case expired
    /// Not stored, for this reason; the other items of the request were still handled.
    case rejected(ImportRejection)

    /// The `outcome u8` that starts an element of `importReport`.
    public enum Code: UInt8, Sendable, Equatable {
        case stored = 1
        case unchanged = 2
        case expired = 3
        case rejected = 4
    }

    public var code: Code {
        switch self {
        case .stored: return .stored
        case .unchanged: return .unchanged
        case .expired: return .expired
        case .rejected: return .rejected
        }
    }
}

/// Why an imported item was not stored.
public struct ImportRejection: Sendable, Equatable, CustomStringConvertible {
    public enum Reason: UInt8, Sendable, Equatable, CustomStringConvertible {
        /// A key the memcached protocols cannot address: empty, over 250
        /// bytes, or with a space or a control byte.
        case invalidKey = 1
        /// A value over the node's item size limit (`-I`).
        case tooLarge = 2
        /// The node could not store it (out of memory, `-m`).
        case notStored = 3

        public var description: String {
            switch self {
            case .invalidKey: return "invalidKey"
            case .tooLarge: return "tooLarge"
            case .notStored: return "notStored"
            }
        }
    }

    public var reason: Reason
    /// Says what is wrong in words, for the person running the import.
    public var message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason): \(message)" }
}

/// A copy of the node's database written by `backup`.
public struct BackupSummary: Sendable, Equatable {
    /// The directory holding the copy, usable as `--data-dir`.
    public var path: String
    public var bytes: UInt64
    public var items: UInt64

    public init(path: String, bytes: UInt64, items: UInt64) {
        self.path = path
        self.bytes = bytes
        self.items = items
    }
}

/// One event of a `watch` stream.
public struct WatchEvent: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, Equatable {
        /// A write: the key holds a new value.
        case upsert = 1
        /// Expired or evicted.
        case remove = 2
        /// `flush_all`: the key is empty.
        case flushAll = 3
        /// A client deleted the key.
        case delete = 4
        /// The watcher fell behind: `size` events were dropped here.
        case dropped = 5
    }

    public var kind: Kind
    public var key: [UInt8]
    /// The value's size (upserts), or the number of events dropped.
    public var size: UInt32
    public var deadlineMillis: Int64
    /// When the node released the change, milliseconds since the epoch.
    public var timeMillis: Int64

    public init(kind: Kind, key: [UInt8], size: UInt32, deadlineMillis: Int64, timeMillis: Int64) {
        self.kind = kind
        self.key = key
        self.size = size
        self.deadlineMillis = deadlineMillis
        self.timeMillis = timeMillis
    }
}

extension WireEncodedSize {
    /// A `SessionRecord` without key and value: their lengths, flags, deadline, cas, size, last access, writer.
    public static let sessionRecord = 4 + 4 + 4 + 8 + 8 + 4 + 8 + 1
    /// A `WatchEvent` without its key: kind, key length, size, deadline, time.
    public static let watchEvent = 1 + 4 + 4 + 8 + 8
    /// An `importReport` element that is not a rejection: its outcome byte.
    public static let importOutcome = 1
    /// The fixed part of a rejected `importReport` element: outcome, reason, message length.
    public static let importRejection = 1 + 1 + 4

    /// Encoded size of one `importReport` element.
    public static func importOutcome(_ outcome: ImportOutcome) -> Int {
        guard case .rejected(let rejection) = outcome else { return importOutcome }
        return importRejection + rejection.message.utf8.count
    }
}

extension ByteBuffer {
    mutating func writeSessionRecord(_ record: SessionRecord) {
        writeWireBytes(record.key)
        writeWireBytes(record.value)
        writeInteger(record.flags)
        writeInteger(record.deadlineMillis)
        writeInteger(record.cas)
        writeInteger(record.size)
        writeInteger(record.lastAccessMillis)
        writeInteger(record.writer.rawValue)
    }
}

extension ByteBuffer {
    mutating func writeImportOutcome(_ outcome: ImportOutcome) {
        writeInteger(outcome.code.rawValue)
        if case .rejected(let rejection) = outcome {
            writeInteger(rejection.reason.rawValue)
            writeWireString(rejection.message)
        }
    }
}

extension WireBodyReader {
    /// `count u32`, then that many `importReport` elements.
    mutating func importOutcomes() throws(WireProtocolError) -> [ImportOutcome] {
        let count = try count("count", minimumElementSize: WireEncodedSize.importOutcome)
        var outcomes: [ImportOutcome] = []
        outcomes.reserveCapacity(count)
        for index in 0..<count {
            element = index
            switch try enumeration("outcome", as: ImportOutcome.Code.self) {
            case .stored: outcomes.append(.stored)
            case .unchanged: outcomes.append(.unchanged)
            case .expired: outcomes.append(.expired)
            case .rejected:
                let reason = try enumeration("reason", as: ImportRejection.Reason.self)
                let message = try string("message")
                outcomes.append(.rejected(ImportRejection(reason, message)))
            }
        }
        element = nil
        return outcomes
    }

    /// `count u32`, then that many records.
    mutating func sessionRecords() throws(WireProtocolError) -> [SessionRecord] {
        let count = try count("count", minimumElementSize: WireEncodedSize.sessionRecord)
        var records: [SessionRecord] = []
        records.reserveCapacity(count)
        for index in 0..<count {
            element = index
            records.append(try sessionRecord())
        }
        element = nil
        return records
    }

    mutating func sessionRecord() throws(WireProtocolError) -> SessionRecord {
        let key = try byteArray("key")
        let value = try byteArray("value")
        let flags = try integer("flags", as: UInt32.self)
        let deadline = try integer("deadline", as: Int64.self)
        let cas = try integer("cas", as: UInt64.self)
        let size = try integer("size", as: UInt32.self)
        let lastAccess = try integer("last_access", as: Int64.self)
        let writer = try enumeration("writer", as: SessionRecord.Writer.self)
        return SessionRecord(key: key, value: value, flags: flags, deadlineMillis: deadline, cas: cas, size: size, lastAccessMillis: lastAccess, writer: writer)
    }
}
