import CSQLite
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a copy of the database (`tandemctl backup`) wrote.
public struct DatabaseCopyReport: Sendable, Equatable {
    /// The directory holding the copy, absolute; usable as `--data-dir`.
    public var directory: String
    /// The size of the copy's database file.
    public var bytes: UInt64
    /// Items in the copy not expired when it was made: what a node started
    /// on it at once recovers.
    public var items: UInt64
    public var seconds: Double

    public init(directory: String, bytes: UInt64, items: UInt64, seconds: Double) {
        self.directory = directory
        self.bytes = bytes
        self.items = items
        self.seconds = seconds
    }
}

/// Copies a live database with SQLite's online backup API into a new
/// directory, in a form a node opens as its data directory.
enum DatabaseCopy {
    /// Pages copied per `sqlite3_backup_step` (16 MiB with the log's 64 KiB pages):
    /// small enough that a failure is noticed early, large enough that the
    /// per-step overhead does not matter. No pause between steps: the copy
    /// holds no lock the writer waits for (see `copy`).
    static let pagesPerStep: Int32 = 256
    /// How many times in a row a step that found a database busy is retried,
    /// `busyPause` apart, before the backup gives up.
    static let busyRetries = 200
    static let busyPause: useconds_t = 10_000

    /// The name the copy is written under until it is complete: a directory
    /// whose database has the final name holds a finished copy, whatever
    /// happened to the node during the backup.
    static let partialSuffix = ".partial"

    static func run(from source: String, into target: String, now: Int64) throws(PersistenceError) -> DatabaseCopyReport {
        let started = ContinuousClock.now
        let (directory, created) = try prepareTarget(target)
        let partial = directory + "/" + DataDirectory.databaseFileName + partialSuffix
        let final = directory + "/" + DataDirectory.databaseFileName
        do throws(PersistenceError) {
            try claim(partial)
        } catch {
            // Not ours to remove: another backup into the same directory may be writing it.
            if created { rmdir(directory) }
            throw error
        }
        do throws(PersistenceError) {
            try copy(from: source, to: partial, directory: directory)
            let items = try seal(partial, directory: directory, now: now)
            guard rename(partial, final) == 0 else {
                throw PersistenceError.copyFailed(path: directory, reason: "cannot rename the copy into place: \(errorText())")
            }
            syncDirectory(directory)
            var info = stat()
            let bytes = stat(final, &info) == 0 ? UInt64(info.st_size) : 0
            return DatabaseCopyReport(directory: directory, bytes: bytes, items: items, seconds: Persistence.seconds(ContinuousClock.now - started))
        } catch {
            // Leave nothing that could be mistaken for a copy, nor a directory the next attempt would find not empty.
            for suffix in ["", "-journal", "-wal", "-shm"] { unlink(partial + suffix) }
            if created { rmdir(directory) }
            throw error
        }
    }

    /// Makes `target` an absolute path to an empty directory, creating it if
    /// needed. Returns whether it was created here.
    static func prepareTarget(_ target: String) throws(PersistenceError) -> (path: String, created: Bool) {
        guard !target.isEmpty else {
            throw .copyTargetUnusable(path: target, reason: "no directory given; name a new or empty directory")
        }
        // Relative to this process's working directory; reported absolute so the operator knows where it went.
        var path = target.hasPrefix("/") ? target : FileManager.default.currentDirectoryPath + "/" + target
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        if mkdir(path, 0o750) == 0 { return (path, true) }
        let failure = errno
        switch failure {
        case EEXIST:
            var info = stat()
            guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
                throw .copyTargetUnusable(path: path, reason: "it exists and is not a directory")
            }
            let entries: [String]
            do {
                entries = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw .copyTargetUnusable(path: path, reason: "cannot list it: \(error.localizedDescription)")
            }
            guard entries.isEmpty else {
                throw .copyTargetUnusable(path: path, reason: "the directory is not empty; back up into a new or empty directory")
            }
            return (path, false)
        case ENOENT:
            let parent = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            throw .copyTargetUnusable(path: path, reason: "its parent directory \(parent.isEmpty ? "/" : parent) does not exist")
        default:
            throw .copyTargetUnusable(path: path, reason: "cannot create it: \(errorText(failure))")
        }
    }

    /// Creates the (empty) file the copy goes into, failing if anything is
    /// there: two backups into one empty directory must not write one file.
    private static func claim(_ path: String) throws(PersistenceError) {
        // Sessions are private: readable by the node's user and group only.
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw .copyTargetUnusable(path: path, reason: "cannot create the copy: \(errorText())")
        }
        close(descriptor)
    }

    /// Copies every page of `source`, as of one moment, into the empty database at `destination`.
    private static func copy(from source: String, to destination: String, directory: String) throws(PersistenceError) {
        let reason: String
        do {
            // A connection of its own, read-only: the live file is never written through it.
            let reader = try SQLiteConnection(path: source, mode: .readOnly)
            let target = try SQLiteConnection(path: destination)
            // One read transaction for the whole copy. Without it every step
            // takes a fresh snapshot, and a commit of the node's writer between
            // two steps restarts the backup from the first page: under a steady
            // write load a large database would never finish. In WAL mode this
            // reader does not block the writer; the WAL only grows until the copy
            // is done, as a checkpoint cannot pass a snapshot still being read.
            try reader.execute("BEGIN")
            defer { try? reader.execute("COMMIT") }
            _ = try reader.integer("SELECT count(*) FROM sqlite_master")  // BEGIN is deferred: this starts the snapshot
            guard let backup = sqlite3_backup_init(target.handle, "main", reader.handle, "main") else { throw target.lastError }
            var busy = 0
            stepping: while true {
                let rc = sqlite3_backup_step(backup, pagesPerStep)
                let primary = rc & 0xFF
                if primary == SQLITE_OK {
                    busy = 0
                } else if primary == SQLITE_DONE {
                    break stepping
                } else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) && busy < busyRetries {
                    // Another connection holds a lock for a moment (a checkpoint, WAL recovery): wait, bounded.
                    busy += 1
                    usleep(busyPause)
                } else {
                    // finish() releases the backup and leaves its error on the destination connection.
                    sqlite3_backup_finish(backup)
                    let error = target.lastError
                    throw error.code == SQLITE_OK ? SQLiteError(code: rc, message: String(cString: sqlite3_errstr(rc))) : error
                }
            }
            guard sqlite3_backup_finish(backup) == SQLITE_OK else { throw target.lastError }
            return
        } catch {
            reason = "\(error)"
        }
        throw .copyFailed(path: directory, reason: reason)
    }

    /// Reopens the finished copy, counts its items, and makes it one
    /// self-contained file: the backup copied the live file's header, which
    /// says WAL; a rollback-journal file needs no `-wal` or `-shm` beside it
    /// (a node that opens it switches it back to WAL).
    private static func seal(_ path: String, directory: String, now: Int64) throws(PersistenceError) -> UInt64 {
        do {
            let copy = try SQLiteConnection(path: path)
            defer { copy.close() }
            let items = try ItemDatabase.liveItemCount(copy, now: now)
            let mode = try copy.text("PRAGMA journal_mode = DELETE")
            guard mode == "delete" else {
                throw SQLiteError(code: SQLITE_ERROR, message: "the copy stayed in journal mode \(mode ?? "unknown")")
            }
            return UInt64(max(items, 0))
        } catch {
            throw .copyFailed(path: directory, reason: "the copy cannot be read back: \(error)")
        }
    }

    /// Makes the rename durable: it is an entry of the directory's, not of the file's.
    private static func syncDirectory(_ path: String) {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        close(descriptor)
    }

    private static func errorText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code))
    }
}
