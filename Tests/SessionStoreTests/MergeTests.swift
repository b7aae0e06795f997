import SessionStore
import Testing

extension SessionStore {
    func merge(_ key: String, _ value: String?, stamp: UInt64, deadline: Deadline = .never) -> MergeOutcome {
        let keyBytes = Array(key.utf8)
        return keyBytes.withUnsafeBytes { k in
            if let value {
                return Array(value.utf8).withUnsafeBytes { merge(k, value: $0, flags: 0, deadline: deadline, stamp: stamp) }
            }
            return merge(k, value: nil, flags: 0, deadline: deadline, stamp: stamp)
        }
    }

    func cas(_ key: String) -> UInt64? { get(key)?.item.cas }
}

@Suite("Stamps, tombstones and merging")
struct MergeTests {
    @Test("CAS tokens are hybrid logical clock stamps: the clock's milliseconds, ever increasing, unique")
    func stampsFollowTheClock() {
        let (store, clock) = makeStore()
        _ = store.set("a", "1")
        let first = store.cas("a")!
        #expect(HybridTimestamp.millis(first) == clock.nowMillis())
        clock.advance(millis: 5)
        _ = store.set("b", "1")
        #expect(HybridTimestamp.millis(store.cas("b")!) == clock.nowMillis())
        // Many writes in one millisecond stay unique and increasing per key.
        var seen = Set<UInt64>()
        var last: UInt64 = 0
        for index in 0..<2000 {
            _ = store.set("k\(index % 7)", "\(index)")
            let cas = store.cas("k\(index % 7)")!
            #expect(!seen.contains(cas))
            seen.insert(cas)
            if index % 7 == 0 {
                #expect(cas > last)
                last = cas
            }
        }
    }

    @Test("a clock that goes backwards, or a stamp applied from a peer ahead, never yields a smaller stamp")
    func stampsNeverGoBack() {
        let (store, clock) = makeStore()
        _ = store.set("a", "1")
        let before = store.cas("a")!
        clock.advance(millis: -60_000)
        _ = store.set("a", "2")
        #expect(store.cas("a")! > before)
        // A peer five minutes ahead: after applying its write, local writes order after it.
        let ahead = HybridTimestamp.floor(millis: clock.nowMillis() + 300_000)
        _ = Array("p".utf8).withUnsafeBytes { k in Array("x".utf8).withUnsafeBytes { store.applyUpsert(k, value: $0, flags: 0, deadline: .never, cas: ahead) } }
        _ = store.set("other-shard-key", "3")
        #expect(store.cas("other-shard-key")! > ahead)
    }

    @Test("a skewed stamp clock shifts stamps, not deadlines")
    func skew() {
        let clock = ManualClock()
        var configuration = StoreConfiguration(shardCount: 4)
        configuration.stampSkewMillis = 300_000
        let store = SessionStore(configuration: configuration, clock: clock)
        _ = store.set("a", "1", deadline: .memcached(exptime: 60, now: clock.nowMillis()))
        let item = store.get("a")!.item
        #expect(HybridTimestamp.millis(item.cas) == clock.nowMillis() + 300_000)
        #expect(item.deadline.millis == clock.nowMillis() + 60_000)
    }

    @Test("the newer stamp wins, whichever side it is on")
    func newerWins() {
        let (store, _) = makeStore()
        _ = store.set("k", "local")
        let local = store.cas("k")!
        #expect(store.merge("k", "older", stamp: local - 1) == .kept(local: local))
        #expect(store.value("k") == "local")
        #expect(store.merge("k", "local", stamp: local) == .same)
        #expect(store.merge("k", "newer", stamp: local + 1000) == .applied(replaced: local))
        #expect(store.value("k") == "newer")
        #expect(store.cas("k") == local + 1000)
        // A later local write orders after the merged stamp.
        _ = store.set("k", "after")
        #expect(store.cas("k")! > local + 1000)
    }

    @Test("deletes take part as tombstones: an older write does not bring a deleted key back")
    func tombstones() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v")
        let written = store.cas("k")!
        clock.advance(millis: 10)
        #expect(store.delete("k") == .deleted)
        #expect(store.tombstoneCount == 1)
        guard case .kept(let tombstone) = store.merge("k", "stale", stamp: written) else {
            Issue.record("an older write must lose to the delete")
            return
        }
        #expect(tombstone > written)
        #expect(store.value("k") == nil)
        // A write newer than the delete wins.
        #expect(store.merge("k", "fresh", stamp: tombstone + 1) == .applied(replaced: tombstone))
        #expect(store.value("k") == "fresh")
        // A merged delete newer than the item removes it.
        #expect(store.merge("k", nil, stamp: tombstone + 2) == .applied(replaced: tombstone + 1))
        #expect(store.value("k") == nil)
        // And the same delete again is no news.
        #expect(store.merge("k", nil, stamp: tombstone + 2) == .same)
    }

    @Test("flush_all stands for a delete of everything written before it")
    func flushStamp() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v")
        let written = store.cas("k")!
        clock.advance(millis: 10)
        store.flushAll()
        #expect(store.flushStamp > written)
        #expect(store.merge("k", "from before the flush", stamp: written) == .kept(local: store.flushStamp))
        #expect(store.merge("k", "after", stamp: store.flushStamp + 1) == .applied(replaced: nil))
    }

    @Test("a full resync's flush (stamp 0) drops the items, not the deletes seen: an older version merged later stays out")
    func resyncKeepsTombstones() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v")
        let written = store.cas("k")!
        clock.advance(millis: 10)
        #expect(store.delete("k") == .deleted)
        store.flushAll(stamp: 0)
        #expect(store.flushStamp == 0)
        #expect(store.tombstoneCount == 1)
        // The old primary comes back with the version the delete replaced.
        #expect(store.merge("k", "v", stamp: written) != .applied(replaced: nil))
        #expect(store.value("k") == nil)
        // A client's flush_all stands for every delete before it: its tombstones go.
        store.flushAll()
        #expect(store.tombstoneCount == 0)
        #expect(store.merge("k", "v", stamp: written) == .kept(local: store.flushStamp))
    }

    @Test("an expired incoming item merges as a delete at its stamp: an older local version goes, a newer one stays")
    func expiredIncoming() {
        let (store, clock) = makeStore()
        _ = store.set("old", "here")
        let older = store.cas("old")!
        clock.advance(millis: 10)
        _ = store.set("new", "here")
        let newer = store.cas("new")!
        let past = Deadline(millis: clock.nowMillis() - 1)
        // The peer's version, newer than "old" here, has expired: the key's newest version is gone.
        #expect(store.merge("old", "peer", stamp: older + 1, deadline: past) == .applied(replaced: older))
        #expect(store.value("old") == nil)
        #expect(store.merge("old", "here", stamp: older) == .kept(local: older + 1))
        // Older than what is here: nothing changes.
        #expect(store.merge("new", "peer", stamp: newer - 1, deadline: past) == .kept(local: newer))
        #expect(store.value("new") == "here")
        // Nothing here: the expiry is remembered.
        #expect(store.merge("none", "peer", stamp: newer + 1, deadline: past) == .applied(replaced: nil))
        #expect(store.merge("none", "older", stamp: newer) == .kept(local: newer + 1))
    }

    @Test("an item that expires here keeps its stamp as a tombstone, however it goes: an older version merged later stays out")
    func expiryLeavesTombstone() {
        let (store, clock) = makeStore(shards: 1)
        let deadline = Deadline(millis: clock.nowMillis() + 1_000)
        for key in ["read", "swept", "applied"] { _ = store.set(key, "v", deadline: deadline) }
        _ = store.set("forever", "v")
        let stamps = ["read", "swept", "applied"].map { store.cas($0)! }
        clock.advance(millis: 1_000)
        #expect(store.get("read") == nil)
        #expect(store.reclaimExpired() >= 1)
        #expect(store.value("forever") == "v")
        #expect(store.tombstoneCount == 3)
        for (key, stamp) in zip(["read", "swept", "applied"], stamps) {
            #expect(store.merge(key, "older", stamp: stamp - 1) == .kept(local: stamp))
            #expect(store.merge(key, "newer", stamp: stamp + 1) == .applied(replaced: stamp))
        }
    }

    @Test("a store on its own (no pair to reconcile with) keeps no tombstones of expiries")
    func expiriesForgottenOnItsOwn() {
        let clock = ManualClock(millis: 1_700_000_000_000)
        var configuration = StoreConfiguration(shardCount: 1, recordsChanges: true)
        configuration.remembersExpiries = false
        let store = SessionStore(configuration: configuration, clock: clock)
        _ = store.set("k", "v", deadline: Deadline(millis: clock.nowMillis() + 10))
        clock.advance(millis: 10)
        #expect(store.get("k") == nil)
        #expect(store.tombstoneCount == 0)
        #expect(store.takeChanges().last?.kind == .remove)
    }

    @Test("a removal from the primary of an item whose deadline passed here is an expiry; one of a live item (an eviction) is not")
    func appliedRemoval() {
        let (store, clock) = makeStore(shards: 1)
        _ = store.set("expired", "v", deadline: Deadline(millis: clock.nowMillis() + 500))
        _ = store.set("evicted", "v")
        let stamp = store.cas("expired")!
        clock.advance(millis: 500)
        #expect(Array("expired".utf8).withUnsafeBytes { store.applyRemove($0) })
        #expect(Array("evicted".utf8).withUnsafeBytes { store.applyRemove($0) })
        #expect(store.tombstoneCount == 1)
        #expect(store.merge("expired", "older", stamp: stamp - 1) == .kept(local: stamp))
    }

    @Test("recovery leaves the tombstone of an expired newest row, and none for one past the retention")
    func recoveredExpiry() {
        let (store, clock) = makeStore(shards: 1)
        clock.advance(millis: SessionStore.tombstoneRetentionMillis * 2)
        let now = clock.nowMillis()
        let recent = HybridTimestamp.floor(millis: now - 2_000)
        let ancient = HybridTimestamp.floor(millis: now - SessionStore.tombstoneRetentionMillis - 1)
        for (key, stamp) in [("recent", recent), ("ancient", ancient)] {
            Array(key.utf8).withUnsafeBytes { key in
                Array("v".utf8).withUnsafeBytes { value in
                    _ = store.restore(key, value: value, flags: 0, deadline: .never, cas: stamp - 8)
                    _ = store.restore(key, value: value, flags: 0, deadline: Deadline(millis: now - 1_000), cas: stamp)
                }
            }
        }
        #expect(store.value("recent") == nil && store.value("ancient") == nil)
        #expect(store.tombstoneCount == 1)
        #expect(store.merge("recent", "older", stamp: recent - 1) == .kept(local: recent))
    }

    @Test("versions above a stamp: the items and tombstones a peer that has everything up to it lacks")
    func versionsAbove() {
        let (store, clock) = makeStore(shards: 4)
        for index in 0..<20 { _ = store.set("old\(index)", "v") }
        let watermark = store.stampCeiling()
        clock.advance(millis: 1)
        for index in 0..<5 { _ = store.set("new\(index)", "v") }
        _ = store.delete("old3")
        var keys: [String] = []
        var tombstones: [String] = []
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.versions(inShard: shard, newerThan: watermark, from: from, limit: 2)
                keys += page.items.map { String(decoding: $0.key, as: UTF8.self) }
                cursor = page.next
            }
            tombstones += store.tombstones(inShard: shard, newerThan: watermark).map { String(decoding: $0.key, as: UTF8.self) }
        }
        #expect(keys.sorted() == (0..<5).map { "new\($0)" })
        #expect(tombstones == ["old3"])
    }

    @Test("tombstones are bounded: the oldest go first")
    func tombstonesBounded() {
        let (store, _) = makeStore(shards: 1)
        for index in 0..<300_000 {
            _ = store.set("k\(index)", "v")
            _ = store.delete("k\(index)")
        }
        #expect(store.tombstoneCount == 262_144)
        // The newest delete is still remembered.
        #expect(store.merge("k299999", "stale", stamp: 1) != .applied(replaced: nil))
    }
}

@Suite("A peer's flush_all, merged")
struct MergeFlushTests {
    @Test("items stamped before the peer's flush go as deletes at its stamp; later ones stay; older versions stay out")
    func flushRemovesOlderItemsOnly() {
        let (store, clock) = makeStore()
        _ = store.set("old-1", "a")
        _ = store.set("old-2", "b")
        clock.advance(millis: 10)
        let flush = HybridTimestamp.floor(millis: clock.nowMillis())
        clock.advance(millis: 10)
        _ = store.set("new", "c")
        let older = store.cas("old-1")!
        #expect(store.mergeFlush(stamp: flush) == 2)
        #expect(store.get("old-1") == nil && store.get("old-2") == nil)
        #expect(store.get("new") != nil)
        #expect(store.flushStamp == flush)
        // The flush stands for a delete of every key at its stamp: an older
        // version a later reconciliation brings stays out, a newer one comes in.
        #expect(store.merge("old-1", "again", stamp: older) == .kept(local: flush))
        #expect(store.merge("never-seen", "x", stamp: flush - 1) == .kept(local: flush))
        #expect(store.merge("old-2", "later", stamp: flush + 1) == .applied(replaced: flush))
        // Merging the same flush again removes nothing more.
        #expect(store.mergeFlush(stamp: flush) == 0)
        #expect(store.get("new") != nil && store.get("old-2") != nil)
    }

    @Test("the removals are recorded as deletes stamped with the flush, so they persist and replicate")
    func flushIsRecordedAsDeletes() {
        let clock = ManualClock(millis: 1_700_000_000_000)
        let store = SessionStore(configuration: StoreConfiguration(shardCount: 4, recordsChanges: true), clock: clock)
        _ = store.set("a", "1")
        _ = store.set("b", "2")
        _ = store.takeChanges()
        clock.advance(millis: 5)
        let flush = HybridTimestamp.floor(millis: clock.nowMillis())
        store.mergeFlush(stamp: flush)
        let changes = store.takeChanges()
        #expect(changes.count == 2)
        #expect(changes.allSatisfy { $0.kind == .delete && $0.stamp == flush })
        #expect(Set(changes.map { String(decoding: $0.key, as: UTF8.self) }) == ["a", "b"])
    }
}
