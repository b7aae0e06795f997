import NIOCore
import TandemTLS
import WireProtocol

/// How the two nodes of a pair replicate.
public struct ReplicationConfiguration: Sendable {
    /// When a primary answers a client's write.
    public enum Mode: String, Sendable, CaseIterable {
        /// After the backup acknowledged applying it (bounded by `syncTimeout`).
        case sync
        /// At once; the backup follows as fast as it can.
        case async
    }

    public var mode: Mode
    /// Longest wait for the backup's acknowledgement before answering anyway (and degrading).
    public var syncTimeout: TimeAmount
    /// A side sends a ping when it has sent nothing for this long.
    public var heartbeatInterval: TimeAmount
    /// A side that hears nothing for this long closes the link.
    public var linkTimeout: TimeAmount
    /// Bytes of encoded changes the primary keeps for partial resyncs.
    public var backlogSize: Int
    /// The node's name, sent in `hello`.
    public var nodeName: String
    /// A backup that has heard nothing from its primary for this long (and
    /// could not reach it afresh) promotes itself; 0 never. The default leaves
    /// a write parked on the backup meanwhile time to be answered within
    /// msm's 1,000 ms operation timeout.
    public var failoverAfter: TimeAmount = .milliseconds(600)
    /// The pair's shared secret, with which a backup authenticates to its
    /// primary (and checks that the primary knows it too).
    public var secret: WireSecret?
    /// With TLS on the wire port, a node's connections to its peer are TLS
    /// too: it presents its certificate and checks the peer's against the
    /// CA (`NodeTLS.peerClient`, read at each connection so that a reload
    /// applies to the next one).
    public var tls: NodeTLS?

    public init(
        mode: Mode = .sync, syncTimeout: TimeAmount = .milliseconds(1000), heartbeatInterval: TimeAmount = .milliseconds(100),
        linkTimeout: TimeAmount = .milliseconds(1000), backlogSize: Int = 256 << 20, nodeName: String = "",
        secret: WireSecret? = nil
    ) {
        self.mode = mode
        self.syncTimeout = syncTimeout
        self.heartbeatInterval = heartbeatInterval
        self.linkTimeout = linkTimeout
        self.backlogSize = backlogSize
        self.nodeName = nodeName
        self.secret = secret
    }
}

/// Meta-table names under which a node keeps its replication position.
public enum ReplicationMetaKey {
    public static let replicationID = "replication_id"
    public static let offset = "replication_offset"
    /// The node's epoch: raised by every promotion and stored before the node takes writes.
    public static let epoch = "epoch"
    /// The role the node had at its last commit: 1 primary, 2 backup.
    public static let role = "role"
    /// The history the node's data continued when it was last promoted (16
    /// zero bytes: none), and the offset of it where the node took over.
    public static let previousReplicationID = "previous_replication_id"
    public static let forkOffset = "fork_offset"
}
