@testable import SessionStore
import Testing

/// The header's `seq`: which committed log row holds a key's newest version.
@Suite("Committed rows in the headers")
struct CommittedRowTests {
    func row(_ key: String, seq: UInt64, length: UInt32 = 1, cas: UInt64 = 0, replacing: UInt64? = nil) -> CommittedRow {
        let bytes = Array(key.utf8)
        return CommittedRow(storage: bytes, keyLength: bytes.count, seq: seq, length: length, cas: cas, replacing: replacing)
    }

    func seq(_ store: SessionStore, _ key: String) -> UInt64? {
        Array(key.utf8).withUnsafeBytes { store.committedItem($0)?.seq }
    }

    func recordingStore() -> (SessionStore, ManualClock) {
        let clock = ManualClock()
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 64 << 20, shardCount: 8, recordsChanges: true), clock: clock)
        return (store, clock)
    }

    @Test("a new item names no row; a commit names its row")
    func newThenCommitted() {
        let (store, _) = recordingStore()
        _ = store.set("k", "v1")
        #expect(seq(store, "k") == 0)
        let marks = store.markCommitted([row("k", seq: 7, length: 2)])
        #expect(marks == [CommitMark(applied: true, previousSeq: 0, previousLength: 0)])
        #expect(seq(store, "k") == 7)
    }

    @Test("an overwrite keeps naming the committed row until its own row commits")
    func overwriteKeepsSeq() {
        let (store, _) = recordingStore()
        _ = store.set("k", "v1")
        _ = store.markCommitted([row("k", seq: 7, length: 2)])
        _ = store.set("k", "v2 longer")
        _ = store.incr("n", 1)
        _ = store.touch("k", .never)
        #expect(seq(store, "k") == 7)
        let marks = store.markCommitted([row("k", seq: 9, length: 9)])
        #expect(marks == [CommitMark(applied: true, previousSeq: 7, previousLength: 2)])
        #expect(seq(store, "k") == 9)
        #expect(store.value("k") == "v2 longer")
    }

    @Test("delete, expiry, eviction and flush reset the header; the removal names the row it kills")
    func removalsReset() {
        let (store, clock) = recordingStore()
        _ = store.set("d", "v")
        _ = store.set("e", "v", deadline: Deadline(millis: clock.nowMillis() + 1000))
        _ = store.set("f", "v")
        _ = store.markCommitted([row("d", seq: 1), row("e", seq: 2), row("f", seq: 3)])
        _ = store.takeChanges()
        #expect(store.delete("d") == .deleted)
        let deleted = store.takeChanges()
        #expect(deleted.map(\.kind) == [.delete])
        #expect(deleted.first?.committedSeq == 1)
        _ = store.set("d", "again")
        #expect(seq(store, "d") == 0)

        clock.advance(millis: 2000)
        #expect(store.get("e") == nil)
        let expired = store.takeChanges().filter { $0.kind == .remove }
        #expect(expired.first?.committedSeq == 2)
        _ = store.set("e", "again")
        #expect(seq(store, "e") == 0)

        store.flushAll()
        _ = store.set("f", "again")
        #expect(seq(store, "f") == 0)
    }

    @Test("eviction resets the header")
    func evictionResets() {
        let clock = ManualClock()
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 8 << 10, maxItemSize: 1024, shardCount: 1, recordsChanges: true), clock: clock)
        _ = store.set("old", String(repeating: "x", count: 900))
        _ = store.markCommitted([row("old", seq: 5)])
        for index in 0..<20 { _ = store.set("k\(index)", String(repeating: "y", count: 900)) }
        #expect(store.statistics().evictions > 0)
        let removed = store.takeChanges().filter { $0.kind == .remove && $0.key == Array("old".utf8) }
        #expect(removed.first?.committedSeq == 5)
        _ = store.set("old", "back")
        #expect(seq(store, "old") == 0)
    }

    @Test("a commit of a key removed meanwhile names nothing; a moved row only replaces the row it copied")
    func markRules() {
        let (store, _) = recordingStore()
        #expect(store.markCommitted([row("gone", seq: 4)]) == [CommitMark(applied: false, previousSeq: 0, previousLength: 0)])
        _ = store.set("k", "v")
        _ = store.markCommitted([row("k", seq: 10, length: 1)])
        // A compaction copied row 8, but the header names 10: the copy is not live.
        #expect(store.markCommitted([row("k", seq: 11, replacing: 8)]).first?.applied == false)
        #expect(seq(store, "k") == 10)
        #expect(store.markCommitted([row("k", seq: 12, length: 1, replacing: 10)]).first?.applied == true)
        #expect(seq(store, "k") == 12)
    }

    @Test("recovery restores the header's row; a newer deleting row forgets the key")
    func restoreSeq() {
        let (store, _) = recordingStore()
        Array("k".utf8).withUnsafeBytes { key in
            Array("v".utf8).withUnsafeBytes { _ = store.restore(key, value: $0, flags: 0, deadline: .never, cas: 5, seq: 42) }
        }
        #expect(seq(store, "k") == 42)
        Array("k".utf8).withUnsafeBytes { store.forgetRestored($0) }
        #expect(store.value("k") == nil)
        #expect(store.pendingChanges == 0)
    }

    @Test("the slot stays 72 bytes")
    func slotStride() {
        // 56 before the log's header fields (seq, rowLength); the design's budget is 72.
        #expect(MemoryLayout<ItemSlot>.stride == 72)
    }
}
