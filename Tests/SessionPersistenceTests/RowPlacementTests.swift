import Foundation
import Testing

@testable import SessionPersistence

@Suite("Placing a session's rows together")
struct RowPlacementTests {
    private func group(_ key: String) -> (group: Int, rank: Int) {
        Array(key.utf8).withUnsafeBytes { RowPlacement.group($0) }
    }

    @Test("msm's keys of one session fall in one group, the session's own key first")
    func groupsMsmKeys() {
        let id = "7D5C0E4A1B2C3D4E5F60718293A4B5C6-n1"
        let keys = [id, "validity:\(id)", "lock:\(id)", "bak:\(id)", "bak:validity:\(id)"]
        let groups = keys.map(group)
        #expect(Set(groups.map(\.group)).count == 1)
        #expect(groups[0].rank == 0)
        #expect(Set(groups.map(\.rank)).count == keys.count, "each role has its own rank")
        #expect(group("validity:" + id.dropLast()).group != groups[0].group)
        #expect(group("other-key").rank == 0)
        #expect(group("").rank == 0)
        #expect(group("validity:").rank == 1)
    }

    /// Changes of one batch written in hash order would put a session and its
    /// validity record at unrelated rowids; grouped, each validity record
    /// follows its session and shares its page.
    @Test("in the file, each session's validity record is the next row after the session")
    func validityFollowsSession() throws {
        let directory = TemporaryDirectory()
        let node = try openNode(directory.path, start: false)
        let (store, persistence) = (node.store, node.persistence)
        // Stored before the writer starts, so that all of them are one batch
        // and only the writer's order decides their rowids.
        let sessions = 500
        let session = [UInt8](repeating: 0x53, count: 2048)
        let validity = [UInt8](repeating: 0x56, count: 20)
        for i in 0..<sessions {
            let id = String(format: "%032X-n1", i &* 2_654_435_761)
            _ = store.put("validity:\(id)", validity)
            _ = store.put(id, session)
        }
        persistence.start()
        #expect(eventually(within: 20) { persistence.statistics().pending == 0 })
        persistence.stop()

        let connection = try SQLiteConnection(path: directory.path + "/tandem.sqlite3", mode: .readOnly)
        // Every row of the log, by seq (the order the writer appended them).
        var rowids: [String: Int64] = [:]
        for id in try ItemDatabase.segmentIDs(connection) {
            let rows = try connection.prepare("SELECT key, seq FROM \(ItemDatabase.tableName(id))")
            while try rows.step() {
                rowids[String(decoding: rows.blob(0), as: UTF8.self)] = rows.int64(1)
            }
        }
        #expect(rowids.count == 2 * sessions)
        let adjacent = rowids.filter { key, rowid in
            guard key.hasPrefix("validity:"), let owner = rowids[String(key.dropFirst("validity:".count))] else { return false }
            return rowid == owner + 1
        }
        #expect(adjacent.count == sessions)
    }
}
