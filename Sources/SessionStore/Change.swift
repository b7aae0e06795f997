import Synchronization

/// One mutation of the store, in the order the store made it.
///
/// Persistence and replication both consume this stream. A change shares the
/// item's storage (one retain, no copy).
public struct Change: Sendable {
    /// What happened to the key.
    public enum Kind: Sendable, Equatable {
        /// The key now holds this value, flags, deadline and stamp (set, add,
        /// append, incr, touch, …: every write leaves a complete item).
        case upsert
        /// The key is gone through expiry or eviction: the other node expires it
        /// too (deadlines are absolute), so no tombstone is kept.
        case remove
        /// A client deleted the key; `stamp` is the delete's, kept as a tombstone.
        case delete
        /// Every item is gone (`flush_all`), as of `stamp`; recorded
        /// once per shard with one sequence number.
        case flushAll
    }

    public var kind: Kind
    /// Position in the store's change stream; later changes have larger numbers.
    public var sequence: UInt64
    /// Key followed by value (for `.remove`, the value bytes are ignored; for `.flushAll`, empty).
    public var storage: [UInt8]
    public var keyLength: Int
    public var flags: UInt32
    /// The hybrid logical clock stamp of the write: the item's CAS for an
    /// upsert, the delete's or the flush's own stamp otherwise. Merges
    /// compare it (newest wins) and the other node keeps it unchanged.
    public var stamp: UInt64
    public var deadline: Deadline
    /// The key's newest committed row when the change was recorded, and that
    /// row's value length (0: none): the row a removal makes dead.
    public var committedSeq: UInt64 = 0
    public var committedLength: UInt32 = 0
    /// For a removal: it is the expiry of the very version the key's
    /// committed row holds, so that row expires by its own deadline and the
    /// log needs no tombstone row for it.
    public var committedRowExpires = false

    public var valueCount: Int { storage.count - keyLength }

    public init(kind: Kind, sequence: UInt64, storage: [UInt8], keyLength: Int, flags: UInt32, stamp: UInt64, deadline: Deadline) {
        self.kind = kind
        self.sequence = sequence
        self.storage = storage
        self.keyLength = keyLength
        self.flags = flags
        self.stamp = stamp
        self.deadline = deadline
    }

    /// The key bytes (copies).
    public var key: [UInt8] { Array(storage[..<keyLength]) }

    @inlinable
    public func withKeyBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[..<keyLength])) }
    }

    @inlinable
    public func withValueBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[keyLength...])) }
    }
}

/// Hands out sequence numbers and counts changes not yet taken by the consumer.
final class ChangeRecorder: Sendable {
    let lastSequence = Atomic<UInt64>(0)
    let pending = Atomic<Int>(0)

    @inline(__always)
    func nextSequence() -> UInt64 {
        lastSequence.wrappingAdd(1, ordering: .relaxed).newValue
    }
}
