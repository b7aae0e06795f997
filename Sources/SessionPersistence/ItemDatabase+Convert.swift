import CSQLite
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension ItemDatabase {
    /// Rows copied per transaction while converting.
    static let conversionBatch = 10_000

    /// Converts a schema 1/2 file (one `items` row per key) into the log,
    /// crash-safe: the new file is written beside it under
    /// `.converting`, checkpointed, synced, and renamed over the old one; a
    /// crash before the rename leaves the old file whole (the partial one is
    /// removed at the next start). The old file's own WAL is folded into it
    /// and removed first: left beside the old name it would be applied to the
    /// new file. Rows keep their rowid order, so a session's keys stay adjacent.
    static func convert(path: String, segmentBytes: Int, logger: Logger?) throws {
        let started = ContinuousClock.now
        let target = path + convertingSuffix
        let old = try SQLiteConnection(path: path)
        let total = try old.integer("SELECT count(*) FROM items")
        logger?.notice("converting the database to the log layout", metadata: ["file": "\(path)", "rows": "\(total)"])
        let converted = try ItemDatabase(path: target, segmentBytes: segmentBytes, logger: nil)
        do {
            let rows = try old.prepare("SELECT key, value, flags, deadline, cas FROM items ORDER BY rowid")
            var copied: Int64 = 0
            var lastReport = ContinuousClock.now
            try converted.begin()
            while try rows.step() {
                _ = try converted.append(
                    key: rows.blob(0), value: rows.blob(1), flags: UInt32(truncatingIfNeeded: rows.int64(2)),
                    deadline: rows.int64(3), cas: UInt64(bitPattern: rows.int64(4))
                )
                copied += 1
                if copied % Int64(conversionBatch) == 0 {
                    try converted.commit()
                    try converted.begin()
                    if ContinuousClock.now - lastReport >= .seconds(1) {
                        lastReport = ContinuousClock.now
                        let elapsed = Persistence.seconds(ContinuousClock.now - started)
                        logger?.info("conversion progress", metadata: [
                            "rows": "\(copied)", "of": "\(total)", "percent": "\(total > 0 ? copied * 100 / total : 100)",
                            "rows_per_second": "\(Int(Double(copied) / max(elapsed, 0.001)))",
                        ])
                    }
                }
            }
            for (name, value) in try allMeta(old) { try converted.setMeta(name, value) }
            // Schema 1 had no tombstones table.
            let hasTombstones = try old.integer("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tombstones'") == 1
            let tombstones = try old.prepare(hasTombstones ? "SELECT key, stamp FROM tombstones" : "SELECT NULL, 0 WHERE 0")
            while try tombstones.step() {
                try converted.insertTombstone(key: Array(tombstones.blob(0)), stamp: UInt64(bitPattern: tombstones.int64(1)))
            }
            try converted.commit()
        } catch {
            converted.close(checkpoint: false)
            for suffix in ["", "-wal", "-shm", "-journal"] { unlink(target + suffix) }
            throw error
        }
        do {
            try converted.checkpointTruncate()
        } catch {
            converted.close(checkpoint: false)
            for suffix in ["", "-wal", "-shm", "-journal"] { unlink(target + suffix) }
            throw error
        }
        converted.close(checkpoint: false)
        // Everything is in the file now: its empty WAL and index must not
        // stay beside the name it leaves.
        unlink(target + "-wal")
        unlink(target + "-shm")
        guard syncFile(target) else {
            throw SQLiteError(code: SQLITE_IOERR, message: "cannot fsync \(target): \(String(cString: strerror(errno)))")
        }
        try old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        old.close()
        unlink(path + "-wal")
        unlink(path + "-shm")
        guard rename(target, path) == 0 else {
            throw SQLiteError(code: SQLITE_IOERR, message: "cannot rename \(target) over \(path): \(String(cString: strerror(errno)))")
        }
        _ = syncFile(DataDirectory.parent(of: path), directory: true)
        let seconds = Persistence.seconds(ContinuousClock.now - started)
        logger?.notice("database converted to the log layout", metadata: [
            "file": "\(path)", "rows": "\(total)", "seconds": "\(String(format: "%.3f", seconds))",
        ])
    }

    private static func syncFile(_ path: String, directory: Bool = false) -> Bool {
        let descriptor = open(path, (directory ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC)
        guard descriptor >= 0 else { return false }
        defer { Glibc.close(descriptor) }
        return fsync(descriptor) == 0
    }
}
