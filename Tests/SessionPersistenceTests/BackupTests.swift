import Dispatch
import Foundation
import SessionPersistence
import SessionStore
import Synchronization
import Testing

/// Writes new keys on a thread of its own until stopped: the load a backup runs under.
final class BackgroundWriter: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let written = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)

    init(store: SessionStore) {
        Thread { [self] in
            var i = 0
            while !stopping.load(ordering: .relaxed) && i < 10_000 {
                _ = store.put("during-\(i)", [UInt8](repeating: UInt8(i % 251), count: 1000))
                i += 1
                written.store(i, ordering: .relaxed)
            }
            done.signal()
        }.start()
    }

    /// Stops writing; returns how many keys were written.
    func stop() -> Int {
        stopping.store(true, ordering: .relaxed)
        done.wait()
        return written.load(ordering: .relaxed)
    }
}

@Suite("Online backup", .serialized)
struct BackupTests {
    @Test("a backup taken while writes continue holds every committed item, and a node opens it as its data directory")
    func backupUnderLoad() async throws {
        let source = TemporaryDirectory()
        let target = TemporaryDirectory()
        let node = try openNode(source.path)
        var expected: [String: ItemSnapshot] = [:]
        // About 20 MB: several backup steps, with the writer committing between them.
        for i in 0..<10_000 {
            let value = Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 2000 + i % 100)
            _ = node.store.put("k\(i)", value, flags: UInt32(i), exptime: i % 3 == 0 ? 0 : Int64(1000 + i))
            expected["k\(i)"] = node.store.item("k\(i)")
        }
        #expect(await node.persistence.commitNow())

        let load = BackgroundWriter(store: node.store)
        // Let the load get going, so that commits happen while the copy is made.
        #expect(eventually { node.persistence.statistics().flushes > 3 })
        let report = try await node.persistence.copyDatabaseInBackground(to: target.path)
        let during = load.stop()
        #expect(await node.persistence.commitNow())
        node.persistence.stop()

        #expect(report.directory == target.path)
        #expect(report.items >= 10_000 && report.items <= UInt64(10_000 + during), "items \(report.items), written during: \(during)")
        // One self-contained file in rollback-journal mode: nothing beside it, header bytes 18 and 19 are 1.
        #expect(try FileManager.default.contentsOfDirectory(atPath: target.path) == ["tandem.sqlite3"])
        let copy = try #require(FileManager.default.contents(atPath: target.path + "/tandem.sqlite3"))
        #expect(UInt64(copy.count) == report.bytes)
        #expect(copy[18] == 1 && copy[19] == 1)

        let restored = try openNode(target.path, clock: node.clock)
        defer { restored.persistence.stop() }
        #expect(UInt64(restored.persistence.recovery.items) == report.items)
        for (key, item) in expected {
            let found = restored.store.item(key)
            #expect(found?.value == item.value, "value of \(key)")
            #expect(found?.flags == item.flags && found?.deadline == item.deadline && found?.cas == item.cas, "fields of \(key)")
        }
        // Besides the items committed before it, the copy holds some of the load's: those of the snapshot it was taken at.
        let copied = (0..<during).filter { restored.store.item("during-\($0)") != nil }.count
        #expect(UInt64(10_000 + copied) == report.items)
        // A node on the copy takes writes of its own.
        #expect(restored.store.put("fresh", [1]) != .tooLarge)
    }

    @Test("the synchronous backup into an existing empty directory; the source keeps working")
    func emptyDirectory() throws {
        let source = TemporaryDirectory()
        let target = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: target.path, withIntermediateDirectories: false)
        let node = try openNode(source.path)
        defer { node.persistence.stop() }
        for i in 0..<100 { _ = node.store.put("k\(i)", [UInt8(i)]) }
        #expect(eventually { node.persistence.statistics().pending == 0 })
        let report = try node.persistence.copyDatabase(to: target.path + "/")
        #expect(report.items == 100 && report.directory == target.path && report.bytes > 0)
        _ = node.store.put("after", [1])
        #expect(eventually { node.persistence.statistics().pending == 0 && node.persistence.statistics().errors == 0 })
    }

    @Test("a target that is not empty, not a directory, without a parent, or no path at all is refused and left as it was")
    func refusals() throws {
        let source = TemporaryDirectory()
        let node = try openNode(source.path)
        defer { node.persistence.stop() }
        _ = node.store.put("k", [1])
        #expect(eventually { node.persistence.statistics().pending == 0 })

        func expectRefusal(_ path: String, mentioning words: String) {
            do {
                _ = try node.persistence.copyDatabase(to: path)
                Issue.record("expected a refusal to back up into \(path)")
            } catch {
                guard case .copyTargetUnusable = error else {
                    Issue.record("unexpected error: \(error)")
                    return
                }
                #expect("\(error)".contains(words), "\(error)")
                #expect(!"\(error)".contains("\n"))
            }
        }

        let full = TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: full.path, withIntermediateDirectories: false)
        _ = FileManager.default.createFile(atPath: full.path + "/keep.txt", contents: Data("mine".utf8))
        expectRefusal(full.path, mentioning: "not empty")
        #expect(try FileManager.default.contentsOfDirectory(atPath: full.path) == ["keep.txt"])

        // The live data directory itself is not empty either.
        expectRefusal(source.path, mentioning: "not empty")

        let file = TemporaryDirectory()
        _ = FileManager.default.createFile(atPath: file.path, contents: Data([1, 2, 3]))
        expectRefusal(file.path, mentioning: "not a directory")
        #expect(FileManager.default.contents(atPath: file.path) == Data([1, 2, 3]))

        let orphan = TemporaryDirectory()
        expectRefusal(orphan.path + "/nested/copy", mentioning: "parent directory \(orphan.path)/nested does not exist")
        #expect(!FileManager.default.fileExists(atPath: orphan.path))

        expectRefusal("", mentioning: "no directory given")
    }
}
