import SessionStore
import TandemTestSupport
import Testing

/// Helpers to call the store with strings.
extension SessionStore {
    func set(_ key: String, _ value: String, flags: UInt32 = 0, deadline: Deadline = .never, mode: StoreMode = .set, compareCas: UInt64? = nil) -> StoreOutcome {
        let keyBytes = Array(key.utf8)
        let valueBytes = Array(value.utf8)
        return keyBytes.withUnsafeBytes { k in
            valueBytes.withUnsafeBytes { v in
                // Helpers for warm items only: a cold value here is a failure.
                try! store(k, value: v, request: StoreRequest(mode: mode, flags: flags, deadline: deadline, compareCas: compareCas))
            }
        }
    }

    func get(_ key: String, options: FetchOptions = FetchOptions()) -> FetchResult? {
        Array(key.utf8).withUnsafeBytes { try! fetch($0, options: options) }
    }

    func value(_ key: String) -> String? {
        get(key).map { String(decoding: $0.item.value, as: UTF8.self) }
    }

    func delete(_ key: String, request: DeleteRequest = DeleteRequest()) -> DeleteOutcome {
        Array(key.utf8).withUnsafeBytes { try! delete($0, request: request) }
    }

    func incr(_ key: String, _ delta: UInt64, increment: Bool = true) -> ArithmeticOutcome {
        Array(key.utf8).withUnsafeBytes { try! arithmetic($0, request: ArithmeticRequest(increment: increment, delta: delta)) }
    }

    func touch(_ key: String, _ deadline: Deadline) -> Bool {
        Array(key.utf8).withUnsafeBytes { try! touch($0, deadline: deadline) }
    }
}

func makeStore(memory: Int = 64 << 20, evictions: Bool = true, maxItem: Int = 1 << 20, shards: Int = 8) -> (SessionStore, ManualClock) {
    let clock = ManualClock()
    let store = SessionStore(
        configuration: StoreConfiguration(memoryLimit: memory, evictionsEnabled: evictions, maxItemSize: maxItem, shardCount: shards),
        clock: clock
    )
    return (store, clock)
}

@Suite("Expiry rules")
struct ExpiryTests {
    @Test("exptime 0 never expires")
    func zeroNeverExpires() {
        let (store, clock) = makeStore()
        #expect(Deadline.memcached(exptime: 0, now: clock.nowMillis()) == .never)
        _ = store.set("k", "v", deadline: .memcached(exptime: 0, now: clock.nowMillis()))
        clock.advance(seconds: 10 * 365 * 24 * 3600)
        #expect(store.value("k") == "v")
    }

    @Test("relative exptime up to 30 days expires after that many seconds")
    func relative() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v", deadline: .memcached(exptime: 10, now: clock.nowMillis()))
        clock.advance(millis: 9_999)
        #expect(store.value("k") == "v")
        clock.advance(millis: 1)
        #expect(store.value("k") == nil)

        // Exactly 30 days is still relative.
        _ = store.set("month", "v", deadline: .memcached(exptime: 2_592_000, now: clock.nowMillis()))
        clock.advance(seconds: 2_592_000 - 1)
        #expect(store.value("month") == "v")
        clock.advance(seconds: 1)
        #expect(store.value("month") == nil)
    }

    @Test("exptime over 30 days is an absolute Unix time")
    func absolute() {
        let (store, clock) = makeStore()
        let nowSeconds = clock.nowMillis() / 1000
        let deadline = Deadline.memcached(exptime: nowSeconds + 100, now: clock.nowMillis())
        #expect(deadline.millis == (nowSeconds + 100) * 1000)
        _ = store.set("k", "v", deadline: deadline)
        clock.advance(seconds: 99)
        #expect(store.value("k") == "v")
        clock.advance(seconds: 1)
        #expect(store.value("k") == nil)

        // An absolute time already in the past is expired at once.
        _ = store.set("past", "v", deadline: .memcached(exptime: 2_592_001, now: clock.nowMillis()))
        #expect(store.value("past") == nil)
    }

    @Test("negative exptime is already expired and removes an existing item")
    func negative() {
        let (store, clock) = makeStore()
        _ = store.set("k", "old")
        let outcome = store.set("k", "new", deadline: .memcached(exptime: -1, now: clock.nowMillis()))
        guard case .stored = outcome else {
            Issue.record("expected stored, got \(outcome)")
            return
        }
        #expect(store.value("k") == nil)
        #expect(store.statistics().currentItems == 0)
    }

    @Test("touch moves the deadline; gat-style fetch touches too")
    func touchAndGat() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v", deadline: .memcached(exptime: 5, now: clock.nowMillis()))
        #expect(store.touch("k", .memcached(exptime: 100, now: clock.nowMillis())))
        clock.advance(seconds: 50)
        #expect(store.value("k") == "v")
        _ = store.get("k", options: FetchOptions(touch: .memcached(exptime: 1, now: clock.nowMillis())))
        clock.advance(seconds: 1)
        #expect(store.value("k") == nil)
        #expect(!store.touch("missing", .never))
    }

    @Test("remaining seconds round up, -1 for never")
    func remaining() {
        #expect(Deadline.never.remainingSeconds(at: 5) == -1)
        #expect(Deadline(millis: 10_001).remainingSeconds(at: 9_000) == 2)
        #expect(Deadline(millis: 10_000).remainingSeconds(at: 10_000) == 0)
    }

    @Test("the background reclaimer frees expired items nobody reads")
    func reclaim() {
        let (store, clock) = makeStore()
        for i in 0..<1000 {
            _ = store.set("short\(i)", "v", deadline: .memcached(exptime: 1, now: clock.nowMillis()))
            _ = store.set("long\(i)", "v", deadline: .memcached(exptime: 1000, now: clock.nowMillis()))
        }
        #expect(store.statistics().currentItems == 2000)
        clock.advance(seconds: 2)
        var removed = 0
        for _ in 0..<10 { removed += store.reclaimExpired(budgetPerShard: 100) }
        #expect(removed == 1000)
        let stats = store.statistics()
        #expect(stats.currentItems == 1000)
        #expect(stats.expiredUnfetched == 1000)
        #expect(store.value("long7") == "v")
    }
}

@Suite("Storage commands")
struct StorageTests {
    @Test("add on a live key changes nothing: value, cas or deadline")
    func addOnLiveKey() {
        let (store, clock) = makeStore()
        _ = store.set("sess", "data", deadline: .memcached(exptime: 3600, now: clock.nowMillis()))
        let before = store.get("sess")!.item
        #expect(store.set("sess", "x", deadline: .memcached(exptime: 5, now: clock.nowMillis()), mode: .add) == .notStored)
        let after = store.get("sess")!.item
        #expect(after.value == before.value)
        #expect(after.cas == before.cas)
        #expect(after.deadline == before.deadline)
        clock.advance(seconds: 10)
        #expect(store.value("sess") == "data")
    }

    @Test("add on an expired key stores")
    func addOnExpired() {
        let (store, clock) = makeStore()
        _ = store.set("k", "old", deadline: .memcached(exptime: 1, now: clock.nowMillis()))
        clock.advance(seconds: 1)
        guard case .stored = store.set("k", "new", mode: .add) else {
            Issue.record("add on an expired key must store")
            return
        }
        #expect(store.value("k") == "new")
    }

    @Test("replace, append and prepend need the key; they keep flags and deadline")
    func replaceAppendPrepend() {
        let (store, clock) = makeStore()
        #expect(store.set("k", "x", mode: .replace) == .notStored)
        #expect(store.set("k", "x", mode: .append) == .notStored)
        #expect(store.set("k", "x", mode: .prepend) == .notStored)
        #expect(store.value("k") == nil)
        _ = store.set("k", "mid", flags: 42, deadline: .memcached(exptime: 100, now: clock.nowMillis()))
        guard case .stored = store.set("k", ">", flags: 7, mode: .append), case .stored = store.set("k", "<", flags: 7, mode: .prepend) else {
            Issue.record("append/prepend failed")
            return
        }
        let item = store.get("k")!.item
        #expect(String(decoding: item.value, as: UTF8.self) == "<mid>")
        #expect(item.flags == 42)
        #expect(item.deadline.millis == clock.nowMillis() + 100_000)
        guard case .stored = store.set("k", "r", flags: 9, mode: .replace) else {
            Issue.record("replace failed")
            return
        }
        #expect(store.get("k")?.item.flags == 9)
    }

    @Test("cas: match stores, mismatch is exists, missing is not found; tokens are unique and grow")
    func cas() {
        let (store, _) = makeStore()
        #expect(store.set("k", "v", compareCas: 1) == .notFound)
        _ = store.set("k", "v1")
        let first = store.get("k")!.item.cas
        #expect(store.set("k", "v2", compareCas: first &+ 1) == .exists)
        guard case .stored(let second, _) = store.set("k", "v2", compareCas: first) else {
            Issue.record("cas with the current token must store")
            return
        }
        #expect(second != first)
        #expect(store.set("k", "v3", compareCas: first) == .exists)
        #expect(store.value("k") == "v2")

        var seen = Set<UInt64>()
        for i in 0..<5000 {
            guard case .stored(let token, _) = store.set("key\(i)", "v") else { continue }
            #expect(seen.insert(token).inserted)
        }
        #expect(seen.count == 5000)
    }

    @Test("a value over the item size limit is refused")
    func tooLarge() {
        let (store, _) = makeStore(maxItem: 1024)
        #expect(store.set("k", String(repeating: "x", count: 1025)) == .tooLarge)
        guard case .stored = store.set("k", String(repeating: "x", count: 1024)) else {
            Issue.record("a value at the limit must store")
            return
        }
        #expect(store.set("k", "y", mode: .append) == .tooLarge)
    }

    @Test("delete: hit, miss, cas mismatch")
    func delete() {
        let (store, _) = makeStore()
        #expect(store.delete("k") == .notFound)
        _ = store.set("k", "v")
        let cas = store.get("k")!.item.cas
        #expect(store.delete("k", request: DeleteRequest(compareCas: cas + 1)) == .exists)
        #expect(store.delete("k") == .deleted)
        #expect(store.value("k") == nil)
    }

    @Test("binary values with every byte survive")
    func binaryValues() {
        let (store, _) = makeStore()
        let value = (0...255).map { UInt8($0) } + (0...255).map { UInt8(255 - $0) }
        let key = Array("bin".utf8)
        let outcome = key.withUnsafeBytes { k in value.withUnsafeBytes { try! store.store(k, value: $0, request: StoreRequest(mode: .set)) } }
        guard case .stored = outcome else {
            Issue.record("store failed")
            return
        }
        #expect(store.get("bin")?.item.value == value)
    }

    @Test("flushAll removes everything; cas keeps growing")
    func flush() {
        let (store, _) = makeStore()
        for i in 0..<100 { _ = store.set("k\(i)", "v") }
        let before = store.get("k1")!.item.cas
        store.flushAll()
        #expect(store.statistics().currentItems == 0)
        #expect(store.statistics().bytes == 0)
        #expect(store.value("k1") == nil)
        _ = store.set("k1", "v")
        #expect(store.get("k1")!.item.cas > before)
    }
}

@Suite("incr and decr")
struct ArithmeticTests {
    @Test("incr wraps at 2^64, decr floors at 0")
    func wrapAndFloor() {
        let (store, _) = makeStore()
        _ = store.set("n", "18446744073709551615")
        guard case .value(let wrapped, _, _) = store.incr("n", 1) else {
            Issue.record("incr failed")
            return
        }
        #expect(wrapped == 0)
        _ = store.set("n", "5")
        guard case .value(let floored, _, _) = store.incr("n", 10, increment: false) else {
            Issue.record("decr failed")
            return
        }
        #expect(floored == 0)
        #expect(store.value("n") == "0")
        _ = store.set("n", "99")
        _ = store.incr("n", 1)
        #expect(store.value("n") == "100")
        _ = store.incr("n", 91, increment: false)
        #expect(store.value("n") == "9")
    }

    @Test("non-numeric values, misses and overlong numbers")
    func nonNumeric() {
        let (store, _) = makeStore()
        #expect(store.incr("missing", 1) == .notFound)
        _ = store.set("t", "abc")
        #expect(store.incr("t", 1) == .nonNumeric)
        _ = store.set("t", "")
        #expect(store.incr("t", 1) == .nonNumeric)
        _ = store.set("t", "18446744073709551616")
        #expect(store.incr("t", 1) == .nonNumeric)
        _ = store.set("t", "12 ")
        guard case .value(13, _, _) = store.incr("t", 1) else {
            Issue.record("trailing spaces are allowed, as memcached pads in-place decrements")
            return
        }
    }

    @Test("incr keeps flags and deadline and changes cas")
    func keepsMetadata() {
        let (store, clock) = makeStore()
        _ = store.set("n", "1", flags: 5, deadline: .memcached(exptime: 60, now: clock.nowMillis()))
        let before = store.get("n")!.item
        _ = store.incr("n", 1)
        let after = store.get("n")!.item
        #expect(after.flags == 5)
        #expect(after.deadline == before.deadline)
        #expect(after.cas != before.cas)
    }

    @Test("vivify creates the initial value")
    func vivify() {
        let (store, _) = makeStore()
        let outcome = Array("v".utf8).withUnsafeBytes {
            try! store.arithmetic($0, request: ArithmeticRequest(increment: true, delta: 3, vivify: (deadline: .never, initial: 7)))
        }
        guard case .value(7, _, _) = outcome else {
            Issue.record("expected the initial value, got \(outcome)")
            return
        }
        #expect(store.value("v") == "7")
    }
}

@Suite("Memory limit and LRU")
struct MemoryTests {
    @Test("past the limit the least recently used items are evicted and counted")
    func lruEviction() {
        // One shard of 256 KB so the LRU order is global.
        let (store, _) = makeStore(memory: 256 << 10, maxItem: 16 << 10, shards: 1)
        let value = String(repeating: "x", count: 1000)
        _ = store.set("keep", value)
        for i in 0..<1000 {
            _ = store.set("k\(i)", value)
            // Reading "keep" now and then keeps it at the head of the LRU.
            if i % 10 == 0 { _ = store.get("keep") }
        }
        let stats = store.statistics()
        #expect(stats.evictions > 0)
        #expect(stats.bytes <= 256 << 10)
        #expect(store.value("keep") != nil)
        #expect(store.value("k0") == nil)
        #expect(store.value("k999") != nil)
        #expect(UInt64(stats.currentItems) + stats.evictions == 1001)
    }

    @Test("with evictions disabled a write that does not fit fails")
    func noEvictions() {
        let (store, _) = makeStore(memory: 64 << 10, evictions: false, maxItem: 8 << 10, shards: 1)
        let value = String(repeating: "x", count: 1000)
        var stored = 0
        var outOfMemory = 0
        for i in 0..<200 {
            switch store.set("k\(i)", value) {
            case .stored: stored += 1
            case .outOfMemory: outOfMemory += 1
            default: Issue.record("unexpected outcome")
            }
        }
        #expect(stored > 0)
        #expect(outOfMemory > 0)
        #expect(store.statistics().evictions == 0)
        #expect(store.value("k0") != nil)
        // Freeing memory makes room again.
        #expect(store.delete("k0") == .deleted)
        guard case .stored = store.set("again", value) else {
            Issue.record("a write must fit after a delete")
            return
        }
    }

    @Test("expired items are reclaimed before live ones are evicted, and are not counted as evictions")
    func expiredFirst() {
        let (store, clock) = makeStore(memory: 64 << 10, evictions: false, maxItem: 8 << 10, shards: 1)
        let value = String(repeating: "x", count: 1000)
        var i = 0
        while case .stored = store.set("old\(i)", value, deadline: .memcached(exptime: 1, now: clock.nowMillis())) { i += 1 }
        clock.advance(seconds: 2)
        guard case .stored = store.set("new", value) else {
            Issue.record("an expired item must make room even without evictions")
            return
        }
        #expect(store.statistics().evictions == 0)
    }

    @Test("small memory limits use fewer shards so the largest item still fits")
    func shardSizing() {
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 1 << 20, maxItemSize: 1 << 20, shardCount: 64))
        #expect(store.configuration.shardCount == 1)
        let big = SessionStore(configuration: StoreConfiguration(memoryLimit: 1024 << 20, maxItemSize: 1 << 20, shardCount: 64))
        #expect(big.configuration.shardCount == 64)
    }
}

@Suite("Meta state: stale items and win tokens")
struct MetaStateTests {
    /// A read as `mg` makes it: the only one that may hand out the win token.
    static let metaGet = FetchOptions(offersWinToken: true)

    @Test("invalidate marks stale; the first reader wins, later ones see Z")
    func invalidate() {
        let (store, _) = makeStore()
        _ = store.set("k", "v")
        let cas = store.get("k")!.item.cas
        #expect(store.delete("k", request: DeleteRequest(invalidate: true)) == .deleted)
        let first = store.get("k", options: Self.metaGet)!
        #expect(first.stale && first.won && !first.tokenAlreadySent)
        #expect(first.item.cas != cas)
        let second = store.get("k", options: Self.metaGet)!
        #expect(second.stale && !second.won && second.tokenAlreadySent)
        // A fresh set clears the marks.
        _ = store.set("k", "fresh")
        let third = store.get("k", options: Self.metaGet)!
        #expect(!third.stale && !third.won && !third.tokenAlreadySent)
    }

    @Test("reads other than mg do not use up a stale item's win token")
    func plainReadsKeepTheToken() {
        let (store, _) = makeStore()
        _ = store.set("k", "v")
        #expect(store.delete("k", request: DeleteRequest(invalidate: true)) == .deleted)
        let plain = store.get("k")!
        #expect(plain.stale && !plain.won && !plain.tokenAlreadySent)
        _ = store.get("k", options: FetchOptions(bump: false))
        let meta = store.get("k", options: Self.metaGet)!
        #expect(meta.won && !meta.tokenAlreadySent)
    }

    @Test("a stale store (I with an older CAS) keeps the deadline and the win token state")
    func staleStore() {
        let (store, clock) = makeStore()
        let deadline = Deadline.memcached(exptime: 100, now: clock.nowMillis())
        _ = store.set("k", "v", deadline: deadline)
        let old = store.get("k")!.item.cas
        #expect(store.delete("k", request: DeleteRequest(invalidate: true)) == .deleted)
        #expect(store.get("k", options: Self.metaGet)!.won)
        let request = StoreRequest(
            mode: .set, flags: 7, deadline: .memcached(exptime: 999, now: clock.nowMillis()), compareCas: old, invalidate: true
        )
        let outcome = Array("k".utf8).withUnsafeBytes { key in
            Array("late".utf8).withUnsafeBytes { try! store.store(key, value: $0, request: request) }
        }
        guard case .stored = outcome else {
            Issue.record("a stale store must store: \(outcome)")
            return
        }
        let after = store.get("k", options: Self.metaGet)!
        #expect(String(decoding: after.item.value, as: UTF8.self) == "late")
        #expect(after.item.flags == 7)
        #expect(after.item.deadline == deadline)
        // Still stale, and the win token already went to the first reader.
        #expect(after.stale && !after.won && after.tokenAlreadySent)

        // A stale store on an item whose token was not handed out leaves it to hand out once.
        _ = store.set("j", "v")
        let jOld = store.get("j")!.item.cas
        _ = store.set("j", "newer")
        let jOutcome = Array("j".utf8).withUnsafeBytes { key in
            Array("late".utf8).withUnsafeBytes { try! store.store(key, value: $0, request: StoreRequest(mode: .set, compareCas: jOld, invalidate: true)) }
        }
        guard case .stored = jOutcome else {
            Issue.record("a stale store must store: \(jOutcome)")
            return
        }
        let first = store.get("j", options: Self.metaGet)!
        #expect(first.stale && first.won)
        let second = store.get("j", options: Self.metaGet)!
        #expect(second.stale && !second.won && second.tokenAlreadySent)
        // A CAS newer than the item's is refused, with or without I.
        let newer = Array("j".utf8).withUnsafeBytes { key in
            Array("x".utf8).withUnsafeBytes {
                try! store.store(key, value: $0, request: StoreRequest(mode: .set, compareCas: second.item.cas + 1_000_000, invalidate: true))
            }
        }
        #expect(newer == .exists)
    }

    @Test("vivify on miss creates an empty item and hands out one win")
    func vivify() {
        let (store, _) = makeStore()
        let first = store.get("k", options: FetchOptions(vivify: .never, offersWinToken: true))!
        #expect(first.won)
        #expect(first.item.valueCount == 0)
        let second = store.get("k", options: FetchOptions(vivify: .never, offersWinToken: true))!
        #expect(!second.won && second.tokenAlreadySent)
    }

    @Test("hit-before and last access")
    func hitBefore() {
        let (store, clock) = makeStore()
        _ = store.set("k", "v")
        #expect(store.get("k")?.hitBefore == false)
        clock.advance(seconds: 3)
        let again = store.get("k")!
        #expect(again.hitBefore)
        #expect(again.millisSinceLastAccess == 3000)
    }
}

@Suite("Index integrity")
struct IndexTests {
    @Test("random sets and deletes agree with a dictionary model")
    func modelCheck() {
        let (store, _) = makeStore(shards: 4)
        var model: [String: String] = [:]
        var random = SplitMix64(seed: 42)
        for step in 0..<50_000 {
            let key = "key\(Int.random(in: 0..<2000, using: &random))"
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<5:
                let value = "v\(step)"
                _ = store.set(key, value)
                model[key] = value
            case 5..<8:
                let outcome = store.delete(key)
                #expect((outcome == .deleted) == (model.removeValue(forKey: key) != nil))
            default:
                #expect(store.value(key) == model[key])
            }
        }
        for (key, value) in model { #expect(store.value(key) == value) }
        #expect(store.statistics().currentItems == model.count)
    }
}
