/// What merging one version of a key from the other node did.
public enum MergeOutcome: Sendable, Equatable {
    /// The incoming version is newer and now stands; `replaced` is the stamp of
    /// the local version (item or tombstone) it won over, nil when there was none.
    case applied(replaced: UInt64?)
    /// The local version (an item, a later delete or a later flush) is newer; the incoming one is dropped.
    case kept(local: UInt64)
    /// Both nodes hold this very version.
    case same
}

extension SessionStore {
    /// Merges a version of `key` that the other node of a pair holds and this
    /// one may not (reconciliation after a failover): the version with the
    /// newer stamp wins, deletes (tombstones) and `flush_all` included. A
    /// winning version is recorded like any write, so it is persisted and
    /// replicated. `value` nil merges a delete stamped `stamp`; so does an
    /// item that has expired, since the key's newest version is then gone
    /// and no older one may stand in for it.
    public func merge(_ key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?, flags: UInt32, deadline: Deadline, stamp: UInt64) -> MergeOutcome {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        let live = value.flatMap { deadline.hasPassed(at: now) ? nil : $0 }
        let bytes = live.map { Self.join(key, $0) }
        let flushed = flushStamp
        let outcome = shard.state.withLock { state -> MergeOutcome in
            let local: UInt64?
            let slot = state.findLive(key, hash: hash, now: now)
            if let slot {
                local = state.item(slot).cas
            } else {
                let tombstone = state.tombstones.stamp(of: key)
                if tombstone == stamp, bytes == nil { return .same }
                let barrier = max(tombstone ?? 0, flushed)
                if barrier >= stamp { return .kept(local: barrier) }
                local = tombstone
            }
            if let slot, let local {
                if local == stamp { return .same }
                if local > stamp { return .kept(local: local) }
                guard let bytes else {
                    state.setCas(slot, stamp)
                    state.rememberDelete(of: key, stamp: stamp, now: now)
                    state.remove(slot, recordedAs: .delete)
                    state.raiseCas(above: stamp)
                    return .applied(replaced: local)
                }
                _ = Self.put(&state, key: key, bytes: bytes, hash: hash, flags: flags, deadline: deadline, cas: stamp, now: now)
                return .applied(replaced: local)
            }
            guard let bytes else {
                // Nothing here to remove: remembering the delete is all there is to do.
                state.rememberDelete(of: key, stamp: stamp, now: now)
                state.raiseCas(above: stamp)
                return .applied(replaced: local)
            }
            _ = Self.put(&state, key: key, bytes: bytes, hash: hash, flags: flags, deadline: deadline, cas: stamp, now: now)
            return .applied(replaced: local)
        }
        raiseStampFloor(above: stamp)
        return outcome
    }

    /// A peer's `flush_all` stamped `stamp`, merged as a version of every
    /// key is (Protocol.md 2.6): each item stamped before it goes, recorded
    /// as a delete at the flush's stamp (so it is persisted and replicated,
    /// and its tombstone orders after any older version a later
    /// reconciliation brings); items stamped after it stay. The store's own
    /// flush stamp rises to it. Returns the items removed.
    @discardableResult
    public func mergeFlush(stamp: UInt64) -> Int {
        let now = clock.nowMillis()
        var current = flushStampValue.load(ordering: .relaxed)
        while current < stamp {
            let (exchanged, original) = flushStampValue.compareExchange(expected: current, desired: stamp, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        var removed = 0
        for shard in shards {
            removed += shard.state.withLock { $0.removeStamped(below: stamp, now: now) }
        }
        raiseStampFloor(above: stamp)
        return removed
    }

    /// The live items of one shard stamped above `stamp`: what this node
    /// may hold that a peer which has everything up to `stamp` lacks. An
    /// expired one met on the way is removed, so that its stamp is among the
    /// shard's tombstones, which the peer must also be sent.
    public func versions(inShard shardIndex: Int, newerThan stamp: UInt64, from cursor: Int, limit: Int) -> (items: [ItemSnapshot], next: Int?) {
        let now = clock.nowMillis()
        return shards[shardIndex].state.withLock { state in
            state.expireStamped(above: stamp, from: cursor, limit: limit, now: now)
            return state.liveItems(from: cursor, limit: limit, now: now, newerThan: stamp)
        }
    }

    /// The tombstones of one shard stamped above `stamp`: deletes, and
    /// items that expired (take them after the shard's `versions`).
    public func tombstones(inShard shardIndex: Int, newerThan stamp: UInt64) -> [(key: [UInt8], stamp: UInt64)] {
        shards[shardIndex].state.withLock { $0.tombstones.newer(than: stamp) }
    }

    /// Loads a tombstone recovered from storage.
    public func restoreTombstone(_ key: UnsafeRawBufferPointer, stamp: UInt64) {
        let (shard, _) = locate(key)
        let now = clock.nowMillis()
        shard.state.withLock { $0.rememberDelete(of: key, stamp: stamp, now: now) }
    }

    /// Restores the stamp of the last `flush_all` recovered from storage.
    public func restoreFlushStamp(_ stamp: UInt64) {
        var current = flushStampValue.load(ordering: .relaxed)
        while current < stamp {
            let (exchanged, original) = flushStampValue.compareExchange(expected: current, desired: stamp, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
    }

    /// The stamp of the item `key` names, expired or not, without touching
    /// it (a read would expire it): the version a merge would weigh an
    /// incoming one against, with the key's tombstone. For tests that
    /// observe the store.
    func heldStamp(of key: UnsafeRawBufferPointer) -> UInt64? {
        let (shard, hash) = locate(key)
        return shard.state.withLock { state in state.find(key, hash: hash).map { state.item($0).cas } }
    }

    /// Tombstones held, for `stats`.
    public var tombstoneCount: Int {
        shards.reduce(0) { total, shard in total + shard.state.withLock { $0.tombstones.count } }
    }
}
