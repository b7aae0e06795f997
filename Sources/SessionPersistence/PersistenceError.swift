/// Why a node cannot use its data directory. Each names the file and says what to do.
public enum PersistenceError: Error, CustomStringConvertible, Sendable {
    /// The data directory does not exist and cannot be created, or cannot be written.
    case directoryUnusable(path: String, reason: String)
    /// Another process holds the directory's lock.
    case locked(path: String)
    /// The database file is not an SQLite database.
    case notADatabase(path: String)
    /// An SQLite database, but not one of Tandem's.
    case foreignDatabase(path: String)
    /// Written by a newer Tandem with a schema this one does not know.
    case newerSchema(path: String, found: Int64, supported: Int64)
    /// SQLite reports the file damaged, or another SQLite failure at start.
    case unreadable(path: String, error: SQLiteError)
    /// A backup's target cannot be used: no path, a parent that does not exist,
    /// something there that is not an empty directory, no permission.
    case copyTargetUnusable(path: String, reason: String)
    /// Copying the database into a backup failed; nothing usable was left in the target.
    case copyFailed(path: String, reason: String)
    /// Reading a value that is not in RAM back from the log failed.
    case valueUnreadable(path: String, error: SQLiteError)
    /// The node is stopping: no more values are read from the log.
    case stopped

    public var description: String {
        switch self {
        case .directoryUnusable(let path, let reason):
            return "data directory \(path) is unusable: \(reason); choose another with --data-dir or fix its permissions"
        case .locked(let path):
            return "data directory \(path) is in use by another tandemd (lock held on \(path)/tandemd.lock); stop it or use another --data-dir"
        case .notADatabase(let path):
            return "\(path) is not an SQLite database; it was left untouched. Move it away or choose another --data-dir"
        case .foreignDatabase(let path):
            return "\(path) is an SQLite database but not Tandem's; it was left untouched. Move it away or choose another --data-dir"
        case .newerSchema(let path, let found, let supported):
            return "\(path) has schema version \(found), newer than this tandemd supports (\(supported)); run a newer tandemd. The file was left untouched"
        case .unreadable(let path, let error):
            return "\(path) cannot be read: \(error.message) (SQLite code \(error.code)); the file was left untouched. Restore it from a backup or move it away"
        case .copyTargetUnusable(let path, let reason):
            return "cannot back up into \(path.isEmpty ? "\"\"" : path): \(reason)"
        case .copyFailed(let path, let reason):
            return "backup into \(path) failed: \(reason); the partial copy was removed"
        case .valueUnreadable(let path, let error):
            return "cannot read a value from \(path): \(error.message) (SQLite code \(error.code))"
        case .stopped:
            return "storage is stopping"
        }
    }
}
