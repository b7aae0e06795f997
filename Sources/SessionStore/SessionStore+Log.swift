/// A row the writer committed to the log, for `SessionStore.markCommitted`.
public struct CommittedRow: Sendable {
    /// Holds the key as its first `keyLength` bytes (a change's or snapshot's storage: no copy).
    public var storage: [UInt8]
    public var keyLength: Int
    /// The row's seq and its value's length.
    public var seq: UInt64
    public var length: UInt32
    /// The CAS of the version the row holds: a new version whose CAS (and
    /// length) the header still has makes the item clean, its value free to
    /// leave RAM. (A version with the same CAS and another value can only
    /// come from a client reusing an explicit CAS, meta `E`; until its own
    /// row commits, a cold read would return the older value.)
    public var cas: UInt64
    /// nil: a new version of the key, which is now its newest committed row.
    /// Otherwise a row compaction moved: it names the key only if the header
    /// still names this seq (the row it copied).
    public var replacing: UInt64?

    public init(storage: [UInt8], keyLength: Int, seq: UInt64, length: UInt32, cas: UInt64, replacing: UInt64? = nil) {
        self.storage = storage
        self.keyLength = keyLength
        self.seq = seq
        self.length = length
        self.cas = cas
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
        let now = clock.nowMillis()
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
                        let item = state.item(slot)
                        if let replacing = row.replacing {
                            if item.seq != replacing { return }
                        } else if item.cas == row.cas, item.valueLength == Int(row.length) {
                            state.removeMarks(slot, .dirty)
                        }
                        let previous = state.setCommitted(slot, seq: row.seq, length: row.length)
                        marks[index] = CommitMark(applied: true, previousSeq: previous.seq, previousLength: previous.length)
                    }
                }
                // Values this commit made clean may leave RAM now.
                state.trimIfOverdrawn(now: now)
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

extension SessionStore {
    /// Gives a cold item its value back, read from row `seq` of the log
    /// for `cas` (a `ValueOnDisk`): installed if the item is still cold with
    /// that CAS, as the most recently used, and other clean values can leave
    /// RAM to make room (or, with none, within the overdraft uncommitted
    /// writes have). Returns whether the item now holds its value in RAM
    /// (false: it changed or went meanwhile, or there was no room).
    @discardableResult
    public func install(_ key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, cas: UInt64) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return shard.state.withLock { state in
            guard let slot = state.find(key, hash: hash) else { return false }
            let item = state.item(slot)
            guard item.marks.contains(.cold) else { return item.cas == cas }
            guard item.cas == cas, Int(item.rowLength) == value.count else { return false }
            // Room from other values only: a read never costs an item. With
            // none to free (headers fill -m) the value may overdraw the limit
            // as uncommitted writes may: a touch or an append of a cold item
            // needs it in RAM to run at all. Past that it is not kept (a
            // get that asked has it anyway).
            guard state.makeRoom(for: value.count, now: now, protecting: slot, losing: false)
                || state.bytesUsed + value.count <= state.byteLimit + state.byteLimit / 2
            else { return false }
            state.replaceBytes(slot, with: Self.join(key, value))
            state.counters.valuesLoaded += 1
            return true
        }
    }

    /// What a read of `key` would need from the log, if anything: nothing is
    /// changed, bumped or counted (a connection reads every cold value of a
    /// multi-key `get` at once before running it).
    public func valueOnDisk(_ key: UnsafeRawBufferPointer) -> ValueOnDisk? {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return shard.state.withLock { state -> ValueOnDisk? in
            guard let slot = state.find(key, hash: hash) else { return nil }
            let item = state.item(slot)
            guard item.marks.contains(.cold), item.rowLength > 0, item.deadline == 0 || item.deadline > now else { return nil }
            return ValueOnDisk(key: Array(key), cas: item.cas, seq: item.seq, length: item.rowLength)
        }
    }

    /// Lets a key's value leave RAM now if it is clean, as a full store
    /// would: for tests and tools that drive the cold paths. Returns whether
    /// the item is cold now.
    @discardableResult
    public func evictValue(_ key: UnsafeRawBufferPointer) -> Bool {
        let (shard, hash) = locate(key)
        return shard.state.withLock { state in
            guard let slot = state.find(key, hash: hash) else { return false }
            let item = state.item(slot)
            if item.marks.contains(.cold) { return true }
            guard item.isClean else { return false }
            state.makeCold(slot)
            state.counters.valuesEvicted += 1
            return true
        }
    }

    /// What an item costs against `-m`: its key, the value held in RAM (0
    /// while cold) and the per-item overhead.
    public static func itemCost(keyLength: Int, valueLength: Int) -> Int {
        ShardState.cost(keyLength: keyLength, valueCount: valueLength)
    }

    /// Loads the header of an item recovered from storage whose value stays
    /// in the log (cold), without recording a change; as `restore`, an
    /// expired item is not loaded and removes any version loaded before.
    @discardableResult
    public func restoreCold(_ key: UnsafeRawBufferPointer, flags: UInt32, deadline: Deadline, cas: UInt64, seq: UInt64, length: UInt32) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        if deadline.hasPassed(at: now) {
            forgetExpired(key, stamp: cas)
            return false
        }
        return shard.state.withLock { state in
            if let slot = state.find(key, hash: hash) { state.removeQuietly(slot) }
            guard state.makeRoom(for: ShardState.cost(keyLength: key.count, valueCount: 0), now: now) else { return false }
            let slot = state.insert(bytes: Array(key), keyLength: key.count, hash: hash, flags: flags, deadline: deadline.millis, cas: cas, now: now)
            _ = state.setCommitted(slot, seq: seq, length: length)
            if length > 0 { state.makeCold(slot) }
            state.raiseCas(above: cas)
            return true
        }
    }
}

extension SessionStore {
    /// Tells the store whether the log's live data is over its disk budget:
    /// without evictions (`-M`), writes that would add data are then refused.
    public func setDiskFull(_ full: Bool) {
        diskFullFlag.store(full, ordering: .relaxed)
    }

    /// Whether the log's live data is over its disk budget.
    public var isDiskFull: Bool { diskFullFlag.load(ordering: .relaxed) }

    /// Evicts least recently used items, cold ones first, until their rows
    /// (key, value and `rowOverhead` each) add up to `bytes`: the disk budget
    /// is spent, and this is a real loss, counted in `evictions`. Spread over
    /// the shards in turn. Returns the items evicted.
    @discardableResult
    public func evictForDisk(bytes: Int, rowOverhead: Int) -> Int {
        let now = clock.nowMillis()
        var freed = 0
        var evicted = 0
        var progress = true
        while freed < bytes, progress {
            progress = false
            let share = max(1, (bytes - freed) / shards.count)
            for shard in shards where freed < bytes {
                let (bytesFreed, items) = shard.state.withLock { $0.evictForDisk(bytes: share, rowOverhead: rowOverhead, now: now) }
                freed += bytesFreed
                evicted += items
                if items > 0 { progress = true }
            }
        }
        return evicted
    }
}

extension SessionStore {
    /// Calls `body` with the seq, key length and value length of every live
    /// item's committed row, shard by shard under its lock, without copying
    /// anything: the writer's accounting of live bytes at start.
    public func forEachCommittedRow(_ body: (UInt64, Int, Int) -> Void) {
        let now = clock.nowMillis()
        for shard in shards {
            shard.state.withLock { $0.forEachCommittedRow(now: now, body) }
        }
    }
}
