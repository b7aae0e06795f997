import SessionStore
import Synchronization
import Testing

/// A lock-protected list shared with concurrent tasks.
final class SequenceLog: Sendable {
    let values = Mutex<[UInt64]>([])
}

@Suite("Change feed")
struct ChangeFeedTests {
    func recordingStore(shards: Int = 8) -> SessionStore {
        SessionStore(configuration: StoreConfiguration(shardCount: shards, recordsChanges: true), clock: ManualClock())
    }

    @Test("pull and push consumers see the same gap-free sequence, a flush_all once")
    func ordering() {
        let store = recordingStore()
        let feed = ChangeFeed(store: store)
        let persistence = feed.subscribe()
        let pushed = Mutex<[UInt64]>([])
        feed.subscribe { batch in pushed.withLock { $0 += batch.map(\.sequence) } }
        for i in 0..<300 { _ = store.set("k\(i)", "v") }
        store.flushAll()
        for i in 0..<300 { _ = store.set("j\(i)", "v") }
        // flush_all is recorded once per shard until the feed releases it once.
        #expect(persistence.pendingChanges == 601 + store.shardCount - 1)
        let pulled = persistence.takeChanges().map(\.sequence)
        #expect(pulled == Array(1...601))
        #expect(pushed.withLock { $0 } == pulled)
        #expect(feed.lastReleased == 601)
        #expect(persistence.pendingChanges == 0)
    }

    @Test("concurrent writers: every change is released exactly once and in order")
    func concurrent() async {
        let store = recordingStore(shards: 16)
        let feed = ChangeFeed(store: store)
        let subscription = feed.subscribe()
        let collected = SequenceLog()
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<4 {
                group.addTask {
                    for i in 0..<5000 { _ = store.set("w\(writer)-\(i % 100)", "v\(i)") }
                }
            }
            group.addTask {
                // Pump while the writers run.
                for _ in 0..<2000 {
                    let batch = subscription.takeChanges().map(\.sequence)
                    collected.values.withLock { $0 += batch }
                    await Task.yield()
                }
            }
        }
        collected.values.withLock { $0 += subscription.takeChanges().map(\.sequence) }
        let sequences = collected.values.withLock { $0 }
        #expect(sequences == Array(1...20_000))
    }
}
