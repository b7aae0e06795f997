import Foundation
import Logging
import SessionStore
import Synchronization
import Testing

@testable import SessionPersistence

/// Opens a node whose log has tiny segments, so that sealing and compaction
/// happen within a few hundred writes.
private func openLogNode(
    _ directory: String, segmentBytes: Int = 16 << 10, source: ((SessionStore) -> any ChangeSource)? = nil, start: Bool = true,
    millis: Int64 = Int64(Date().timeIntervalSince1970 * 1000)
) throws -> Node {
    let clock = ManualClock(millis: millis)
    let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 64 << 20, shardCount: 8, recordsChanges: true), clock: clock)
    var logger = Logger(label: "test")
    logger.logLevel = .error
    var configuration = PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: 5)
    configuration.segmentBytes = segmentBytes
    let persistence = try Persistence.open(configuration: configuration, store: store, source: source?(store), logger: logger)
    if start { persistence.start() }
    return Node(store: store, persistence: persistence, clock: clock)
}

/// Passes the store's changes on, except those of keys it holds back: as if
/// those changes were still waiting when the process was killed.
private final class WithholdingSource: ChangeSource {
    let store: SessionStore
    let withheld = Mutex<Set<[UInt8]>>([])
    let held = Mutex<[Change]>([])

    init(store: SessionStore) { self.store = store }

    func takeChanges() -> [Change] {
        let keys = withheld.withLock { $0 }
        let changes = store.takeChanges()
        held.withLock { held in held += changes.filter { keys.contains($0.key) } }
        return changes.filter { !keys.contains($0.key) }
    }

    var pendingChanges: Int { store.pendingChanges }
}

/// The bytes of the log's rows in the file, and the live bytes the store's items make.
private func logBytes(_ path: String) throws -> Int {
    let connection = try SQLiteConnection(path: path, mode: .readOnly)
    var total = 0
    for id in try ItemDatabase.segmentIDs(connection) {
        total += Int(try connection.integer(
            "SELECT ifnull(sum(length(key) + ifnull(length(value), 0) + \(ItemDatabase.rowOverhead)), 0) FROM \(ItemDatabase.tableName(id))"
        ))
    }
    return total
}

private func value(_ store: SessionStore, _ key: String) -> [UInt8]? {
    Array(key.utf8).withUnsafeBytes { try! store.fetch($0)?.item.value }
}

@Suite("The log: segments, compaction, flush_all, upgrade")
struct LogTests {
    @Test("overwrites keep the log within about twice the live data, and a restart loses nothing")
    func compactionBound() throws {
        let directory = TemporaryDirectory()
        let node = try openLogNode(directory.path)
        let keys = 200
        var expected: [String: [UInt8]] = [:]
        // Batches of 20 overwrites, each committed before the next: a commit
        // small against the live data, as under a steady load.
        for round in 0..<300 {
            for slot in 0..<20 {
                let index = (round * 20 + slot) % keys
                let value = [UInt8](repeating: UInt8(truncatingIfNeeded: round &* 7 &+ index), count: 100 + (index * 13 + round) % 200)
                expected["key:\(index)"] = value
                _ = node.store.put("key:\(index)", value)
            }
            #expect(eventually(within: 20) { node.persistence.statistics().pending == 0 })
        }
        let statistics = node.persistence.statistics()
        let live = expected.reduce(0) { $0 + ItemDatabase.rowBytes(keyLength: $1.key.utf8.count, valueLength: $1.value.count) }
        #expect(statistics.compactions > 10)
        #expect(statistics.liveBytes == live)
        node.persistence.stop()
        // The rows in the file: what compaction left, at most 1.8× the live
        // bytes plus the head it never drops (one segment) and the last commit.
        let inFile = try logBytes(directory.path + "/tandem.sqlite3")
        #expect(inFile >= live)
        #expect(Double(inFile) <= 2.0 * Double(live) + Double(16 << 10), "log \(inFile) bytes for \(live) live")

        let reopened = try openLogNode(directory.path)
        defer { reopened.persistence.stop() }
        #expect(reopened.persistence.recovery.items == keys)
        for (key, bytes) in expected { #expect(value(reopened.store, key) == bytes, "\(key)") }
        #expect(reopened.persistence.statistics().liveBytes == live)
    }

    @Test("a kill -9 between an overwrite and its commit keeps the key, though compaction dropped its old segment")
    func uncommittedOverwriteSurvivesCompaction() throws {
        let directory = TemporaryDirectory()
        var source: WithholdingSource?
        let node = try openLogNode(directory.path, source: { store in
            let made = WithholdingSource(store: store)
            source = made
            return made
        })
        let first = [UInt8](repeating: 1, count: 300)
        _ = node.store.put("kept", first)
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        // The overwrite is acknowledged in RAM but never committed.
        source!.withheld.withLock { $0.insert(Array("kept".utf8)) }
        _ = node.store.put("kept", [UInt8](repeating: 2, count: 300))
        let compactionsBefore = node.persistence.statistics().compactions
        for round in 0..<40 {
            for index in 0..<50 { _ = node.store.put("churn:\(index)", [UInt8](repeating: UInt8(round), count: 300)) }
            #expect(eventually(within: 20) { node.persistence.statistics().pending == 0 })
        }
        // Row 1, in the first segment, held "kept": that segment is gone now.
        let connection = try SQLiteConnection(path: directory.path + "/tandem.sqlite3", mode: .readOnly)
        #expect(try ItemDatabase.segmentIDs(connection).first ?? 0 > 1)
        connection.close()
        #expect(node.persistence.statistics().compactions > compactionsBefore)
        // The crash: stop commits what the source passes on, and it never passes the overwrite.
        node.persistence.stop()
        #expect(source!.held.withLock { $0.count } == 1)

        let reopened = try openLogNode(directory.path)
        defer { reopened.persistence.stop() }
        #expect(value(reopened.store, "kept") == first || value(reopened.store, "kept") == [UInt8](repeating: 2, count: 300))
        #expect(value(reopened.store, "churn:0") == [UInt8](repeating: 39, count: 300))
    }

    @Test("flush_all, then a write: a restart finds the write only, and the old segments go")
    func flushAllThenRestart() throws {
        let directory = TemporaryDirectory()
        let node = try openLogNode(directory.path)
        for index in 0..<300 { _ = node.store.put("old:\(index)", [UInt8](repeating: 3, count: 200)) }
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        #expect(node.persistence.statistics().segments > 2)
        node.store.flushAll()
        _ = node.store.put("new", Array("after".utf8))
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        // Every sealed segment was dead: compaction dropped them all.
        #expect(eventually(within: 10) { node.persistence.statistics().segments <= 2 })
        node.persistence.stop()

        let reopened = try openLogNode(directory.path)
        defer { reopened.persistence.stop() }
        #expect(reopened.persistence.recovery.items == 1)
        #expect(value(reopened.store, "new") == Array("after".utf8))
        #expect(value(reopened.store, "old:0") == nil)
    }

    @Test("deletes and expiries are tombstone rows: a restart does not bring the older row back")
    func tombstonesHide() throws {
        let directory = TemporaryDirectory()
        let node = try openLogNode(directory.path)
        _ = node.store.put("deleted", Array("v".utf8))
        _ = node.store.put("touched", Array("v".utf8))
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        #expect(Array("deleted".utf8).withUnsafeBytes { try! node.store.delete($0) } == .deleted)
        // A touch that expires before it commits: the row on disk has no deadline.
        _ = Array("touched".utf8).withUnsafeBytes { try! node.store.touch($0, deadline: Deadline(millis: node.clock.nowMillis() + 1000)) }
        node.clock.advance(millis: 2000)
        #expect(value(node.store, "touched") == nil)
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        node.persistence.stop()

        let reopened = try openLogNode(directory.path)
        defer { reopened.persistence.stop() }
        #expect(value(reopened.store, "deleted") == nil)
        #expect(value(reopened.store, "touched") == nil)
        // The delete's stamp and the expired version's both stay: a peer's
        // older version of either key must not come back.
        #expect(reopened.store.tombstoneCount == 2)
        let outcome = Array("touched".utf8).withUnsafeBytes { key in
            Array("older".utf8).withUnsafeBytes { reopened.store.merge(key, value: $0, flags: 0, deadline: .never, stamp: 1) }
        }
        guard case .kept = outcome else {
            Issue.record("an older version of an expired key was merged back: \(outcome)")
            return
        }
    }

    @Test("the expiry of a clean item appends no row: its committed row expires by its own deadline, across a restart too")
    func cleanExpiryWritesNoRow() throws {
        let directory = TemporaryDirectory()
        let node = try openLogNode(directory.path)
        let deadline = Deadline(millis: node.clock.nowMillis() + 1000)
        _ = Array("expiring".utf8).withUnsafeBytes { key in
            Array("v".utf8).withUnsafeBytes { try! node.store.store(key, value: $0, request: StoreRequest(mode: .set, deadline: deadline)) }
        }
        // Committed, and marked so before the writer counts nothing pending: the item is clean.
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        let before = node.persistence.statistics().logBytes
        node.clock.advance(millis: 1000)
        #expect(value(node.store, "expiring") == nil)
        _ = node.store.put("other", Array("w".utf8))
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        let after = node.persistence.statistics().logBytes
        // Only the other key's row was appended.
        #expect(after - before == ItemDatabase.rowBytes(keyLength: 5, valueLength: 1))
        node.persistence.stop()

        let reopened = try openLogNode(directory.path, millis: node.clock.nowMillis())
        defer { reopened.persistence.stop() }
        #expect(value(reopened.store, "expiring") == nil)
        #expect(value(reopened.store, "other") == Array("w".utf8))
    }

    @Test("a full resync's flush (stamp 0) keeps the tombstones on disk, carried deletes included; a client's flush_all drops them")
    func resyncFlushKeepsTombstones() throws {
        let directory = TemporaryDirectory()
        let node = try openLogNode(directory.path)
        _ = node.store.put("committed", Array("v".utf8))
        _ = node.store.put("carried", Array("v".utf8))
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        #expect(Array("committed".utf8).withUnsafeBytes { try! node.store.delete($0) } == .deleted)
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        // A delete and the resync's flush in one batch: the flush must not void the delete's tombstone.
        node.persistence.stop()
        let paused = try openLogNode(directory.path, start: false)
        #expect(Array("carried".utf8).withUnsafeBytes { try! paused.store.delete($0) } == .deleted)
        paused.store.flushAll(stamp: 0)
        _ = paused.store.put("from the snapshot", Array("v".utf8))
        paused.persistence.start()
        #expect(eventually(within: 10) { paused.persistence.statistics().pending == 0 })
        paused.persistence.stop()

        let reopened = try openLogNode(directory.path)
        #expect(reopened.store.tombstoneCount == 2)
        #expect(reopened.persistence.recovery.items == 1)
        reopened.store.flushAll()
        #expect(eventually(within: 10) { reopened.persistence.statistics().pending == 0 })
        reopened.persistence.stop()
        let flushed = try openLogNode(directory.path)
        defer { flushed.persistence.stop() }
        #expect(flushed.store.tombstoneCount == 0)
    }

    @Test("a large log gets larger segments: far fewer than its size in segments of the configured size")
    func segmentCount() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let database = try ItemDatabase(path: directory.path + "/tandem.sqlite3", segmentBytes: 1024)
        defer { database.close() }
        database.maxSegments = 8
        let value = [UInt8](repeating: 9, count: 100)
        try database.begin()
        for index in 0..<2000 {
            _ = try Array("key:\(index)".utf8).withUnsafeBytes { key in
                try value.withUnsafeBytes { try database.append(key: key, value: $0, flags: 0, deadline: 0, cas: UInt64(index + 1)) }
            }
        }
        try database.commit()
        // 1 KB segments would be about 280 of them; the log's rows over 8
        // make each one up to an eighth of what came before it. Sizes grow
        // geometrically, so the count grows only with the log's log.
        #expect(database.segments.count < 60, "\(database.segments.count) segments")
        #expect(database.segments.count > 8)
        #expect(database.totalBytes == database.segments.reduce(0) { $0 + $1.totalBytes })
    }

    /// The stamp of `fix:07`'s delete in `Tests/fixtures/schema2/tandem.sqlite3`.
    static let fixtureTombstoneStamp: UInt64 = 7_358_912_162_804_256_781

    @Test("a schema-2 file made by the previous release is converted, every item kept")
    func upgradeFromFixture() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("fixtures/schema2/tandem.sqlite3").path
        try FileManager.default.copyItem(atPath: fixture, toPath: directory.path + "/tandem.sqlite3")
        #expect(try DataDirectory.check(path: directory.path) == .database(schemaVersion: 2))
        // What a conversion killed before its rename leaves: a partial new file beside the whole old one.
        try Data("partial".utf8).write(to: URL(fileURLWithPath: directory.path + "/tandem.sqlite3.converting"))
        try Data().write(to: URL(fileURLWithPath: directory.path + "/tandem.sqlite3.converting-wal"))

        // The node's clock reads the time the fixture was made (its tombstone's
        // stamp): tombstones are kept for an hour, and the fixture's one
        // must be within that for the test to see it converted, on any day.
        let madeAt = HybridTimestamp.millis(Self.fixtureTombstoneStamp)
        let node = try openLogNode(directory.path, segmentBytes: 16 << 20, millis: madeAt)
        #expect(node.persistence.recovery.items == 49)
        for index in 0..<50 where index != 7 && index != 10 {
            let found = Array(String(format: "fix:%02d", index).utf8).withUnsafeBytes { try! node.store.fetch($0) }
            #expect(found?.item.value == (index..<(index + 3 * index + 1)).map { UInt8($0 % 256) }, "fix:\(index)")
            #expect(found?.item.flags == UInt32(1000 + index))
            #expect((found?.item.deadline == .never) == (index % 2 == 0))
        }
        #expect(value(node.store, "fix:10") == Array("v2".utf8))
        #expect(value(node.store, "fix:07") == nil)
        #expect(node.store.tombstoneCount == 1)
        #expect(node.persistence.recoveredMeta["epoch"] != nil)
        for suffix in ["", "-wal", "-shm"] {
            #expect(!FileManager.default.fileExists(atPath: directory.path + "/tandem.sqlite3.converting" + suffix))
        }
        _ = node.store.put("after", Array("upgrade".utf8))
        #expect(eventually(within: 10) { node.persistence.statistics().pending == 0 })
        node.persistence.stop()
        #expect(try DataDirectory.check(path: directory.path) == .database(schemaVersion: 3))

        let connection = try SQLiteConnection(path: directory.path + "/tandem.sqlite3", mode: .readOnly)
        #expect(try connection.integer("PRAGMA page_size") == 65536)
        connection.close()
        let reopened = try openLogNode(directory.path, millis: madeAt + 1000)
        defer { reopened.persistence.stop() }
        #expect(reopened.persistence.recovery.items == 50)
        #expect(value(reopened.store, "after") == Array("upgrade".utf8))
    }
}

/// Values beyond `-m`: compaction and recovery with cold items, and the
/// reader threads.
@Suite("The log with values beyond RAM", .serialized)
struct ColdLogTests {
    func value(_ index: Int, generation: Int = 0) -> [UInt8] {
        Array("v\(index)g\(generation)-".utf8) + [UInt8](repeating: UInt8(truncatingIfNeeded: index &+ generation), count: 2000)
    }

    @Test("a restart under a small -m loads every header, then the newest values that fit in the background; the rest are read from the log")
    func recoveryLoadsWhatFits() async throws {
        let directory = TemporaryDirectory()
        let first = try openNode(directory.path)
        for index in 0..<3000 {
            #expect(first.store.put("k\(index)", value(index)) != .outOfMemory)
            // Commits of a hundred keys: a commit orders its rows by session, not by write.
            if index % 100 == 99 { #expect(eventually { first.persistence.statistics().pending == 0 }) }
        }
        first.persistence.stop()

        let second = try openNode(directory.path, clock: first.clock, memory: 1 << 20, valuesLeaveRAM: true)
        defer { second.persistence.stop() }
        #expect(second.persistence.recovery.items == 3000)
        // The headers are in before the port would open; the newest values
        // follow in the background.
        #expect(second.store.statistics().currentItems == 3000)
        #expect(eventually(within: 10) { !second.persistence.isWarmingUp })
        #expect(second.store.statistics().valuesLoaded >= 200)
        let statistics = second.store.statistics()
        #expect(statistics.currentItems == 3000)
        #expect(statistics.coldItems > 2000)
        #expect(statistics.bytes <= 1 << 20)
        #expect(statistics.evictions == 0)
        // The newest values are the ones in RAM.
        let warm = 3000 - statistics.coldItems
        let warmNewest = (2400..<3000).filter { second.store.item("k\($0)")?.isCold == false }.count
        let warmOldest = (0..<600).filter { second.store.item("k\($0)")?.isCold == false }.count
        #expect(warm > 100 && warmNewest >= warm * 2 / 3 && warmOldest == 0, "\(warm) warm: \(warmNewest) of the newest 600, \(warmOldest) of the oldest")
        for index in stride(from: 0, to: 3000, by: 37) {
            let item = try #require(second.store.item("k\(index)"))
            #expect(try await second.store.value(of: item) == value(index), "k\(index)")
        }
    }

    @Test("compaction re-appends cold rows from the log, and after it every value is still read, from RAM or the log")
    func compactionOfColdRows() async throws {
        let directory = TemporaryDirectory()
        let store = SessionStore(
            configuration: {
                var configuration = StoreConfiguration(memoryLimit: 512 << 10, maxItemSize: 256 << 10, shardCount: 1, recordsChanges: true)
                configuration.valuesLeaveRAM = true
                return configuration
            }(),
            clock: ManualClock(millis: Int64(Date().timeIntervalSince1970 * 1000))
        )
        var logger = Logger(label: "test")
        logger.logLevel = .error
        var configuration = PersistenceConfiguration(dataDirectory: directory.path, flushIntervalMillis: 5)
        configuration.segmentBytes = 64 << 10
        let persistence = try Persistence.open(configuration: configuration, store: store, logger: logger)
        store.attachColdValueReader(persistence.values)
        persistence.start()
        var expected: [String: [UInt8]] = [:]
        for index in 0..<600 {
            expected["k\(index)"] = value(index)
            #expect(store.put("k\(index)", value(index)) != .outOfMemory)
            // Values leave RAM once committed: the writes wait for it now and then.
            if index % 100 == 99 { #expect(eventually { persistence.statistics().pending == 0 }) }
        }
        #expect(eventually { persistence.statistics().pending == 0 })
        // Only a few keys are rewritten: the old segments hold mostly live, cold rows.
        for round in 1...40 {
            for index in 0..<20 {
                expected["k\(index)"] = value(index, generation: round)
                _ = store.put("k\(index)", value(index, generation: round))
            }
            #expect(eventually { persistence.statistics().pending == 0 })
        }
        #expect(persistence.statistics().compactions > 0)
        #expect(store.statistics().coldItems > 300)
        for (key, value) in expected {
            let item = try #require(store.item(key), "\(key)")
            #expect(try await store.value(of: item) == value, "\(key)")
        }
        persistence.stop()

        let reopened = try openNode(directory.path, memory: 64 << 20)
        defer { reopened.persistence.stop() }
        for (key, value) in expected { #expect(reopened.store.item(key)?.value == value, "\(key) after a restart") }
    }

    @Test("the reader answers nil for a row that is gone and reads a committed one")
    func readerAnswers() throws {
        let directory = TemporaryDirectory()
        let node = try openNode(directory.path, valuesLeaveRAM: true)
        defer { node.persistence.stop() }
        _ = node.store.put("k", value(1))
        #expect(eventually { node.persistence.statistics().pending == 0 && node.store.item("k")?.seq != 0 })
        let item = try #require(node.store.item("k"))
        #expect(try node.persistence.values.readNow(seq: item.seq)?.value == value(1))
        #expect(try node.persistence.values.readNow(seq: item.seq)?.cas == item.cas)
        #expect(try node.persistence.values.readNow(seq: item.seq + 1000) == nil)
        #expect(node.persistence.values.statistics.reads == 3)
    }
}
