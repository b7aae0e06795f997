import CSQLite

#if canImport(Glibc)
import Glibc
#endif

extension DataDirectory {
    /// What `check(path:)` found.
    public enum CheckResult: Sendable, Equatable {
        /// The directory does not exist; its parent lets this user create it.
        case willBeCreated
        /// The directory exists and holds no database yet.
        case empty
        /// The directory holds a Tandem database of this schema version.
        case database(schemaVersion: Int64)
    }

    /// Whether a node could use `path` as its data directory, without taking
    /// its lock or writing anything: for `tandemd --check-config`, which may
    /// run while the node itself runs (before a restart). Refuses what
    /// `Persistence.open` would refuse, with the same errors: a path that
    /// cannot be created or written, a lock file or database this user cannot
    /// open, a file that is not SQLite, another program's database, a newer
    /// schema. A directory held by a running node is fine.
    ///
    /// The database is opened read-only, as a backup's source is; as root,
    /// SQLite gives any `-shm` file it has to create the database's owner.
    public static func check(path: String) throws(PersistenceError) -> CheckResult {
        let path = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        var info = stat()
        if stat(path, &info) != 0 {
            guard errno == ENOENT else { throw .directoryUnusable(path: path, reason: String(cString: strerror(errno))) }
            // tandemd creates the directory itself (one level, as mkdir does).
            let parent = Self.parent(of: path)
            var parentInfo = stat()
            guard stat(parent, &parentInfo) == 0, (parentInfo.st_mode & S_IFMT) == S_IFDIR else {
                throw .directoryUnusable(path: path, reason: "it does not exist, and neither does its parent \(parent)")
            }
            guard access(parent, W_OK | X_OK) == 0 else {
                throw .directoryUnusable(path: path, reason: "it does not exist, and this user cannot create it in \(parent)")
            }
            return .willBeCreated
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { throw .directoryUnusable(path: path, reason: "not a directory") }
        guard access(path, R_OK | W_OK | X_OK) == 0 else {
            throw .directoryUnusable(path: path, reason: "this user cannot write it (\(String(cString: strerror(errno))))")
        }
        let lockPath = path + "/tandemd.lock"
        if access(lockPath, F_OK) == 0, access(lockPath, R_OK | W_OK) != 0 {
            throw .directoryUnusable(path: path, reason: "this user cannot open its lock file \(lockPath)")
        }
        let databasePath = path + "/" + databaseFileName
        guard access(databasePath, F_OK) == 0 else { return .empty }
        guard access(databasePath, R_OK | W_OK) == 0 else {
            throw .directoryUnusable(path: path, reason: "this user cannot write \(databasePath)")
        }
        let connection: SQLiteConnection
        do {
            connection = try SQLiteConnection(path: databasePath, mode: .readOnly)
        } catch {
            throw .unreadable(path: databasePath, error: error)
        }
        defer { connection.close() }
        // The same questions ItemDatabase asks before it writes a byte.
        do {
            let version = try connection.integer("PRAGMA user_version")
            if version > ItemDatabase.schemaVersion {
                throw PersistenceError.newerSchema(path: databasePath, found: version, supported: ItemDatabase.schemaVersion)
            }
            let tables = try connection.integer("SELECT count(*) FROM sqlite_master")
            if version == 0 {
                guard tables == 0 else { throw PersistenceError.foreignDatabase(path: databasePath) }
                return .empty
            }
            // Schema 1 and 2 (one `items` row per key) are converted to the log at start.
            let expected = version < 3 ? "'items', 'meta'" : "'meta', 'hints', 'tombstones'"
            let count: Int64 = version < 3 ? 2 : 3
            guard try connection.integer("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (\(expected))") == count else {
                throw PersistenceError.foreignDatabase(path: databasePath)
            }
            return .database(schemaVersion: version)
        } catch let error as PersistenceError {
            throw error
        } catch let error as SQLiteError {
            if error.primaryCode == SQLITE_NOTADB { throw .notADatabase(path: databasePath) }
            throw .unreadable(path: databasePath, error: error)
        } catch {
            throw .unreadable(path: databasePath, error: SQLiteError(code: SQLITE_ERROR, message: "\(error)"))
        }
    }

    /// The directory `path` is in (`.` for a bare name).
    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = String(path[..<slash])
        return parent.isEmpty ? "/" : parent
    }
}
