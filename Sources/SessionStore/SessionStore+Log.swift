/// A row the writer committed to the log, for `SessionStore.markCommitted`.
public struct CommittedRow: Sendable {
    /// Holds the key as its first `keyLength` bytes (a change's or snapshot's storage: no copy).
    public var storage: [UInt8]
    public var keyLength: Int
    /// The row's seq and its value's length.
    public var seq: UInt64
    public var length: UInt32
    /// nil: a new version of the key, which is now its newest committed row.
    /// Otherwise a row compaction moved: it names the key only if the header
    /// still names this seq (the row it copied).
    public var replacing: UInt64?

    public init(storage: [UInt8], keyLength: Int, seq: UInt64, length: UInt32, replacing: UInt64? = nil) {
        self.storage = storage
        self.keyLength = keyLength
        self.seq = seq
        self.length = length
        self.replacing = replacing
    }
}

/// What `markCommitted` did with one row.
public struct CommitMark: Sendable, Equatable {
    /// Whether the header now names the row. False: the key is gone (removed
    /// after the row was taken), or a moved row's header names another row;
    /// either way the row is not live.
    public var applied: Bool
    /// The row the header named before (0: none); with `applied`, no longer live.
    public var previousSeq: UInt64
    public var previousLength: UInt32

    public init(applied: Bool, previousSeq: UInt64, previousLength: UInt32) {
        self.applied = applied
        self.previousSeq = previousSeq
        self.previousLength = previousLength
    }
}

extension SessionStore {
    /// Tells the headers which rows a commit wrote: called by the writer after
    /// each successful commit, with the batch's rows in commit order. Keys
    /// still present then name their newest committed row (kept while a newer
    /// version waits in RAM); a key removed meanwhile is left alone (its
    /// removal is a change of its own, carrying the row it kills). Each
    /// shard's lock is taken once for all of its rows.
    public func markCommitted(_ rows: [CommittedRow]) -> [CommitMark] {
        var marks = [CommitMark](repeating: CommitMark(applied: false, previousSeq: 0, previousLength: 0), count: rows.count)
        guard !rows.isEmpty else { return marks }
        var byShard = [[Int]](repeating: [], count: shards.count)
        var hashes = [UInt64](repeating: 0, count: rows.count)
        for index in rows.indices {
            let hash = rows[index].storage.withUnsafeBytes { hasher.hash(UnsafeRawBufferPointer(rebasing: $0[..<rows[index].keyLength])) }
            hashes[index] = hash
            byShard[shardIndex(hash)].append(index)
        }
        for (shard, indices) in byShard.enumerated() where !indices.isEmpty {
            shards[shard].state.withLock { state in
                for index in indices {
                    let row = rows[index]
                    row.storage.withUnsafeBytes { all in
                        let key = UnsafeRawBufferPointer(rebasing: all[..<row.keyLength])
                        guard let slot = state.find(key, hash: hashes[index]) else { return }
                        if let replacing = row.replacing, state.item(slot).seq != replacing { return }
                        let previous = state.setCommitted(slot, seq: row.seq, length: row.length)
                        marks[index] = CommitMark(applied: true, previousSeq: previous.seq, previousLength: previous.length)
                    }
                }
            }
        }
        return marks
    }

    /// The key's current item (with its header's `seq`) if it is present and
    /// unexpired, in one lookup under its shard's lock: compaction's live
    /// check. Nothing is bumped or removed.
    public func committedItem(_ key: UnsafeRawBufferPointer) -> ItemSnapshot? {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return shard.state.withLock { state -> ItemSnapshot? in
            guard let slot = state.find(key, hash: hash) else { return nil }
            let deadline = state.item(slot).deadline
            if deadline != 0 && deadline <= now { return nil }
            return state.snapshot(slot)
        }
    }
}
