import CSQLite
import Dispatch
import Foundation
import Logging
import SessionStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The SQLite file that holds a node's items as a log (docs/storage.md):
/// every change appended as a row of the newest segment table, the newest
/// row of a key being its value.
final class ItemDatabase {
    /// The schema this build writes; `PRAGMA user_version` records it.
    /// 1: items and meta. 2: tombstones (the stamps of recent deletes).
    /// 3: the log (segments, hints, `meta.flush_seq`) instead of `items`.
    static let schemaVersion: Int64 = 3

    /// One segment table and what its rows hold.
    struct Segment {
        let id: Int
        /// The seq range of its rows (empty when `first > last`).
        var first: UInt64
        var last: UInt64
        /// Bytes of its rows (key, value, fixed fields) and of those still
        /// their key's newest version.
        var totalBytes: Int
        var liveBytes: Int
        var name: String { ItemDatabase.tableName(id) }
    }

    /// A row's header, as hints hold it.
    struct RowHeader {
        var key: [UInt8]
        var seq: UInt64
        var flags: UInt32
        var deadline: Int64
        var cas: UInt64
        /// nil: a tombstone.
        var valueLength: Int?
    }

    let path: String
    private let connection: SQLiteConnection
    // Optional so that `close()` can finalize them before the connection closes.
    private var appendStatement: Statement!
    /// Reads rows by seq on the writer's connection (compaction of cold items).
    private var rowReader: RowReader?
    private var setMetaStatement: Statement!
    private var tombstoneStatement: Statement!
    /// The inode the database file had when opened, to notice it being removed or replaced.
    let inode: UInt64?
    private let walFrames = WALFrameCount()

    /// The segments, oldest first; the last is the head, which takes appends.
    private(set) var segments: [Segment] = []
    /// The seq the next row gets.
    private(set) var nextSeq: UInt64 = 1
    /// Rows below it were cleared by a flush_all.
    private(set) var flushSeq: UInt64 = 0
    /// The head's row headers, packed as its hints row will hold them.
    private var headHints: [UInt8] = []
    /// A segment is sealed once its rows reach this many bytes, or the
    /// log's rows over `maxSegments` if that is more.
    var segmentBytes: Int
    /// Every CREATE and DROP TABLE makes each connection re-read the schema
    /// (measured: 400 segments cost 0.5 µs per write more than 50), so a
    /// large log gets larger segments rather than more of them.
    var maxSegments = 256
    /// The bytes of every segment's rows.
    private(set) var totalBytes = 0

    /// Bytes a row costs beyond its key and value (seq, flags, deadline, cas, record header).
    static let rowOverhead = 32

    /// Opens (or creates) the database, refusing files that are not Tandem's,
    /// and converts a file of schema 1 or 2 to the log first (see `convert`).
    /// Nothing is written to an existing file before it is known to be Tandem's.
    init(path: String, segmentBytes: Int = 16 << 20, logger: Logger? = nil) throws(PersistenceError) {
        self.path = path
        self.segmentBytes = segmentBytes
        let connection: SQLiteConnection
        do {
            // A conversion that did not finish left its partial file: the old one is complete.
            for suffix in ["", "-wal", "-shm", "-journal"] { unlink(path + Self.convertingSuffix + suffix) }
            var probe = try SQLiteConnection(path: path)
            if try Self.schema(of: probe, path: path) == .old {
                probe.close()
                try Self.convert(path: path, segmentBytes: segmentBytes, logger: logger)
                probe = try SQLiteConnection(path: path)
            }
            connection = probe
        } catch let error as PersistenceError {
            throw error
        } catch let error as SQLiteError {
            if error.primaryCode == SQLITE_NOTADB { throw .notADatabase(path: path) }
            throw .unreadable(path: path, error: error)
        } catch {
            throw .unreadable(path: path, error: SQLiteError(code: SQLITE_ERROR, message: "\(error)"))
        }
        self.connection = connection
        self.inode = Self.inode(of: path)
        do {
            if try Self.schema(of: connection, path: path) == .empty {
                try Self.createSchema(connection)
            }
            // WAL: readers never block the writer, and a commit is one append.
            // synchronous=NORMAL: a commit survives a process crash (kill -9);
            // only an OS crash or power loss can take the last commits.
            try connection.execute("PRAGMA journal_mode = WAL")
            try connection.execute("PRAGMA synchronous = NORMAL")
            // Debian builds SQLite with secure_delete on: every page a dropped
            // segment frees would be zeroed and written again, costing about
            // what writing it cost. FAST zeroes only where that adds no I/O.
            try connection.execute("PRAGMA secure_delete = FAST")
            // The writer only appends at the right edge of the newest segment:
            // a small cache holds those pages and the b-trees' inner pages.
            try connection.execute("PRAGMA cache_size = -\(Self.cacheKibibytes)")
            // No autocheckpoint: the writer hands checkpoints to the
            // Checkpointer's thread, knowing the WAL's length from this hook.
            tandem_sqlite_track_wal_frames(connection.handle, walFrames.pointer)
            // Bounds the WAL file itself (see walSizeLimit).
            try connection.execute("PRAGMA journal_size_limit = \(Self.walSizeLimit)")
            tombstoneStatement = try connection.prepare(
                "INSERT INTO tombstones (key, stamp) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET stamp = max(stamp, ?2)"
            )
            setMetaStatement = try connection.prepare(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2"
            )
            try loadLog()
        } catch let error as PersistenceError {
            throw error
        } catch let error as SQLiteError {
            if error.primaryCode == SQLITE_NOTADB { throw .notADatabase(path: path) }
            throw .unreadable(path: path, error: error)
        } catch {
            throw .unreadable(path: path, error: SQLiteError(code: SQLITE_ERROR, message: "\(error)"))
        }
    }

    /// 64 KB pages for new files: 31 rows of 2 KB share a page, so a write
    /// costs the fewest system calls (WAL frame, checkpoint, writeback);
    /// measured 4.8 µs per write against 6.7 at 16 KB (docs/storage.md). A
    /// converted file gets them too; the page size of a file never changes.
    static let pageSize = 65536
    static let cacheKibibytes = 8192
    /// The WAL length (in pages) at which the writer asks for a checkpoint:
    /// 32 MB, so that each fdatasync of the checkpoint covers much.
    static let checkpointPages = 512
    /// The WAL length at which the writer stops to checkpoint itself, should
    /// the checkpointer fall behind (every page of the WAL must be copied
    /// before it can start over, and readers search a longer WAL).
    static let walPageLimit = 4 * checkpointPages
    /// What the WAL file is cut back to after it starts over: a little more
    /// than the most it grows to, so that under a steady write load it is
    /// reused rather than cut and grown again (growing the file into new
    /// blocks costs the kernel zeroing each one). Computed from this build's
    /// page size; a file converted keeps whatever its pages are.
    static let walSizeLimit = walPageLimit * (pageSize + 24) + (16 << 20)
    static let recoveryMapBytes: Int64 = 1 << 40
    /// Where a conversion writes the new file until it is complete.
    static let convertingSuffix = ".converting"

    static func tableName(_ id: Int) -> String {
        let digits = String(id)
        return "seg_" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }

    private enum Found { case empty, old, log }

    /// What the file holds: nothing yet, schema 1/2 (to convert), or the log.
    /// Throws for anything that is not Tandem's or is newer.
    private static func schema(of connection: SQLiteConnection, path: String) throws -> Found {
        let version = try connection.integer("PRAGMA user_version")
        if version > schemaVersion {
            throw PersistenceError.newerSchema(path: path, found: version, supported: schemaVersion)
        }
        let tables = try connection.integer("SELECT count(*) FROM sqlite_master")
        if version == 0 {
            guard tables == 0 else { throw PersistenceError.foreignDatabase(path: path) }
            return .empty
        }
        if version < 3 {
            guard try connection.integer("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'meta')") == 2 else {
                throw PersistenceError.foreignDatabase(path: path)
            }
            return .old
        }
        guard try connection.integer("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'hints', 'tombstones')") == 3 else {
            throw PersistenceError.foreignDatabase(path: path)
        }
        return .log
    }

    private static func createSchema(_ connection: SQLiteConnection) throws(SQLiteError) {
        // Only takes effect on an empty database, before anything is written.
        try connection.execute("PRAGMA page_size = \(pageSize)")
        try connection.execute("""
            BEGIN;
            CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
            \(tombstoneSchema)
            CREATE TABLE hints (segment INTEGER PRIMARY KEY, data BLOB NOT NULL);
            \(segmentSchema(1))
            INSERT INTO meta (name, value) VALUES ('log_format', 1);
            PRAGMA user_version = \(schemaVersion);
            COMMIT;
            """)
    }

    static func segmentSchema(_ id: Int) -> String {
        """
        CREATE TABLE \(tableName(id)) (
            seq INTEGER PRIMARY KEY, key BLOB NOT NULL, flags INTEGER NOT NULL,
            deadline INTEGER NOT NULL, cas INTEGER NOT NULL, value BLOB
        );
        """
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

    // MARK: The log's shape

    /// The segment tables, oldest first.
    static func segmentIDs(_ connection: SQLiteConnection) throws(SQLiteError) -> [Int] {
        let statement = try connection.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'seg\\_%' ESCAPE '\\'")
        var ids: [Int] = []
        while try statement.step() {
            if let name = statement.text(0), let id = Int(name.dropFirst(4)) { ids.append(id) }
        }
        return ids.sorted()
    }

    /// Reads the segments, their seq ranges and sizes (sealed ones from their
    /// hints, the head from its rows), `flush_seq` and the next seq: at open,
    /// and again after a rolled-back transaction left the cached shape stale.
    func loadLog() throws(SQLiteError) {
        flushSeq = UInt64(bitPattern: try connection.integer("SELECT ifnull((SELECT value FROM meta WHERE name = 'flush_seq'), 0)"))
        var ids = try Self.segmentIDs(connection)
        if ids.isEmpty {
            try connection.execute(Self.segmentSchema(1))
            ids = [1]
        }
        var loaded: [Segment] = []
        var highest: UInt64 = 0
        headHints = []
        for (index, id) in ids.enumerated() {
            var segment = Segment(id: id, first: 1, last: 0, totalBytes: 0, liveBytes: 0)
            let isHead = index == ids.count - 1
            var hinted = false
            if !isHead {
                let statement = try connection.prepare("SELECT data FROM hints WHERE segment = ?1")
                statement.bind(1, Int64(id))
                if try statement.step() {
                    hinted = true
                    Self.forEachHint(statement.blob(0)) { Self.count(seq: $0.seq, keyLength: $0.key.count, valueLength: $0.valueLength, into: &segment) }
                }
            }
            if !hinted {
                let statement = try connection.prepare("SELECT seq, key, flags, deadline, cas, length(value), value IS NULL FROM \(segment.name) ORDER BY seq")
                while try statement.step() {
                    let header = RowHeader(
                        key: Array(statement.blob(1)), seq: UInt64(bitPattern: statement.int64(0)),
                        flags: UInt32(truncatingIfNeeded: statement.int64(2)), deadline: statement.int64(3),
                        cas: UInt64(bitPattern: statement.int64(4)), valueLength: statement.int64(6) != 0 ? nil : Int(statement.int64(5))
                    )
                    Self.count(header, into: &segment)
                    if isHead { Self.encodeHint(header, into: &headHints) }
                }
            }
            if segment.first <= segment.last { highest = max(highest, segment.last) }
            loaded.append(segment)
        }
        nextSeq = max(highest + 1, flushSeq, 1)
        // An empty segment's range starts where its rows would have gone.
        var start = loaded.first.map { $0.first <= $0.last ? $0.first : nextSeq } ?? nextSeq
        for index in loaded.indices {
            if loaded[index].first > loaded[index].last {
                let following = loaded[(index + 1)...].first { $0.first <= $0.last }?.first ?? nextSeq
                start = min(max(start, 1), following)
                loaded[index].first = start
                loaded[index].last = start - 1
            }
            start = loaded[index].last + 1
        }
        segments = loaded
        totalBytes = loaded.reduce(0) { $0 + $1.totalBytes }
    }

    private static func count(_ header: RowHeader, into segment: inout Segment) {
        count(seq: header.seq, keyLength: header.key.count, valueLength: header.valueLength, into: &segment)
    }

    private static func count(seq: UInt64, keyLength: Int, valueLength: Int?, into segment: inout Segment) {
        if segment.last < segment.first { segment.first = seq }
        segment.last = max(segment.last, seq)
        segment.totalBytes += rowBytes(keyLength: keyLength, valueLength: valueLength ?? 0)
    }

    static func rowBytes(keyLength: Int, valueLength: Int) -> Int {
        keyLength + valueLength + rowOverhead
    }

    /// The index in `segments` of the segment holding `seq`, if it still
    /// exists: the last whose range starts at or before it (an empty segment
    /// starts where the next row would have gone).
    func segmentIndex(holding seq: UInt64) -> Int? {
        guard seq != 0, seq >= flushSeq, let firstSegment = segments.first, seq >= firstSegment.first else { return nil }
        var low = 0
        var high = segments.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if segments[middle].first <= seq { low = middle } else { high = middle - 1 }
        }
        return low == segments.count - 1 || seq <= segments[low].last ? low : nil
    }

    /// Makes the next seq larger than `seq` (a replaced file, rewritten from
    /// memory whose headers name the old file's seqs).
    func raiseNextSeq(above seq: UInt64) {
        nextSeq = max(nextSeq, seq + 1)
    }

    /// Adjusts a segment's live bytes (the writer's accounting).
    func addLive(_ bytes: Int, at index: Int) {
        segments[index].liveBytes = max(0, segments[index].liveBytes + bytes)
    }

    func resetLive() {
        for index in segments.indices { segments[index].liveBytes = 0 }
    }

    var liveBytes: Int { segments.reduce(0) { $0 + $1.liveBytes } }

    // MARK: Hints

    /// Packs a row's header: key length (2 bytes), key, seq, flags, deadline,
    /// cas, value length (-1: a tombstone), little-endian.
    static func encodeHint(_ header: RowHeader, into data: inout [UInt8]) {
        func put<T: FixedWidthInteger>(_ value: T) {
            withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) }
        }
        put(UInt16(header.key.count))
        data.append(contentsOf: header.key)
        put(header.seq)
        put(header.flags)
        put(header.deadline)
        put(header.cas)
        put(Int32(header.valueLength ?? -1))
    }

    static func decodeHints(_ data: UnsafeRawBufferPointer) -> [RowHeader] {
        var headers: [RowHeader] = []
        forEachHint(data) { hint in
            headers.append(RowHeader(
                key: Array(hint.key), seq: hint.seq, flags: hint.flags, deadline: hint.deadline, cas: hint.cas, valueLength: hint.valueLength
            ))
        }
        return headers
    }

    /// A row header read in place: `key` points into the buffer it came
    /// from and is valid only during the call it is given to.
    struct HeaderView {
        var key: UnsafeRawBufferPointer
        var seq: UInt64
        var flags: UInt32
        var deadline: Int64
        var cas: UInt64
        /// nil: a tombstone.
        var valueLength: Int?
    }

    /// The hints of a segment, one header at a time, without copying keys:
    /// start-up reads millions of them.
    static func forEachHint(_ data: UnsafeRawBufferPointer, _ body: (HeaderView) -> Void) {
        var offset = 0
        func take<T: FixedWidthInteger>(_: T.Type) -> T {
            var value = T.zero
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: data[offset..<(offset + MemoryLayout<T>.size)])) }
            offset += MemoryLayout<T>.size
            return T(littleEndian: value)
        }
        while offset + 2 <= data.count {
            let keyLength = Int(take(UInt16.self))
            guard offset + keyLength + 32 <= data.count else { break }
            let key = UnsafeRawBufferPointer(rebasing: data[offset..<(offset + keyLength)])
            offset += keyLength
            let seq = take(UInt64.self)
            let flags = take(UInt32.self)
            let deadline = take(Int64.self)
            let cas = take(UInt64.self)
            let length = take(Int32.self)
            body(HeaderView(key: key, seq: seq, flags: flags, deadline: deadline, cas: cas, valueLength: length < 0 ? nil : Int(length)))
        }
    }

    /// The headers of a sealed segment's rows, from its hints row (its rows when it has none).
    func headers(ofSegment id: Int) throws(SQLiteError) -> [RowHeader] {
        let statement = try connection.prepare("SELECT data FROM hints WHERE segment = ?1")
        statement.bind(1, Int64(id))
        if try statement.step() { return Self.decodeHints(statement.blob(0)) }
        let rows = try connection.prepare("SELECT seq, key, flags, deadline, cas, length(value), value IS NULL FROM \(Self.tableName(id)) ORDER BY seq")
        var headers: [RowHeader] = []
        while try rows.step() {
            headers.append(RowHeader(
                key: Array(rows.blob(1)), seq: UInt64(bitPattern: rows.int64(0)), flags: UInt32(truncatingIfNeeded: rows.int64(2)),
                deadline: rows.int64(3), cas: UInt64(bitPattern: rows.int64(4)), valueLength: rows.int64(6) != 0 ? nil : Int(rows.int64(5))
            ))
        }
        return headers
    }

    // MARK: Writing (the writer thread only)

    func begin() throws(SQLiteError) { try connection.execute("BEGIN IMMEDIATE") }
    func commit() throws(SQLiteError) { try connection.execute("COMMIT") }

    /// Rolls back, and re-reads the log's shape the transaction had changed.
    func rollback() {
        try? connection.execute("ROLLBACK")
        appendStatement = nil
        rowReader = nil
        try? loadLog()
    }

    /// Pages in the WAL after the last commit.
    var framesInWAL: Int { Int(walFrames.pointer.pointee) }

    /// Checkpoints on the writer's own connection, waiting for one running
    /// elsewhere to finish: when the WAL has grown past `walPageLimit`.
    func checkpointNow() throws(SQLiteError) {
        _ = try connection.checkpoint(mode: SQLITE_CHECKPOINT_FULL)
    }

    /// Appends a row to the head: a version of a key, or with `value` nil a
    /// tombstone. Seals the head once it is full. Returns the row's seq.
    func append(
        key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?, flags: UInt32, deadline: Int64, cas: UInt64
    ) throws(SQLiteError) -> UInt64 {
        if appendStatement == nil {
            appendStatement = try connection.prepare(
                "INSERT INTO \(segments[segments.count - 1].name) (seq, key, flags, deadline, cas, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            )
        }
        let statement: Statement = appendStatement
        let seq = nextSeq
        statement.bind(1, Int64(bitPattern: seq))
        statement.bind(2, blob: key)
        statement.bind(3, Int64(flags))
        statement.bind(4, deadline)
        statement.bind(5, Int64(bitPattern: cas))
        if let value { statement.bind(6, blob: value) }
        try statement.run()
        nextSeq += 1
        let header = RowHeader(key: Array(key), seq: seq, flags: flags, deadline: deadline, cas: cas, valueLength: value?.count)
        Self.encodeHint(header, into: &headHints)
        Self.count(header, into: &segments[segments.count - 1])
        totalBytes += Self.rowBytes(keyLength: key.count, valueLength: value?.count ?? 0)
        if segments[segments.count - 1].totalBytes >= max(segmentBytes, totalBytes / maxSegments) { try seal() }
        return seq
    }

    func append(_ change: Change) throws(SQLiteError) -> UInt64 {
        let result: Result<UInt64, SQLiteError> = change.storage.withUnsafeBytes { all in
            let key = UnsafeRawBufferPointer(rebasing: all[..<change.keyLength])
            let value: UnsafeRawBufferPointer? = change.kind == .upsert ? UnsafeRawBufferPointer(rebasing: all[change.keyLength...]) : nil
            return Result { () throws(SQLiteError) in
                try append(key: key, value: value, flags: change.flags, deadline: change.deadline.millis, cas: change.stamp)
            }
        }
        return try result.get()
    }

    /// Appends an item's current version. A cold item's value is `value`
    /// (read from its row), never the empty bytes its snapshot holds.
    func append(_ item: ItemSnapshot, value: [UInt8]) throws(SQLiteError) -> UInt64 {
        let result: Result<UInt64, SQLiteError> = item.storage.withUnsafeBytes { all in
            value.withUnsafeBytes { value in
                Result { () throws(SQLiteError) in
                    try append(
                        key: UnsafeRawBufferPointer(rebasing: all[..<item.keyLength]), value: value,
                        flags: item.flags, deadline: item.deadline.millis, cas: item.cas
                    )
                }
            }
        }
        return try result.get()
    }

    /// The value of row `seq` on the writer's connection (inside its
    /// transaction, if one is open): nil when no segment holds it.
    func value(at seq: UInt64) throws(SQLiteError) -> [UInt8]? {
        guard let index = segmentIndex(holding: seq) else { return nil }
        if rowReader == nil { rowReader = RowReader(connection: connection) }
        return try rowReader!.read(seq: seq, segment: segments[index].id)?.value
    }

    func append(_ item: ItemSnapshot) throws(SQLiteError) -> UInt64 {
        precondition(!item.isCold, "a cold item's value is read from its row first")
        let result: Result<UInt64, SQLiteError> = item.storage.withUnsafeBytes { all in
            Result { () throws(SQLiteError) in
                try append(
                    key: UnsafeRawBufferPointer(rebasing: all[..<item.keyLength]), value: UnsafeRawBufferPointer(rebasing: all[item.keyLength...]),
                    flags: item.flags, deadline: item.deadline.millis, cas: item.cas
                )
            }
        }
        return try result.get()
    }

    /// Writes the head's hints row and starts the next segment (in the open
    /// transaction): the sealed segment is never written again.
    func seal() throws(SQLiteError) {
        let head = segments[segments.count - 1]
        let statement = try connection.prepare("INSERT OR REPLACE INTO hints (segment, data) VALUES (?1, ?2)")
        statement.bind(1, Int64(head.id))
        let hints = headHints
        let failure: SQLiteError? = hints.withUnsafeBytes { bytes in
            statement.bind(2, blob: bytes)
            do throws(SQLiteError) { try statement.run() } catch { return error }
            return nil
        }
        if let failure { throw failure }
        try connection.execute(Self.segmentSchema(head.id + 1))
        segments.append(Segment(id: head.id + 1, first: nextSeq, last: nextSeq - 1, totalBytes: 0, liveBytes: 0))
        headHints = []
        appendStatement = nil
    }

    /// Drops the oldest segment and its hints (in the open transaction).
    func dropOldest() throws(SQLiteError) {
        precondition(segments.count > 1, "the head is never dropped")
        let victim = segments[0]
        // The cached statement names the head, never the victim; SQLite
        // re-prepares it after the schema change by itself.
        try connection.execute("DROP TABLE \(victim.name); DELETE FROM hints WHERE segment = \(victim.id)")
        segments.removeFirst()
        rowReader?.retain(segments: Set(segments.map(\.id)))
        totalBytes -= victim.totalBytes
    }

    /// flush_all: every row written so far is void (`flush_seq`), the head is
    /// sealed, and the deletes remembered are replaced by the flush's stamp.
    /// The old segments are dropped by compaction over the next commits.
    func flushAll(keepingTombstones: Bool = false) throws(SQLiteError) {
        flushSeq = nextSeq
        try setMeta("flush_seq", Int64(bitPattern: flushSeq))
        if !keepingTombstones { try connection.execute("DELETE FROM tombstones") }
        try seal()
        resetLive()
    }

    /// Empties the log (the file was replaced and is rewritten from memory).
    func deleteAll() throws(SQLiteError) {
        for segment in segments { try connection.execute("DROP TABLE \(segment.name)") }
        rowReader = nil
        let next = (segments.last?.id ?? 0) + 1
        try connection.execute("DELETE FROM hints; DELETE FROM tombstones; \(Self.segmentSchema(next))")
        segments = [Segment(id: next, first: nextSeq, last: nextSeq - 1, totalBytes: 0, liveBytes: 0)]
        totalBytes = 0
        headHints = []
        appendStatement = nil
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
        try Self.allMeta(connection)
    }

    static func allMeta(_ connection: SQLiteConnection) throws(SQLiteError) -> [String: MetaValue] {
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

    // MARK: Reading (start-up)

    /// Rows in the log, dead ones included.
    /// The rows of the log, from the segments' seq ranges: `count(*)` would
    /// read every leaf page of every segment (seconds for a 10 GB log).
    var rowCount: Int {
        segments.reduce(0) { $0 + ($1.last >= $1.first ? Int($1.last - $1.first + 1) : 0) }
    }

    /// The newest row of every key at or above `flush_seq` (a tombstone
    /// included): recovery's first pass, from the hints of the sealed
    /// segments (about 60 bytes a row, no value read) and the head's rows.
    func newestRows() throws(SQLiteError) -> [[UInt8]: RowHeader] {
        var newest: [[UInt8]: RowHeader] = [:]
        for segment in segments {
            for header in try headers(ofSegment: segment.id) where header.seq >= flushSeq {
                // Rows come in seq order within a segment, and segments in id order.
                newest[header.key] = header
            }
        }
        return newest
    }

    /// Streams, from `parts` threads at once (a segment each, each with a
    /// read-only connection of its own), every row that `newest` names and
    /// that is a value unexpired at `now`: recovery's second pass, bound by
    /// SQLite's decoding and the copy into memory, which several cores share.
    /// `body` gets the row's seq, key, value, flags, deadline and cas; its
    /// buffers are valid only during the call. Rethrows the first error.
    func forEachNewestRow(
        _ newest: [[UInt8]: UInt64], now: Int64, parts: Int,
        _ body: @Sendable (UInt64, UnsafeRawBufferPointer, UnsafeRawBufferPointer, UInt32, Deadline, UInt64) -> Void
    ) throws(SQLiteError) {
        try Self.forEachNewestRow(newest, in: logShape, now: now, parts: parts, body)
    }

    /// Every row header of the log from `flush_seq` on, oldest first (a
    /// segment's hints, or its rows for the head): recovery's one pass when
    /// values stay in the log.
    func forEachHeader(_ body: (HeaderView) -> Void) throws(SQLiteError) {
        let flushSeq = self.flushSeq
        for segment in segments {
            let statement = try connection.prepare("SELECT data FROM hints WHERE segment = ?1")
            statement.bind(1, Int64(segment.id))
            if try statement.step() {
                Self.forEachHint(statement.blob(0)) { if $0.seq >= flushSeq { body($0) } }
                continue
            }
            let rows = try connection.prepare(
                "SELECT seq, key, flags, deadline, cas, length(value), value IS NULL FROM \(segment.name) WHERE seq >= ?1 ORDER BY seq"
            )
            rows.bind(1, Int64(bitPattern: flushSeq))
            while try rows.step() {
                body(HeaderView(
                    key: rows.blob(1), seq: UInt64(bitPattern: rows.int64(0)), flags: UInt32(truncatingIfNeeded: rows.int64(2)),
                    deadline: rows.int64(3), cas: UInt64(bitPattern: rows.int64(4)), valueLength: rows.int64(6) != 0 ? nil : Int(rows.int64(5))
                ))
            }
        }
    }

    /// The log's values newest first, on a read-only connection of its own,
    /// until `body` returns false: the warm-up after recovery. A segment
    /// compaction drops meanwhile ends it with an error.
    static func forEachValueNewestFirst(
        in shape: LogShape, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer, UInt64) -> Bool
    ) throws(SQLiteError) {
        let reader = try SQLiteConnection(path: shape.path, mode: .readOnly)
        defer { reader.close() }
        try reader.execute("PRAGMA mmap_size = 0")
        for name in shape.segmentNames.reversed() {
            let statement = try reader.prepare("SELECT key, value, cas FROM \(name) WHERE seq >= ?1 AND value IS NOT NULL ORDER BY seq DESC")
            statement.bind(1, Int64(bitPattern: shape.flushSeq))
            while try statement.step() {
                guard body(statement.blob(0), statement.blob(1), UInt64(bitPattern: statement.int64(2))) else { return }
            }
        }
    }

    /// Where the log's rows are, for a reader on another thread than the writer's.
    struct LogShape: Sendable {
        let path: String
        let segmentNames: [String]
        let flushSeq: UInt64
    }

    var logShape: LogShape { LogShape(path: path, segmentNames: segments.map(\.name), flushSeq: flushSeq) }

    /// `forEachNewestRow` over a log whose shape was taken earlier (the
    /// background warm-up): a segment dropped since fails its read.
    static func forEachNewestRow(
        _ newest: [[UInt8]: UInt64], in shape: LogShape, now: Int64, parts: Int,
        _ body: @Sendable (UInt64, UnsafeRawBufferPointer, UnsafeRawBufferPointer, UInt32, Deadline, UInt64) -> Void
    ) throws(SQLiteError) {
        let names = shape.segmentNames
        let failures = Mutex<[SQLiteError]>([])
        let next = Atomic<Int>(0)
        let (path, flushSeq) = (shape.path, shape.flushSeq)
        DispatchQueue.concurrentPerform(iterations: max(1, min(parts, names.count))) { _ in
            do throws(SQLiteError) {
                let reader = try SQLiteConnection(path: path, mode: .readOnly)
                // Mapped rather than read: the scan then costs no copy of
                // every page into SQLite's cache. Only these short-lived
                // start-up readers map the file; the writer never does.
                try reader.execute("PRAGMA mmap_size = \(Self.recoveryMapBytes)")
                while true {
                    let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard index < names.count else { return }
                    let statement = try reader.prepare(
                        "SELECT seq, key, value, flags, deadline, cas FROM \(names[index]) "
                            + "WHERE seq >= ?1 AND value IS NOT NULL AND (deadline = 0 OR deadline > ?2)"
                    )
                    statement.bind(1, Int64(bitPattern: flushSeq))
                    statement.bind(2, now)
                    while try statement.step() {
                        let seq = UInt64(bitPattern: statement.int64(0))
                        let key = statement.blob(1)
                        guard newest[Array(key)] == seq else { continue }
                        body(
                            seq, key, statement.blob(2), UInt32(truncatingIfNeeded: statement.int64(3)),
                            Deadline(millis: statement.int64(4)), UInt64(bitPattern: statement.int64(5))
                        )
                    }
                }
            } catch {
                failures.withLock { $0.append(error) }
            }
        }
        if let failure = failures.withLock({ $0.first }) { throw failure }
    }

    /// Unexpired live keys in a log file (its newest row per key, unless a
    /// tombstone or below `flush_seq`): what a node started on it recovers.
    static func liveItemCount(_ connection: SQLiteConnection, now: Int64) throws(SQLiteError) -> Int64 {
        let ids = try segmentIDs(connection)
        guard !ids.isEmpty else { return 0 }
        let flushSeq = try connection.integer("SELECT ifnull((SELECT value FROM meta WHERE name = 'flush_seq'), 0)")
        let rows = ids.map { "SELECT seq, key, deadline, value IS NULL AS dead FROM \(tableName($0)) WHERE seq >= \(flushSeq)" }
            .joined(separator: " UNION ALL ")
        // A bare column beside max() comes from the row holding the maximum.
        return try connection.integer(
            "SELECT count(*) FROM (SELECT max(seq), deadline, dead FROM (\(rows)) GROUP BY key) WHERE dead = 0 AND (deadline = 0 OR deadline > \(now))"
        )
    }

    /// Folds the whole WAL into the file and empties it, failing if any frame is left.
    func checkpointTruncate() throws(SQLiteError) {
        let result = try connection.checkpoint(mode: SQLITE_CHECKPOINT_TRUNCATE)
        guard !result.busy, result.framesCheckpointed >= result.framesInWAL else {
            throw SQLiteError(code: SQLITE_BUSY, message: "the WAL could not be folded into \(path)")
        }
    }

    /// Closes the file. With `checkpoint`, the WAL is first folded into the
    /// database file, so a cleanly stopped node leaves one self-contained file.
    func close(checkpoint: Bool = true) {
        if checkpoint { try? connection.execute("PRAGMA wal_checkpoint(TRUNCATE)") }
        appendStatement = nil
        setMetaStatement = nil
        tombstoneStatement = nil
        rowReader = nil
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
