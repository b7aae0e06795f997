import Logging
import NIOCore
import SessionPersistence
import SessionStore

/// Everything a node needs to start serving.
public struct ServerConfiguration: Sendable {
    /// The address the memcached listener binds.
    public var host: String
    /// The memcached port; 0 picks a free one (tests read it back from `boundPort`).
    public var port: Int
    /// Event loop threads.
    public var threads: Int
    /// Connections past this many are refused (`-c`).
    public var maxConnections: Int
    /// Sizing of the in-memory store.
    public var store: StoreConfiguration
    /// memcached's `-v` level, reported by `stats settings`.
    public var verbosity: Int
    /// How long a graceful stop waits for connections to finish their replies.
    public var drainTimeoutSeconds: Int64
    /// Write-behind to SQLite; nil keeps items in memory only.
    public var persistence: PersistenceConfiguration?

    public init(
        host: String = "127.0.0.1", port: Int = 11211, threads: Int = System.coreCount,
        maxConnections: Int = 4096, store: StoreConfiguration = StoreConfiguration(),
        verbosity: Int = 0, drainTimeoutSeconds: Int64 = 5, persistence: PersistenceConfiguration? = nil
    ) {
        self.persistence = persistence
        self.host = host
        self.port = port
        self.threads = threads
        self.maxConnections = maxConnections
        self.store = store
        self.verbosity = verbosity
        self.drainTimeoutSeconds = drainTimeoutSeconds
    }
}
