import CSQLite
import Dispatch
import SessionStore
import Synchronization

/// The SQLite file that holds a node's items: schema, versioning and the
/// few prepared statements the writer and recovery use.
final class ItemDatabase {
    /// The schema this build writes; `PRAGMA user_version` records it.
    /// 1: items and meta. 2: tombstones (the stamps of recent deletes).
    static let schemaVersion: Int64 = 2

    let path: String
    private let connection: SQLiteConnection
    // Optional so that `close()` can finalize them before the connection closes.
    private var upsertStatement: Statement!
    private var deleteStatement: Statement!
    private var setMetaStatement: Statement!
    private var tombstoneStatement: Statement!
    /// The inode the database file had when opened, to notice it being removed or replaced.
    let inode: UInt64?
    private let walFrames = WALFrameCount()

    /// Opens (or creates) the database, refusing files that are not Tandem's.
    /// Nothing is written to an existing file before it is known to be Tandem's.
    init(path: String) throws(PersistenceError) {
        self.path = path
        let connection: SQLiteConnection
        do {
            connection = try SQLiteConnection(path: path)
        } catch {
            throw .unreadable(path: path, error: error)
        }
        self.connection = connection
        do {
            let version = try connection.integer("PRAGMA user_version")
            if version > Self.schemaVersion {
                throw PersistenceError.newerSchema(path: path, found: version, supported: Self.schemaVersion)
            }
            let tables = try connection.integer("SELECT count(*) FROM sqlite_master")
            if version == 0 {
                guard tables == 0 else { throw PersistenceError.foreignDatabase(path: path) }
                try Self.createSchema(connection)
            } else if try connection.integer("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'meta')") != 2 {
                throw PersistenceError.foreignDatabase(path: path)
            } else if version < 2 {
                // The file is Tandem's: adding what version 2 has changes nothing it held.
                try connection.execute("BEGIN; \(Self.tombstoneSchema) PRAGMA user_version = 2; COMMIT;")
            }
            // WAL: readers never block the writer, and a commit is one append.
            // synchronous=NORMAL: a commit survives a process crash (kill -9);
            // only an OS crash or power loss can take the last commits.
            try connection.execute("PRAGMA journal_mode = WAL")
            try connection.execute("PRAGMA synchronous = NORMAL")
            // Sessions are written at random places in the file: every upsert
            // reads its page (and the key index's) before changing it. SQLite's
            // default 2 MB page cache makes most of those reads system calls
            // that copy a page; 64 MB keeps the recently written pages and
            // the index's inner pages.
            try connection.execute("PRAGMA cache_size = -\(Self.cacheKibibytes)")
            // No autocheckpoint: the writer hands checkpoints to the
            // Checkpointer's thread, knowing the WAL's length from this hook.
            tandem_sqlite_track_wal_frames(connection.handle, walFrames.pointer)
            // Bounds the WAL file itself (see walSizeLimit).
            try connection.execute("PRAGMA journal_size_limit = \(Self.walSizeLimit)")
            upsertStatement = try connection.prepare(
                "INSERT INTO items (key, value, flags, deadline, cas) VALUES (?1, ?2, ?3, ?4, ?5) "
                    + "ON CONFLICT (key) DO UPDATE SET value = ?2, flags = ?3, deadline = ?4, cas = ?5"
            )
            deleteStatement = try connection.prepare("DELETE FROM items WHERE key = ?1")
            tombstoneStatement = try connection.prepare(
                "INSERT INTO tombstones (key, stamp) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET stamp = max(stamp, ?2)"
            )
            setMetaStatement = try connection.prepare(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2"
            )
        } catch let error as PersistenceError {
            throw error
        } catch let error as SQLiteError {
            if error.primaryCode == SQLITE_NOTADB { throw .notADatabase(path: path) }
            throw .unreadable(path: path, error: error)
        } catch {
            throw .unreadable(path: path, error: SQLiteError(code: SQLITE_ERROR, message: "\(error)"))
        }
        self.inode = Self.inode(of: path)
    }

    /// SQLite's default page size. Sessions are rewritten in place at random
    /// places in the file, and every write costs a whole page in the WAL and
    /// again at the checkpoint: with 4 KB pages a 2 KB session costs 4 KB
    /// twice, with 16 KB pages 16 KB twice (measured: about half the writer's
    /// CPU per upsert). The price is space: a page holds one session of 2 KB
    /// (files created with 16 KB pages by earlier versions keep them).
    static let pageSize = 4096
    static let cacheKibibytes = 65536
    /// The WAL length (in pages) at which the writer asks for a checkpoint:
    /// more than SQLite's default 1,000, so that a page written several times
    /// between checkpoints is copied into the file once, and each fdatasync
    /// covers more.
    static let checkpointPages = 8192
    /// The WAL length at which the writer stops to checkpoint itself, should
    /// the checkpointer fall behind (every page of the WAL must be copied
    /// before it can start over, and readers search a longer WAL).
    static let walPageLimit = 4 * checkpointPages
    /// What the WAL file is cut back to after it starts over: a little more
    /// than the most it grows to, so that under a steady write load it is
    /// reused rather than cut and grown again (growing the file into new
    /// blocks costs the kernel zeroing each one: a WAL frame, 24 bytes of
    /// header and a page, never fills whole blocks).
    static let walSizeLimit = walPageLimit * (pageSize + 24) + (16 << 20)
    static let recoveryMapBytes: Int64 = 1 << 40

    private static func createSchema(_ connection: SQLiteConnection) throws(SQLiteError) {
        // Only takes effect on an empty database, before anything is written.
        try connection.execute("PRAGMA page_size = \(pageSize)")
        try connection.execute("""
            BEGIN;
            CREATE TABLE items (
                key BLOB NOT NULL UNIQUE,
                value BLOB NOT NULL,
                flags INTEGER NOT NULL,
                deadline INTEGER NOT NULL,
                cas INTEGER NOT NULL
            );
            CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
            \(tombstoneSchema)
            PRAGMA user_version = \(schemaVersion);
            COMMIT;
            """)
    }

    /// Recent deletes, so that a restarted node still knows a key it deleted
    /// is gone when its peer offers an older version (reconciliation).
    static let tombstoneSchema = """
        CREATE TABLE tombstones (key BLOB PRIMARY KEY, stamp INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX tombstones_by_stamp ON tombstones (stamp);
        """

    static func inode(of path: String) -> UInt64? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    // MARK: Writing (the writer thread only)

    func begin() throws(SQLiteError) { try connection.execute("BEGIN IMMEDIATE") }
    func commit() throws(SQLiteError) { try connection.execute("COMMIT") }
    func rollback() { try? connection.execute("ROLLBACK") }

    /// Pages in the WAL after the last commit.
    var framesInWAL: Int { Int(walFrames.pointer.pointee) }

    /// Checkpoints on the writer's own connection, waiting for one running
    /// elsewhere to finish: when the WAL has grown past `walPageLimit`.
    func checkpointNow() throws(SQLiteError) {
        _ = try connection.checkpoint(mode: SQLITE_CHECKPOINT_FULL)
    }

    func upsert(_ change: Change) throws(SQLiteError) {
        let statement: Statement = upsertStatement
        let failure: SQLiteError? = change.storage.withUnsafeBytes { all in
            statement.bind(1, blob: UnsafeRawBufferPointer(rebasing: all[..<change.keyLength]))
            statement.bind(2, blob: UnsafeRawBufferPointer(rebasing: all[change.keyLength...]))
            statement.bind(3, Int64(change.flags))
            statement.bind(4, change.deadline.millis)
            statement.bind(5, Int64(bitPattern: change.cas))
            do throws(SQLiteError) { try statement.run() } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    func upsert(_ item: ItemSnapshot) throws(SQLiteError) {
        try upsert(Change(kind: .upsert, sequence: 0, storage: item.storage, keyLength: item.keyLength, flags: item.flags, cas: item.cas, deadline: item.deadline))
    }

    func delete(key: [UInt8]) throws(SQLiteError) {
        let statement: Statement = deleteStatement
        let failure: SQLiteError? = key.withUnsafeBytes { bytes in
            statement.bind(1, blob: bytes)
            do throws(SQLiteError) { try statement.run() } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    func deleteAll() throws(SQLiteError) {
        try connection.execute("DELETE FROM items; DELETE FROM tombstones")
    }

    /// Records a delete's stamp (a newer one for the key is kept).
    func insertTombstone(key: [UInt8], stamp: UInt64) throws(SQLiteError) {
        let statement: Statement = tombstoneStatement
        let failure: SQLiteError? = key.withUnsafeBytes { bytes in
            statement.bind(1, blob: bytes)
            statement.bind(2, Int64(bitPattern: stamp))
            do throws(SQLiteError) { try statement.run() } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// Drops tombstones stamped below `stamp` (older than the retention).
    func deleteTombstones(below stamp: UInt64) throws(SQLiteError) {
        try connection.execute("DELETE FROM tombstones WHERE stamp < \(Int64(bitPattern: min(stamp, UInt64(Int64.max))))")
    }

    /// Streams the tombstones stamped at or above `stamp`.
    func forEachTombstone(from stamp: UInt64, _ body: (UnsafeRawBufferPointer, UInt64) -> Void) throws(SQLiteError) {
        let statement = try connection.prepare("SELECT key, stamp FROM tombstones WHERE stamp >= ?1")
        statement.bind(1, Int64(bitPattern: min(stamp, UInt64(Int64.max))))
        while try statement.step() {
            body(statement.blob(0), UInt64(bitPattern: statement.int64(1)))
        }
    }

    func setMeta(_ name: String, _ value: Int64) throws(SQLiteError) {
        setMetaStatement.bind(1, name)
        setMetaStatement.bind(2, value)
        try setMetaStatement.run()
    }

    func setMeta(_ name: String, _ value: MetaValue) throws(SQLiteError) {
        switch value {
        case .integer(let number):
            try setMeta(name, number)
        case .blob(let bytes):
            let statement: Statement = setMetaStatement
            let failure: SQLiteError? = bytes.withUnsafeBytes { raw in
                statement.bind(1, name)
                statement.bind(2, blob: raw)
                do throws(SQLiteError) { try statement.run() } catch { return error }
                return nil
            }
            if let failure { throw failure }
        }
    }

    /// Every name/value pair of the meta table.
    func allMeta() throws(SQLiteError) -> [String: MetaValue] {
        let statement = try connection.prepare("SELECT name, value, typeof(value) FROM meta")
        var values: [String: MetaValue] = [:]
        while try statement.step() {
            guard let name = statement.text(0) else { continue }
            switch statement.text(2) {
            case "integer": values[name] = .integer(statement.int64(1))
            case "blob": values[name] = .blob(Array(statement.blob(1)))
            default: break
            }
        }
        return values
    }

    /// Removes rows whose deadline has passed (they are never loaded again).
    func deleteExpired(now: Int64) throws(SQLiteError) {
        try connection.execute("DELETE FROM items WHERE deadline != 0 AND deadline <= \(now)")
    }

    // MARK: Reading (start-up)

    /// Rows in the file, expired ones included. Without a WHERE clause SQLite
    /// counts the small key index instead of reading every session.
    func rowCount() throws(SQLiteError) -> Int64 {
        try connection.integer("SELECT count(*) FROM items")
    }

    /// Streams every unexpired row to `body` from `parts` threads at once,
    /// each with a read-only connection of its own over a slice of the rowid
    /// range: recovery is bound by SQLite's decoding and the copy into memory,
    /// which several cores share. `body` gets the part's index; its buffers
    /// are valid only during the call. Rethrows the first part's error.
    func forEachItemInParallel(
        now: Int64, parts: Int,
        _ body: @Sendable (Int, UnsafeRawBufferPointer, UnsafeRawBufferPointer, UInt32, Deadline, UInt64) -> Void
    ) throws(SQLiteError) {
        let low = try connection.integer("SELECT ifnull(min(rowid), 0) FROM items")
        let high = try connection.integer("SELECT ifnull(max(rowid), -1) FROM items")
        guard high >= low else { return }
        let parts = Int64(max(1, min(parts, Int(min(high - low + 1, 64)))))
        let width = (high - low + 1 + parts - 1) / parts
        let failures = Mutex<[SQLiteError]>([])
        let path = self.path
        DispatchQueue.concurrentPerform(iterations: Int(parts)) { part in
            let from = low + Int64(part) * width
            let to = min(from + width, high + 1)
            do throws(SQLiteError) {
                let reader = try SQLiteConnection(path: path, mode: .readOnly)
                // Mapped rather than read: the scan then costs no copy of
                // every page into SQLite's cache. Only these short-lived
                // start-up readers map the file; the writer never does.
                try reader.execute("PRAGMA mmap_size = \(Self.recoveryMapBytes)")
                let statement = try reader.prepare(
                    "SELECT key, value, flags, deadline, cas FROM items WHERE rowid >= ?1 AND rowid < ?2 AND (deadline = 0 OR deadline > ?3)"
                )
                statement.bind(1, from)
                statement.bind(2, to)
                statement.bind(3, now)
                while try statement.step() {
                    body(
                        part, statement.blob(0), statement.blob(1), UInt32(truncatingIfNeeded: statement.int64(2)),
                        Deadline(millis: statement.int64(3)), UInt64(bitPattern: statement.int64(4))
                    )
                }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
    }

    /// Closes the file. With `checkpoint`, the WAL is first folded into the
    /// database file, so a cleanly stopped node leaves one self-contained file.
    func close(checkpoint: Bool = true) {
        if checkpoint { try? connection.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
        upsertStatement = nil
        deleteStatement = nil
        setMetaStatement = nil
        tombstoneStatement = nil
        connection.close()
    }
}

/// Where SQLite's WAL hook writes the WAL's length after each commit: memory
/// of a stable address for the C callback, freed with the database.
private final class WALFrameCount {
    let pointer = UnsafeMutablePointer<Int32>.allocate(capacity: 1)

    init() { pointer.initialize(to: 0) }

    deinit { pointer.deallocate() }
}

#if canImport(Glibc)
import Glibc
#endif
