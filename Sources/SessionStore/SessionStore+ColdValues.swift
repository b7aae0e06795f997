/// Where the values of cold items (those that left RAM) are read from: the
/// log, through its reader threads. The store only knows that such a place
/// exists; `SessionPersistence` provides it.
public protocol ColdValueReading: Sendable {
    /// The value row `seq` holds, if the row still exists and holds the
    /// version `cas`; nil otherwise (compaction moved it, or it is gone).
    func readValue(seq: UInt64, cas: UInt64) async throws -> [UInt8]?
}

/// Why `SessionStore.value(of:)` has no value to give, storage faults aside.
public enum ColdValueError: Error, Sendable, CustomStringConvertible {
    /// The store was given no `ColdValueReading` (no persistence).
    case noReader
    /// Its row moved or the item changed on every attempt to read it.
    case keptMoving

    public var description: String {
        switch self {
        case .noReader: "the value is not in memory and no storage was attached to read it from"
        case .keptMoving: "the item changed or moved on every attempt to read its value"
        }
    }
}

extension SessionStore {
    /// Attaches the place cold values are read from (once, at start).
    public func attachColdValueReader(_ reader: any ColdValueReading) {
        coldReader.withLock { $0 = reader }
    }

    /// How many times a read follows an item whose row moved or that changed.
    public static let coldReadAttempts = 8

    /// The current value of an item a walk of the store found (a full
    /// resync, a reconciliation, an export), without bringing it back into
    /// RAM: a walk over every item must not push the clients' working set
    /// out. nil when the item went meanwhile.
    public func value(of item: ItemSnapshot) async throws -> [UInt8]? {
        guard item.isCold else { return item.value }
        guard let reader = coldReader.withLock({ $0 }) else { throw ColdValueError.noReader }
        var seq = item.seq
        var cas = item.cas
        for _ in 0..<Self.coldReadAttempts {
            if let value = try await reader.readValue(seq: seq, cas: cas) { return value }
            guard let current = item.storage.withUnsafeBytes({ committedItem(UnsafeRawBufferPointer(rebasing: $0[..<item.keyLength])) }) else {
                return nil
            }
            guard current.isCold else { return current.value }
            seq = current.seq
            cas = current.cas
        }
        throw ColdValueError.keptMoving
    }

    /// The values of the cold items among `items`, read at once (the reads
    /// overlap), in order: nil for a cold item that went meanwhile, and an
    /// empty array for a warm one, whose value is in its snapshot.
    public func coldValues(of items: [ItemSnapshot]) async throws -> [[UInt8]?] {
        guard items.contains(where: \.isCold) else { return [[UInt8]?](repeating: [], count: items.count) }
        return try await withThrowingTaskGroup(of: (Int, [UInt8]?).self) { group in
            for (index, item) in items.enumerated() where item.isCold {
                group.addTask { (index, try await self.value(of: item)) }
            }
            var values = [[UInt8]?](repeating: [], count: items.count)
            for try await (index, value) in group { values[index] = value }
            return values
        }
    }
}
