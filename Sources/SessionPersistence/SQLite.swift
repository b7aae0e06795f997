import CSQLite

/// A failed SQLite call: the result code and SQLite's own message.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// The primary or extended result code (`SQLITE_FULL`, `SQLITE_IOERR_WRITE`, …).
    public let code: Int32
    public let message: String

    /// The primary result code.
    public var primaryCode: Int32 { code & 0xFF }

    public var description: String {
        "\(message) (SQLite code \(code))"
    }
}

/// One SQLite connection, used by a single thread at a time (the writer, or
/// start-up before it runs). Not an event-loop object: SQLite blocks.
final class SQLiteConnection {
    private(set) var handle: OpaquePointer?
    let path: String

    /// How a connection opens its file.
    enum OpenMode {
        /// Read and write; the file is created if missing.
        case create
        /// Read and write an existing file only (a second connection to a
        /// file another one created must not make a new, empty one).
        case existing
        /// Read an existing file only (a backup's source: it must never write the live file).
        case readOnly
    }

    init(path: String, mode: OpenMode = .create) throws(SQLiteError) {
        self.path = path
        var db: OpaquePointer?
        let access: Int32 = switch mode {
        case .create: SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
        case .existing: SQLITE_OPEN_READWRITE
        case .readOnly: SQLITE_OPEN_READONLY
        }
        let flags = access | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close_v2(db)
            throw SQLiteError(code: rc, message: message)
        }
        sqlite3_extended_result_codes(db, 1)
        tandem_sqlite_disable_checkpoint_on_close(db)
        // A busy database is only possible if someone else opened it; wait briefly rather than fail at once.
        sqlite3_busy_timeout(db, 2000)
        self.handle = db
    }

    deinit {
        close()
    }

    func close() {
        guard let handle else { return }
        sqlite3_close_v2(handle)
        self.handle = nil
    }

    var lastError: SQLiteError {
        SQLiteError(code: sqlite3_extended_errcode(handle), message: String(cString: sqlite3_errmsg(handle)))
    }

    /// Runs SQL that returns no rows.
    func execute(_ sql: String) throws(SQLiteError) {
        var errorMessage: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &errorMessage)
        guard rc == SQLITE_OK else {
            let message = errorMessage.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle))
            sqlite3_free(errorMessage)
            throw SQLiteError(code: sqlite3_extended_errcode(handle), message: message)
        }
    }

    func prepare(_ sql: String) throws(SQLiteError) -> Statement {
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard rc == SQLITE_OK, let statement else { throw lastError }
        return Statement(statement, connection: self)
    }

    /// What a checkpoint did: the frames in the WAL and those now in the
    /// database file; `busy` when another checkpoint held the lock.
    struct CheckpointResult {
        var framesInWAL: Int
        var framesCheckpointed: Int
        var busy: Bool
    }

    /// Copies committed WAL frames into the database file and syncs it.
    /// `SQLITE_CHECKPOINT_PASSIVE` never waits for anyone; `FULL` waits
    /// (up to the busy timeout) for a checkpoint running elsewhere.
    func checkpoint(mode: Int32) throws(SQLiteError) -> CheckpointResult {
        var log: Int32 = 0
        var done: Int32 = 0
        let rc = sqlite3_wal_checkpoint_v2(handle, nil, mode, &log, &done)
        guard rc == SQLITE_OK || rc == SQLITE_BUSY else { throw lastError }
        return CheckpointResult(framesInWAL: Int(log), framesCheckpointed: Int(done), busy: rc == SQLITE_BUSY)
    }

    /// The single text a query such as `PRAGMA journal_mode` returns.
    func text(_ sql: String) throws(SQLiteError) -> String? {
        let statement = try prepare(sql)
        guard try statement.step() else { return nil }
        return statement.text(0)
    }

    /// The single integer a query such as `PRAGMA user_version` returns.
    func integer(_ sql: String) throws(SQLiteError) -> Int64 {
        let statement = try prepare(sql)
        guard try statement.step() else { return 0 }
        return statement.int64(0)
    }
}

/// A prepared statement, reset and reused for every execution.
final class Statement {
    private let statement: OpaquePointer
    private unowned let connection: SQLiteConnection

    init(_ statement: OpaquePointer, connection: SQLiteConnection) {
        self.statement = statement
        self.connection = connection
    }

    deinit {
        sqlite3_finalize(statement)
    }

    func reset() {
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
    }

    func bind(_ index: Int32, _ value: Int64) {
        sqlite3_bind_int64(statement, index, value)
    }

    func bind(_ index: Int32, _ value: String) {
        sqlite3_bind_text(statement, index, value, -1, tandem_sqlite_transient)
    }

    /// Binds bytes without copying; they must stay valid until the statement is stepped.
    func bind(_ index: Int32, blob: UnsafeRawBufferPointer) {
        // A zero-length blob must still be a blob, not NULL.
        let base = blob.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        sqlite3_bind_blob(statement, index, base, Int32(blob.count), tandem_sqlite_static)
    }

    /// Steps once; true when a row is available.
    @discardableResult
    func step() throws(SQLiteError) -> Bool {
        let rc = sqlite3_step(statement)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.lastError
        }
    }

    /// Runs a statement that returns no rows, then resets it.
    func run() throws(SQLiteError) {
        defer { reset() }
        try step()
    }

    func int64(_ column: Int32) -> Int64 {
        sqlite3_column_int64(statement, column)
    }

    func text(_ column: Int32) -> String? {
        guard let pointer = sqlite3_column_text(statement, column) else { return nil }
        return String(cString: pointer)
    }

    func isNull(_ column: Int32) -> Bool {
        sqlite3_column_type(statement, column) == SQLITE_NULL
    }

    /// The column's bytes, valid until the next step or reset.
    func blob(_ column: Int32) -> UnsafeRawBufferPointer {
        let count = Int(sqlite3_column_bytes(statement, column))
        guard count > 0, let base = sqlite3_column_blob(statement, column) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base, count: count)
    }
}
