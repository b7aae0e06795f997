/// One stored item inside a shard: key and value share a single allocation,
/// and the LRU links are slot indices, so an item costs one heap object.
///
/// With persistence, the value is a cache of the log: a clean value (the
/// row `seq` names holds exactly it) may leave RAM, and the item is then
/// *cold*: `bytes` holds the key alone and `rowLength` is the value's length.
struct ItemSlot {
    /// The key bytes followed by the value bytes (the key alone while cold);
    /// empty while the slot is free.
    var bytes: [UInt8]
    /// The key's hash, kept so that growing the table never rehashes keys.
    var hash: UInt64
    /// The compare-and-swap token of the current version.
    var cas: UInt64
    /// Absolute expiry in milliseconds since the epoch; 0 never expires.
    var deadline: Int64
    /// When the item was last read or written, in milliseconds since the epoch.
    var lastAccess: Int64
    /// The seq of the newest committed row of this key in the log (0: none
    /// yet). An overwrite keeps it: until the new version commits, that row
    /// is what a crash would leave, so compaction must keep it live. Set by
    /// `SessionStore.markCommitted`; a removed item's slot starts over at 0.
    var seq: UInt64 = 0
    /// The client's opaque 32-bit flags.
    var flags: UInt32
    /// The value length of the row `seq` names (the writer's live-byte
    /// accounting subtracts it when that row stops being the key's newest).
    var rowLength: UInt32 = 0
    /// The next more recently used slot, or -1 at the head.
    var newer: Int32
    /// The next less recently used slot, or -1 at the tail.
    var older: Int32
    /// Length of the key prefix of `bytes` (keys are at most 250 bytes).
    var keyLength: UInt8
    /// Meta-protocol state bits (fetched, stale, win token sent).
    var marks: ItemMarks

    /// The value bytes held in RAM (0 while cold).
    var valueCount: Int { bytes.count - Int(keyLength) }

    /// The value's length, in RAM or not.
    var valueLength: Int { marks.contains(.cold) ? Int(rowLength) : bytes.count - Int(keyLength) }

    /// Whether the row `seq` names holds exactly this version, so the value
    /// may leave RAM: a committed row, and no version recorded since.
    var isClean: Bool { seq != 0 && !marks.contains(.dirty) }
}

/// Per-item state bits that the meta protocol exposes.
struct ItemMarks: OptionSet {
    let rawValue: UInt8
    /// The item has been read at least once since it was stored (`h` flag).
    static let fetched = ItemMarks(rawValue: 1 << 0)
    /// The item was invalidated by `md … I` or a stale `ms … I` (`X` flag).
    static let stale = ItemMarks(rawValue: 1 << 1)
    /// One client has been told it won the right to recache (`W`/`Z` flags).
    static let winTokenSent = ItemMarks(rawValue: 1 << 2)
    /// The current version came from the other node of a pair (replicated or
    /// reconciled), not from a client of this one.
    static let fromPeer = ItemMarks(rawValue: 1 << 3)
    /// A version was recorded for the writer and has not been committed as
    /// the row `seq` names: the value must stay in RAM.
    static let dirty = ItemMarks(rawValue: 1 << 4)
    /// The value is not in RAM (the item is on the cold list): reading it
    /// means reading row `seq`.
    static let cold = ItemMarks(rawValue: 1 << 5)
}

/// A read-only copy of an item's metadata plus a reference to its bytes,
/// handed out of the shard lock. Holding it costs one retain, no copy.
public struct ItemSnapshot: Sendable {
    /// Key followed by value, shared with the store (copy-on-write).
    public let storage: [UInt8]
    /// Length of the key prefix in `storage`.
    public let keyLength: Int
    /// The client flags.
    public let flags: UInt32
    /// The CAS token.
    public let cas: UInt64
    /// The absolute expiry.
    public let deadline: Deadline
    /// When the item was last read or written on this node, ms since the epoch.
    public var lastAccess: Int64 = 0
    /// Whether the current version came from the other node of a pair.
    public var fromPeer = false
    /// The seq of the key's newest committed row in the log (0: none), and
    /// that row's value length.
    public var seq: UInt64 = 0
    public var rowLength: UInt32 = 0
    /// The value is not in RAM: `storage` holds the key alone, and row `seq`
    /// (of `rowLength` value bytes) holds the value.
    public var isCold = false

    /// Number of value bytes (in RAM or, cold, in row `seq`).
    public var valueCount: Int { isCold ? Int(rowLength) : storage.count - keyLength }

    /// Calls `body` with the value bytes (none while cold).
    @inlinable
    public func withValueBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[keyLength...]))
        }
    }

    /// Calls `body` with the key bytes.
    @inlinable
    public func withKeyBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[..<keyLength]))
        }
    }

    /// The value as an array (copies; for tests and tools, not the hot path).
    public var value: [UInt8] { Array(storage[keyLength...]) }

    /// The key as an array (copies).
    public var key: [UInt8] { Array(storage[..<keyLength]) }
}
