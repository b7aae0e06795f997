@testable import SessionStore
import TandemTestSupport
import Testing

/// `withUnsafeBytes` for a body that throws `ValueOnDisk` (the standard
/// library's `rethrows` widens it to `any Error`).
func withBytes<T>(_ text: String, _ body: (UnsafeRawBufferPointer) throws(ValueOnDisk) -> T) throws(ValueOnDisk) -> T {
    let result: Result<T, ValueOnDisk> = Array(text.utf8).withUnsafeBytes { bytes in Result { () throws(ValueOnDisk) in try body(bytes) } }
    return try result.get()
}

/// Values that leave RAM (`valuesLeaveRAM`): only clean ones go, the item
/// stays, and an operation that needs the value says so before it changes
/// anything.
@Suite("Values that leave RAM")
struct ColdValueTests {
    /// A store that lets values go, and a log it commits to: the rows by seq,
    /// as the writer would have them.
    final class LoggedStore {
        let clock = ManualClock()
        let store: SessionStore
        private(set) var rows: [UInt64: (value: [UInt8], cas: UInt64)] = [:]
        private var nextSeq: UInt64 = 1

        init(memory: Int, evictions: Bool = true, maxItem: Int = 1024) {
            var configuration = StoreConfiguration(memoryLimit: memory, evictionsEnabled: evictions, maxItemSize: maxItem, shardCount: 1, recordsChanges: true)
            configuration.valuesLeaveRAM = true
            store = SessionStore(configuration: configuration, clock: clock)
        }

        /// Commits what the store recorded, newest per key, as the writer does.
        func commit() {
            var newest: [[UInt8]: Change] = [:]
            for change in store.takeChanges() {
                if change.kind == .flushAll { newest.removeAll() }
                newest[change.key] = change
            }
            var committed: [CommittedRow] = []
            for change in newest.values where change.kind == .upsert {
                let seq = nextSeq
                nextSeq += 1
                rows[seq] = (change.withValueBytes { Array($0) }, change.stamp)
                committed.append(CommittedRow(
                    storage: change.storage, keyLength: change.keyLength, seq: seq, length: UInt32(change.valueCount), cas: change.stamp
                ))
            }
            _ = store.markCommitted(committed)
        }

        /// Runs `operation`, reading a cold value from the log and installing
        /// it whenever it asks, as a connection does.
        func run<T>(_ operation: () throws(ValueOnDisk) -> T) -> T {
            for _ in 0..<8 {
                do {
                    return try operation()
                } catch {
                    let row = rows[error.seq]!
                    #expect(row.cas == error.cas)
                    #expect(row.value.count == Int(error.length))
                    row.value.withUnsafeBytes { value in
                        error.key.withUnsafeBytes { key in _ = store.install(key, value: value, cas: error.cas) }
                    }
                }
            }
            Issue.record("a value kept leaving RAM")
            fatalError()
        }

        func cold(_ key: String) -> Bool {
            Array(key.utf8).withUnsafeBytes { store.committedItem($0)?.isCold ?? false }
        }

        func present(_ key: String) -> Bool {
            Array(key.utf8).withUnsafeBytes { store.committedItem($0) != nil }
        }

        func evict(_ key: String) -> Bool {
            Array(key.utf8).withUnsafeBytes { store.evictValue($0) }
        }
    }

    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test("a dirty value stays; once its version commits it may go, and a read asks for it, changing nothing")
    func dirtyStaysCleanGoes() throws {
        let logged = LoggedStore(memory: 1 << 20)
        let store = logged.store
        _ = store.set("k", "first")
        #expect(!logged.evict("k"))
        logged.commit()
        _ = store.set("k", "second")
        #expect(!logged.evict("k"), "a newer version than the committed row is dirty")
        logged.commit()
        #expect(logged.evict("k"))
        #expect(logged.cold("k"))
        #expect(store.statistics().coldItems == 1)
        #expect(store.statistics().coldBytes == 6)

        let key = bytes("k")
        let thrown = #expect(throws: ValueOnDisk.self) { try key.withUnsafeBytes { try store.fetch($0) } }
        #expect(thrown?.length == 6)
        #expect(thrown?.key == key)
        #expect(logged.cold("k"), "the failed read changed nothing")
        // The header answers on its own.
        let header = try key.withUnsafeBytes { try store.fetch($0, options: FetchOptions(needsValue: false)) }
        #expect(header?.item.isCold == true)
        #expect(header?.item.valueCount == 6)

        let read = logged.run { () throws(ValueOnDisk) in try withBytes("k") { key throws(ValueOnDisk) in try store.fetch(key) } }
        #expect(read?.item.value == bytes("second"))
        #expect(!logged.cold("k"))
        #expect(store.statistics().valuesLoaded == 1)
        #expect(store.statistics().coldItems == 0)
    }

    @Test("a commit of an older version does not make a newer one clean")
    func olderCommitKeepsDirty() {
        let logged = LoggedStore(memory: 1 << 20)
        let store = logged.store
        _ = store.set("k", "one")
        let first = store.takeChanges()
        _ = store.set("k", "two")
        // The writer commits the first version only (the second was recorded after it took its batch).
        _ = store.markCommitted(first.map {
            CommittedRow(storage: $0.storage, keyLength: $0.keyLength, seq: 1, length: UInt32($0.valueCount), cas: $0.stamp)
        })
        #expect(!logged.evict("k"))
        #expect(store.value("k") == "two")
    }

    @Test("writes that replace the value need none; append, incr, touch, gat and invalidation read it first")
    func whatNeedsTheValue() throws {
        let logged = LoggedStore(memory: 1 << 20)
        let store = logged.store
        for key in ["set", "add", "cas", "del", "app", "num", "tch", "gat", "inv", "mgx"] {
            _ = store.set(key, key == "num" ? "41" : "value")
        }
        logged.commit()
        for key in ["set", "add", "cas", "del", "app", "num", "tch", "gat", "inv", "mgx"] { #expect(logged.evict(key)) }
        let casToken = try bytes("cas").withUnsafeBytes { try store.fetch($0, options: FetchOptions(needsValue: false)) }!.item.cas

        // No value needed: these run at once.
        #expect(store.set("set", "new") == .stored(cas: store.get("set")!.item.cas, size: 3))
        #expect(store.set("add", "x", mode: .add) == .notStored)
        #expect(logged.cold("add"))
        if case .stored = store.set("cas", "swapped", compareCas: casToken) {} else { Issue.record("cas on a cold item") }
        #expect(store.delete("del") == .deleted)
        #expect(store.value("set") == "new")
        #expect(store.value("cas") == "swapped")

        // These need the value: they throw, then run once it is installed.
        #expect(throws: ValueOnDisk.self) {
            try self.bytes("app").withUnsafeBytes { k in try self.bytes("+").withUnsafeBytes { try store.store(k, value: $0, request: StoreRequest(mode: .append)) } }
        }
        let appended = logged.run { () throws(ValueOnDisk) in
            try withBytes("app") { k throws(ValueOnDisk) in
                try withBytes("+") { v throws(ValueOnDisk) in try store.store(k, value: v, request: StoreRequest(mode: .append)) }
            }
        }
        if case .stored = appended {} else { Issue.record("append after the read: \(appended)") }
        #expect(store.value("app") == "value+")

        #expect(throws: ValueOnDisk.self) {
            try self.bytes("num").withUnsafeBytes { try store.arithmetic($0, request: ArithmeticRequest(increment: true, delta: 1)) }
        }
        let incremented = logged.run { () throws(ValueOnDisk) in
            try withBytes("num") { k throws(ValueOnDisk) in try store.arithmetic(k, request: ArithmeticRequest(increment: true, delta: 1)) }
        }
        if case .value(42, _, _) = incremented {} else { Issue.record("incr after the read: \(incremented)") }

        #expect(throws: ValueOnDisk.self) { try self.bytes("tch").withUnsafeBytes { try store.touch($0, deadline: .never) } }
        #expect(logged.run { () throws(ValueOnDisk) in try withBytes("tch") { k throws(ValueOnDisk) in try store.touch(k, deadline: .never) } })

        let touchOnly = FetchOptions(touch: .never, needsValue: false)
        #expect(throws: ValueOnDisk.self) { try self.bytes("gat").withUnsafeBytes { try store.fetch($0, options: touchOnly) } }

        #expect(throws: ValueOnDisk.self) { try self.bytes("inv").withUnsafeBytes { try store.delete($0, request: DeleteRequest(invalidate: true)) } }
        #expect(logged.run { () throws(ValueOnDisk) in
            try withBytes("inv") { k throws(ValueOnDisk) in try store.delete(k, request: DeleteRequest(invalidate: true)) }
        } == .deleted)
        #expect(store.value("inv") == "value")

        // Emptying the value (meta `x`) needs none either.
        #expect(try bytes("mgx").withUnsafeBytes { try store.delete($0, request: DeleteRequest(removeValueOnly: true)) } == .deleted)
        #expect(store.value("mgx") == "")
    }

    @Test("a full store lets the least recently used clean values go and keeps every item")
    func fullStoreKeepsItems() throws {
        let logged = LoggedStore(memory: 64 << 10)
        let store = logged.store
        let value = String(repeating: "v", count: 900)
        for index in 0..<400 {
            _ = store.set("k\(index)", value)
            if index % 10 == 9 { logged.commit() }
        }
        logged.commit()
        let statistics = store.statistics()
        #expect(statistics.currentItems == 400)
        #expect(statistics.evictions == 0)
        #expect(statistics.valuesEvicted > 300)
        #expect(statistics.bytes <= 64 << 10)
        #expect(statistics.coldItems < 400, "the newest values stay warm")
        #expect(logged.cold("k0"))
        #expect(!logged.cold("k399"))
        // Every value is still there, read back one at a time.
        for index in 0..<400 {
            let read = logged.run { () throws(ValueOnDisk) in
                try withBytes("k\(index)") { k throws(ValueOnDisk) in try store.fetch(k) }
            }
            #expect(read.map { String(decoding: $0.item.value, as: UTF8.self) } == value, "k\(index)")
        }
        #expect(store.statistics().evictions == 0)
    }

    @Test("when every value is dirty, writes overdraw the limit by half, then evict cold items (without -M) or are refused; no dirty value is dropped")
    func dirtyValuesAreNeverDropped() {
        let value = String(repeating: "d", count: 900)
        let refusing = LoggedStore(memory: 16 << 10, evictions: false)
        var outcomes: [StoreOutcome] = []
        for index in 0..<40 { outcomes.append(refusing.store.set("k\(index)", value)) }
        #expect(outcomes.contains(.outOfMemory))
        #expect(refusing.store.statistics().evictions == 0)
        #expect(refusing.store.statistics().bytes <= (16 << 10) + (8 << 10))
        #expect(refusing.store.statistics().bytes > 16 << 10, "the uncommitted writes overdraw the limit")
        // Every write acknowledged is still there.
        for (index, outcome) in outcomes.enumerated() where outcome != .outOfMemory {
            #expect(refusing.store.value("k\(index)") == value)
        }
        // Once committed, they may leave RAM: the next writes fit again.
        refusing.commit()
        #expect(refusing.store.set("after", value) != .outOfMemory)

        // Without -M: cold items go (a real loss, counted) only when nothing else can.
        let evicting = LoggedStore(memory: 16 << 10)
        for index in 0..<12 { _ = evicting.store.set("old\(index)", value) }
        evicting.commit()
        for index in 0..<12 { #expect(evicting.evict("old\(index)")) }
        var stored: [Int] = []
        for index in 0..<40 where evicting.store.set("new\(index)", value) != .outOfMemory { stored.append(index) }
        #expect(evicting.store.statistics().evictions > 0)
        for index in stored { #expect(evicting.store.value("new\(index)") == value, "new\(index) was acknowledged") }
    }

    @Test("a spent disk budget evicts the least recently used items, cold ones first; with -M it refuses new data but not overwrites")
    func diskBudget() {
        let logged = LoggedStore(memory: 1 << 20)
        let store = logged.store
        for index in 0..<20 { _ = store.set("k\(index)", String(repeating: "v", count: 100)) }
        logged.commit()
        for index in 0..<5 { #expect(logged.evict("k\(index)")) }
        // Three rows' worth: the three least recently used cold items go.
        #expect(store.evictForDisk(bytes: 3 * (2 + 100 + 32), rowOverhead: 32) == 3)
        #expect(store.statistics().evictions == 3)
        #expect(logged.present("k3") && logged.present("k4") && logged.present("k5"))
        #expect((0..<3).allSatisfy { !logged.present("k\($0)") })

        let refusing = LoggedStore(memory: 1 << 20, evictions: false)
        _ = refusing.store.set("old", "12345")
        refusing.store.setDiskFull(true)
        #expect(refusing.store.set("new", "x") == .outOfMemory)
        #expect(refusing.store.set("old", "123456") == .outOfMemory, "a larger value adds data")
        if case .stored = refusing.store.set("old", "abc") {} else { Issue.record("an overwrite that adds nothing is refused") }
        #expect(refusing.store.delete("old") == .deleted)
        refusing.store.setDiskFull(false)
        if case .stored = refusing.store.set("new", "x") {} else { Issue.record("the budget has room again") }
    }

    @Test("with headers filling -m, a touch or an append of a cold item still runs: its value overdraws the limit rather than fail")
    func touchWhenHeadersFillMemory() {
        let logged = LoggedStore(memory: 24 << 10, maxItem: 1024)
        let store = logged.store
        var index = 0
        // Cold items until their headers alone fill the limit.
        while store.statistics().bytes < (24 << 10) - 200 {
            _ = store.set("h\(index)", "value of \(index)")
            logged.commit()
            #expect(logged.evict("h\(index)"))
            index += 1
        }
        #expect(store.statistics().coldItems == index)
        let touched = logged.run { () throws(ValueOnDisk) in try withBytes("h0") { k throws(ValueOnDisk) in try store.touch(k, deadline: .never) } }
        #expect(touched)
        let appended = logged.run { () throws(ValueOnDisk) in
            try withBytes("h1") { k throws(ValueOnDisk) in
                try withBytes("!") { v throws(ValueOnDisk) in try store.store(k, value: v, request: StoreRequest(mode: .append)) }
            }
        }
        if case .stored = appended {} else { Issue.record("append: \(appended)") }
        #expect(store.value("h1") == "value of 1!")
        #expect(store.statistics().evictions == 0)
    }

    @Test("recovery may load a header alone: the item is cold until read")
    func restoreCold() throws {
        let logged = LoggedStore(memory: 1 << 20)
        let store = logged.store
        let key = bytes("restored")
        #expect(key.withUnsafeBytes { store.restoreCold($0, flags: 7, deadline: .never, cas: 99, seq: 12, length: 5) })
        let header = try key.withUnsafeBytes { try store.fetch($0, options: FetchOptions(needsValue: false)) }
        #expect(header?.item.flags == 7)
        #expect(header?.item.isCold == true)
        let thrown = #expect(throws: ValueOnDisk.self) { try key.withUnsafeBytes { try store.fetch($0) } }
        #expect(thrown == ValueOnDisk(key: key, cas: 99, seq: 12, length: 5))
        #expect(bytes("hello").withUnsafeBytes { value in key.withUnsafeBytes { store.install($0, value: value, cas: 99) } })
        #expect(store.value("restored") == "hello")
    }

    @Test("a seeded model: random writes, reads, deletes and commits under a small limit return what was written", arguments: [1, 2, 3, 4, 5] as [UInt64])
    func model(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let logged = LoggedStore(memory: 96 << 10, maxItem: 4096)
        let store = logged.store
        var model: [String: String] = [:]
        for step in 0..<6_000 {
            let key = "k\(random.int(0...199))"
            let keyBytes = Array(key.utf8)
            switch random.int(0...99) {
            case 0..<35:
                let value = String(repeating: Character(UnicodeScalar(UInt8(97 + random.int(0...25)))), count: random.int(0...1200))
                _ = store.set(key, value)
                model[key] = value
            case 35..<45:
                let suffix = "+\(step)"
                let outcome = logged.run { () throws(ValueOnDisk) in
                    try withBytes(key) { k throws(ValueOnDisk) in
                        try withBytes(suffix) { v throws(ValueOnDisk) in try store.store(k, value: v, request: StoreRequest(mode: .append)) }
                    }
                }
                if let old = model[key] {
                    if case .stored = outcome { model[key] = old + suffix } else { Issue.record("append: \(outcome)") }
                } else {
                    #expect(outcome == .notStored)
                }
            case 45..<52:
                #expect(store.delete(key) == (model.removeValue(forKey: key) == nil ? .notFound : .deleted))
            case 52..<57:
                let found = logged.run { () throws(ValueOnDisk) in try withBytes(key) { k throws(ValueOnDisk) in try store.touch(k, deadline: .never) } }
                #expect(found == (model[key] != nil))
            case 57..<70:
                logged.commit()
            case 70..<75:
                _ = logged.evict(key)
            default:
                let read = logged.run { () throws(ValueOnDisk) in try withBytes(key) { k throws(ValueOnDisk) in try store.fetch(k) } }
                #expect(read.map { String(decoding: $0.item.value, as: UTF8.self) } == model[key], "seed \(seed) step \(step) \(key)")
            }
        }
        let statistics = store.statistics()
        #expect(statistics.evictions == 0)
        #expect(statistics.currentItems == model.count)
        #expect(statistics.valuesEvicted > 0)
        for (key, value) in model {
            let read = logged.run { () throws(ValueOnDisk) in try withBytes(key) { k throws(ValueOnDisk) in try store.fetch(k) } }
            #expect(read.map { String(decoding: $0.item.value, as: UTF8.self) } == value)
        }
    }
}
