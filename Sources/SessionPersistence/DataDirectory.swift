#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A node's data directory: created on first use and locked for as long as
/// the node runs, so two processes never write the same files.
public final class DataDirectory: Sendable {
    public let path: String
    /// The held lock file's descriptor (-1 once released); closing it releases the lock.
    private let lockDescriptor: Atomic<Int32>

    /// The database file's name inside a data directory (also the name a backup writes).
    public static let databaseFileName = "tandem.sqlite3"

    /// The database file inside the directory.
    public var databasePath: String { path + "/" + Self.databaseFileName }

    public init(path: String) throws(PersistenceError) {
        let path = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        self.path = path
        if mkdir(path, 0o750) != 0 && errno != EEXIST {
            throw .directoryUnusable(path: path, reason: String(cString: strerror(errno)))
        }
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw .directoryUnusable(path: path, reason: "not a directory")
        }
        let descriptor = open(path + "/tandemd.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw .directoryUnusable(path: path, reason: "cannot create its lock file: \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let busy = errno == EWOULDBLOCK
            let reason = String(cString: strerror(errno))
            close(descriptor)
            if busy { throw .locked(path: path) }
            throw .directoryUnusable(path: path, reason: "cannot lock it: \(reason)")
        }
        // Record who holds the lock, for the operator who finds it.
        let pid = "\(getpid())\n"
        _ = ftruncate(descriptor, 0)
        _ = pid.withCString { write(descriptor, $0, strlen($0)) }
        self.lockDescriptor = Atomic(descriptor)
    }

    /// Releases the lock so another node (or a restart in the same process) may use the directory.
    public func release() {
        let descriptor = lockDescriptor.exchange(-1, ordering: .relaxed)
        if descriptor >= 0 { close(descriptor) }
    }

    deinit {
        release()
    }
}
