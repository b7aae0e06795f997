import Foundation
import Logging
import SessionPersistence
import SessionStore
import Testing

/// A fresh directory under the system temp dir, removed at the end.
final class TemporaryDirectory {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "tandem-persistence-\(UUID().uuidString)"
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

struct Node {
    let store: SessionStore
    let persistence: Persistence
    let clock: ManualClock
}

/// Opens a node on `directory`; with `start: false` its writer is not started yet.
func openNode(
    _ directory: String, clock: ManualClock = ManualClock(millis: Int64(Date().timeIntervalSince1970 * 1000)), memory: Int = 64 << 20,
    flushMillis: Int = 10, start: Bool = true, valuesLeaveRAM: Bool = false
) throws -> Node {
    var configuration = StoreConfiguration(memoryLimit: memory, maxItemSize: 2 << 20, shardCount: 8, recordsChanges: true)
    configuration.valuesLeaveRAM = valuesLeaveRAM
    let store = SessionStore(configuration: configuration, clock: clock)
    var logger = Logger(label: "test")
    logger.logLevel = .error
    let persistence = try Persistence.open(
        configuration: PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: flushMillis),
        store: store, logger: logger
    )
    store.attachColdValueReader(persistence.values)
    if start { persistence.start() }
    return Node(store: store, persistence: persistence, clock: clock)
}

extension SessionStore {
    func put(_ key: String, _ value: [UInt8], flags: UInt32 = 0, exptime: Int64 = 0) -> StoreOutcome {
        let deadline = Deadline.memcached(exptime: exptime, now: now())
        return Array(key.utf8).withUnsafeBytes { k in
            value.withUnsafeBytes { try! store(k, value: $0, request: StoreRequest(mode: .set, flags: flags, deadline: deadline)) }
        }
    }

    func item(_ key: String) -> ItemSnapshot? {
        Array(key.utf8).withUnsafeBytes { try! fetch($0, options: FetchOptions(bump: false, needsValue: false)) }?.item
    }

    func remove(_ key: String) -> DeleteOutcome {
        Array(key.utf8).withUnsafeBytes { try! delete($0) }
    }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(within seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.005)
    }
    return condition()
}

@Suite("Write-behind and recovery", .serialized)
struct RecoveryTests {
    /// 60,000 items is past `parallelRecoveryRows`: several threads each
    /// recover a slice of the file, and every slice's items must come back.
    @Test(
        "a stopped node comes back with every item, its flags, deadline and cas; new cas values are larger",
        arguments: [2000, 60_000]
    )
    func roundTrip(count: Int) throws {
        let directory = TemporaryDirectory()
        let first = try openNode(directory.path)
        var expected: [String: ItemSnapshot] = [:]
        for i in 0..<count {
            let value = Array("value-\(i)-".utf8) + (0..<(i % 50)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            _ = first.store.put("k\(i)", value, flags: UInt32(i), exptime: i % 3 == 0 ? 0 : Int64(100 + i))
            expected["k\(i)"] = first.store.item("k\(i)")
        }
        let maxCas = expected.values.map(\.cas).max()!
        first.persistence.stop()
        #expect(first.persistence.statistics().pending == 0)

        let second = try openNode(directory.path, clock: first.clock)
        defer { second.persistence.stop() }
        #expect(second.persistence.recovery.items == count)
        for (key, item) in expected {
            let restored = second.store.item(key)
            #expect(restored?.value == item.value, "value of \(key)")
            #expect(restored?.flags == item.flags)
            #expect(restored?.deadline == item.deadline)
            #expect(restored?.cas == item.cas)
        }
        guard case .stored(let cas, _) = second.store.put("fresh", [1]) else {
            Issue.record("store failed")
            return
        }
        #expect(cas > maxCas)
    }

    @Test("deletes, flush_all, expiry and eviction are not resurrected")
    func noResurrection() throws {
        let directory = TemporaryDirectory()
        let clock = ManualClock(millis: Int64(Date().timeIntervalSince1970 * 1000))
        let first = try openNode(directory.path, clock: clock, memory: 256 << 10)
        _ = first.store.put("deleted", [1])
        _ = first.store.put("expiring", [1], exptime: 5)
        _ = first.store.put("flushed", [1])
        #expect(eventually { first.persistence.statistics().pending == 0 })
        first.store.flushAll()
        _ = first.store.put("after-flush", [2])
        _ = first.store.put("deleted", [3])
        #expect(first.store.remove("deleted") == .deleted)
        _ = first.store.put("expiring", [4], exptime: 5)
        clock.advance(seconds: 6)
        first.store.reclaimExpired()
        // Fill a 256 KB store so that early items are evicted.
        for i in 0..<200 { _ = first.store.put("fill\(i)", [UInt8](repeating: 9, count: 4000)) }
        #expect(first.store.statistics().evictions > 0)
        let survivors = Set((0..<200).filter { first.store.item("fill\($0)") != nil })
        let afterFlushSurvived = first.store.item("after-flush") != nil
        first.persistence.stop()

        let second = try openNode(directory.path, clock: clock, memory: 64 << 20)
        defer { second.persistence.stop() }
        #expect(second.store.item("deleted") == nil)
        #expect(second.store.item("expiring") == nil)
        #expect(second.store.item("flushed") == nil)
        #expect((second.store.item("after-flush")?.value == [2]) == afterFlushSurvived)
        let restored = Set((0..<200).filter { second.store.item("fill\($0)") != nil })
        #expect(restored == survivors)
    }

    @Test("large and binary values")
    func largeValues() throws {
        let directory = TemporaryDirectory()
        let first = try openNode(directory.path)
        let megabyte = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let everyByte = (0...255).map { UInt8($0) }
        #expect(first.store.put("mb", megabyte) != .tooLarge)
        _ = first.store.put("bytes", everyByte)
        _ = first.store.put("empty", [])
        first.persistence.stop()
        let second = try openNode(directory.path)
        defer { second.persistence.stop() }
        #expect(second.store.item("mb")?.value == megabyte)
        #expect(second.store.item("bytes")?.value == everyByte)
        #expect(second.store.item("empty")?.value == [])
    }

    @Test("a removed database file is recreated from memory")
    func fileRemoved() throws {
        let directory = TemporaryDirectory()
        let first = try openNode(directory.path)
        for i in 0..<100 { _ = first.store.put("k\(i)", [UInt8(i)]) }
        #expect(eventually { first.persistence.statistics().pending == 0 })
        let database = directory.path + "/tandem.sqlite3"
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: database + suffix) }
        _ = first.store.put("after", [1])
        #expect(eventually { first.persistence.statistics().pending == 0 && FileManager.default.fileExists(atPath: database) })
        first.persistence.stop()
        let second = try openNode(directory.path)
        defer { second.persistence.stop() }
        #expect(second.persistence.recovery.items == 101)
    }

    /// The writer never checkpoints while the WAL is short; the checkpointer
    /// thread folds it into the database file, past a length and once the
    /// writes stop. Only then does the file without its WAL hold everything.
    @Test("the checkpointer folds the WAL into the file: the file of a quiet node holds every item by itself")
    func walFoldedByCheckpointer() throws {
        let directory = TemporaryDirectory()
        let node = try openNode(directory.path)
        defer { node.persistence.stop() }
        let count = 10_000
        let value = [UInt8](repeating: 0x5A, count: 2048)
        for i in 0..<count { _ = node.store.put("session-\(i)", value) }
        #expect(eventually(within: 20) { node.persistence.statistics().pending == 0 })

        // Copies the database file alone, as if its WAL were lost, and recovers
        // from the copy: every item must be there.
        let copy = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: copy.path, withIntermediateDirectories: true)
        let recovered = eventually(within: 20) {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: copy.path + "/tandem.sqlite3" + suffix) }
            guard (try? FileManager.default.copyItem(atPath: directory.path + "/tandem.sqlite3", toPath: copy.path + "/tandem.sqlite3")) != nil,
                let reopened = try? openNode(copy.path)
            else { return false }
            reopened.persistence.stop()
            return reopened.persistence.recovery.items == count
        }
        #expect(recovered)
    }
}

@Suite("Refusing bad data directories", .serialized)
struct StartupErrorTests {
    func expectRefusal(_ directory: String, _ matches: (PersistenceError) -> Bool) {
        do {
            let node = try openNode(directory)
            node.persistence.stop()
            Issue.record("expected the node to refuse \(directory)")
        } catch let error as PersistenceError {
            #expect(matches(error), "unexpected error: \(error)")
            #expect("\(error)".contains(directory))
        } catch {
            Issue.record("unexpected error type: \(error)")
        }
    }

    func writeFile(_ path: String, _ bytes: [UInt8]) {
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    @Test("a file that is not SQLite is refused and left untouched")
    func notSQLite() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let garbage = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        writeFile(directory.path + "/tandem.sqlite3", garbage)
        expectRefusal(directory.path) { if case .notADatabase = $0 { return true } else { return false } }
        #expect(FileManager.default.contents(atPath: directory.path + "/tandem.sqlite3") == Data(garbage))
    }

    @Test("a corrupt Tandem database is refused and left untouched")
    func corrupt() throws {
        let directory = TemporaryDirectory()
        let node = try openNode(directory.path)
        for i in 0..<3000 { _ = node.store.put("k\(i)", [UInt8](repeating: UInt8(i % 256), count: 500)) }
        node.persistence.stop()
        let path = directory.path + "/tandem.sqlite3"
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        // Keep the header; scribble over the schema page and the pages after it.
        for index in 100..<min(bytes.count, 64 * 1024) { bytes[index] = UInt8(truncatingIfNeeded: index &* 7) }
        writeFile(path, bytes)
        expectRefusal(directory.path) {
            switch $0 {
            case .unreadable, .notADatabase, .foreignDatabase: return true
            default: return false
            }
        }
        #expect(FileManager.default.contents(atPath: path) == Data(bytes))
    }

    @Test("an SQLite file of another program, or of a newer schema, is refused")
    func foreignAndNewer() throws {
        let directory = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: true)
        let path = directory.path + "/tandem.sqlite3"
        try runSQLite(path, "CREATE TABLE other (x); INSERT INTO other VALUES (1);")
        expectRefusal(directory.path) { if case .foreignDatabase = $0 { return true } else { return false } }

        let newer = TemporaryDirectory()
        let node = try openNode(newer.path)
        node.persistence.stop()
        try runSQLite(newer.path + "/tandem.sqlite3", "PRAGMA user_version = 99;")
        expectRefusal(newer.path) { if case .newerSchema(_, 99, _) = $0 { return true } else { return false } }
    }

    @Test("a second node on the same directory is refused")
    func locked() throws {
        let directory = TemporaryDirectory()
        let node = try openNode(directory.path)
        defer { node.persistence.stop() }
        expectRefusal(directory.path) { if case .locked = $0 { return true } else { return false } }
    }

    @Test("a data directory that is a file is refused")
    func notADirectory() throws {
        let directory = TemporaryDirectory()
        writeFile(directory.path, [1, 2, 3])
        expectRefusal(directory.path) { if case .directoryUnusable = $0 { return true } else { return false } }
        try? FileManager.default.removeItem(atPath: directory.path)
    }

    /// Runs SQL with the sqlite3 command-line tool (Debian `sqlite3`).
    func runSQLite(_ path: String, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        process.arguments = [path, sql]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "sqlite3 failed")
    }
}
