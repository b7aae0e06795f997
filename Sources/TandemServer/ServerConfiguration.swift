import Logging
import NIOCore
import Replication
import SessionPersistence
import SessionStore
import TandemTLS
import WireProtocol

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
    /// The wire listener and the pair; nil runs a standalone node without a wire port.
    public var pair: PairConfiguration?
    /// With users, memcached clients must authenticate with SASL PLAIN over the
    /// binary protocol, and text-protocol connections are refused.
    public var saslUsers: SASLUsers?
    /// With a port, an HTTP listener on `host` serves `GET /metrics` (Prometheus)
    /// and `GET /health`; 0 picks a free port (logged as `metrics on HOST:PORT`).
    public var metricsPort: Int?
    /// TLS on the ports `tls.ports` names (the metrics port stays plaintext);
    /// with a CA, the wire port requires client certificates signed by it.
    /// The node's own connections to its peer use `pair.replication.tls`.
    public var tls: NodeTLS?

    public init(
        host: String = "127.0.0.1", port: Int = 11211, threads: Int = System.coreCount,
        maxConnections: Int = 4096, store: StoreConfiguration = StoreConfiguration(),
        verbosity: Int = 0, drainTimeoutSeconds: Int64 = 5, persistence: PersistenceConfiguration? = nil,
        pair: PairConfiguration? = nil
    ) {
        self.persistence = persistence
        self.pair = pair
        self.host = host
        self.port = port
        self.threads = threads
        self.maxConnections = maxConnections
        self.store = store
        self.verbosity = verbosity
        self.drainTimeoutSeconds = drainTimeoutSeconds
    }
}

/// A node's place in a pair and its wire listener.
public struct PairConfiguration: Sendable {
    /// The address the wire listener binds (like the memcached port's).
    public var wireHost: String
    /// The wire port; 0 picks a free one.
    public var wirePort: Int
    public var role: NodeRole
    /// The other node's wire address (a backup connects to it).
    public var peer: (host: String, port: Int)?
    public var replication: ReplicationConfiguration
    /// With a secret, every wire connection must prove it knows it before
    /// anything else (Protocol.md 1.3); without, anyone who reaches the wire
    /// port may replicate and administer the node. A backup's own connection
    /// to its primary uses `replication.secret`.
    public var secret: WireSecret?

    public init(
        wireHost: String = "127.0.0.1", wirePort: Int = 11311, role: NodeRole = .primary, peer: (host: String, port: Int)? = nil,
        replication: ReplicationConfiguration = ReplicationConfiguration(), secret: WireSecret? = nil
    ) {
        self.wireHost = wireHost
        self.wirePort = wirePort
        self.role = role
        self.peer = peer
        self.replication = replication
        self.secret = secret
    }
}
