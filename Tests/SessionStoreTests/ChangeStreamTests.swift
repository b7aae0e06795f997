import SessionStore
import Testing

@Suite("Change stream")
struct ChangeStreamTests {
    func recordingStore(memory: Int = 64 << 20, shards: Int = 8) -> (SessionStore, ManualClock) {
        let clock = ManualClock()
        let store = SessionStore(
            configuration: StoreConfiguration(memoryLimit: memory, maxItemSize: 16 << 10, shardCount: shards, recordsChanges: true),
            clock: clock
        )
        return (store, clock)
    }

    func summary(_ changes: [Change]) -> [String] {
        changes.map { change in
            switch change.kind {
            case .upsert: return "upsert \(String(decoding: change.key, as: UTF8.self))=\(String(decoding: change.withValueBytes { Array($0) }, as: UTF8.self))"
            case .remove: return "remove \(String(decoding: change.key, as: UTF8.self))"
            case .delete: return "delete \(String(decoding: change.key, as: UTF8.self))"
            case .flushAll: return "flush"
            }
        }
    }

    @Test("every kind of write is recorded once, in order")
    func everyWrite() {
        let (store, clock) = recordingStore()
        _ = store.set("a", "1")
        #expect(store.set("a", "2", mode: .add) == .notStored)  // no change
        _ = store.set("a", "x", mode: .append)
        _ = store.incr("n", 1)  // miss: no change
        _ = store.set("n", "5")
        _ = store.incr("n", 2)
        _ = store.touch("a", .memcached(exptime: 100, now: clock.nowMillis()))
        _ = store.get("a")  // a read: no change
        _ = store.delete("a")
        _ = store.delete("a")  // miss: no change
        let changes = store.takeChanges()
        #expect(summary(changes) == ["upsert a=1", "upsert a=1x", "upsert n=5", "upsert n=7", "upsert a=1x", "delete a"])
        #expect(changes.map(\.sequence) == changes.map(\.sequence).sorted())
        #expect(changes[4].deadline.millis == clock.nowMillis() + 100_000)
        #expect(store.pendingChanges == 0)
        #expect(store.takeChanges().isEmpty)
    }

    @Test("expiry and eviction are recorded as removals")
    func expiryAndEviction() {
        let (store, clock) = recordingStore(memory: 64 << 10, shards: 1)
        _ = store.set("short", "v", deadline: .memcached(exptime: 1, now: clock.nowMillis()))
        clock.advance(seconds: 2)
        store.reclaimExpired()
        #expect(summary(store.takeChanges()) == ["upsert short=v", "remove short"])
        let value = String(repeating: "x", count: 4000)
        for i in 0..<40 { _ = store.set("k\(i)", value) }
        let changes = store.takeChanges()
        let removals = changes.filter { $0.kind == .remove }
        #expect(!removals.isEmpty)
        #expect(UInt64(removals.count) == store.statistics().evictions)
    }

    @Test("flush_all has one place in the stream across shards")
    func flush() {
        let (store, _) = recordingStore(shards: 8)
        for i in 0..<50 { _ = store.set("before\(i)", "v") }
        store.flushAll()
        for i in 0..<50 { _ = store.set("after\(i)", "v") }
        let changes = store.takeChanges()
        let flushes = changes.filter { $0.kind == .flushAll }
        #expect(flushes.count == store.shardCount)
        #expect(Set(flushes.map(\.sequence)).count == 1)
        let flushSequence = flushes[0].sequence
        for change in changes where change.kind == .upsert {
            let name = String(decoding: change.key, as: UTF8.self)
            #expect(name.hasPrefix("before") == (change.sequence < flushSequence))
        }
    }

    @Test("restore records nothing; raiseCas puts every shard's next CAS above the recovered ones")
    func restore() {
        let (store, _) = recordingStore()
        let key = Array("k".utf8), value = Array("v".utf8)
        key.withUnsafeBytes { k in value.withUnsafeBytes { _ = store.restore(k, value: $0, flags: 3, deadline: .never, cas: 1_000_000) } }
        #expect(store.takeChanges().isEmpty)
        #expect(store.get("k")?.item.flags == 3)
        guard case .stored(let sameKeyCas, _) = store.set("k", "v") else {
            Issue.record("set failed")
            return
        }
        #expect(sameKeyCas > 1_000_000)
        store.raiseCas(above: 1_000_000)
        guard case .stored(let cas, _) = store.set("other", "v") else {
            Issue.record("set failed")
            return
        }
        #expect(cas > 1_000_000)
    }

    @Test("a snapshot walk sees every live item exactly once")
    func snapshotWalk() {
        let (store, _) = recordingStore(shards: 4)
        for i in 0..<1000 { _ = store.set("k\(i)", "v\(i)") }
        for i in 0..<100 { _ = store.delete("k\(i)") }
        var seen = Set<String>()
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.items(inShard: shard, from: from, limit: 37)
                for item in page.items { #expect(seen.insert(String(decoding: item.key, as: UTF8.self)).inserted) }
                cursor = page.next
            }
        }
        #expect(seen.count == 900)
        #expect(!seen.contains("k5"))
    }

    @Test("without recordsChanges nothing is kept")
    func disabled() {
        let (store, _) = makeStore()
        _ = store.set("a", "1")
        #expect(store.takeChanges().isEmpty)
        #expect(store.pendingChanges == 0)
    }
}
