import NIOCore

/// What one node of a pair tells the other about itself (`pairStatusReply`,
/// Protocol.md 1.4.4): its role now and the one it was configured with, its
/// epoch, and where its data stands in which history. The nodes compare
/// these at start to decide which of them leads (Protocol.md 2.6).
public struct PairStatus: Sendable, Equatable {
    /// The node's name (`--node-name`, else its wire address).
    public var nodeName: String
    /// The node's role now.
    public var role: NodeRole
    /// `--role`: which node leads when both start with the same data.
    public var configuredRole: NodeRole
    public var epoch: UInt64
    /// The history the node's data belongs to (`.none`: no data from any).
    public var replicationID: ReplicationID
    /// The last offset of that history the data holds.
    public var offset: UInt64
    /// The history the data continued at the node's last promotion (`.none`:
    /// it continues none) …
    public var previousReplicationID: ReplicationID
    /// … and the last offset of it the node held then (0 with none).
    public var forkOffset: UInt64

    public init(
        nodeName: String, role: NodeRole, configuredRole: NodeRole, epoch: UInt64, replicationID: ReplicationID, offset: UInt64,
        previousReplicationID: ReplicationID = .none, forkOffset: UInt64 = 0
    ) {
        self.nodeName = nodeName
        self.role = role
        self.configuredRole = configuredRole
        self.epoch = epoch
        self.replicationID = replicationID
        self.offset = offset
        self.previousReplicationID = previousReplicationID
        self.forkOffset = forkOffset
    }
}

extension WireEncodedSize {
    /// A `pairStatusReply` without the bytes of its node name: role,
    /// configured role, epoch, replication ID, offset, previous replication
    /// ID, fork offset, the name's length.
    public static let pairStatus = 1 + 1 + 8 + 16 + 8 + 16 + 8 + 4
}

extension ByteBuffer {
    /// The fixed fields first, so that each has the same byte offset in every reply.
    mutating func writePairStatus(_ status: PairStatus) {
        writeInteger(status.role.rawValue)
        writeInteger(status.configuredRole.rawValue)
        writeInteger(status.epoch)
        writeReplicationID(status.replicationID)
        writeInteger(status.offset)
        writeReplicationID(status.previousReplicationID)
        writeInteger(status.forkOffset)
        writeWireString(status.nodeName)
    }
}

extension WireBodyReader {
    mutating func pairStatus() throws(WireProtocolError) -> PairStatus {
        let role = try enumeration("role", as: NodeRole.self)
        let configuredRole = try enumeration("configured_role", as: NodeRole.self)
        let epoch = try integer("epoch", as: UInt64.self)
        let id = try replicationID("replication_id")
        let offset = try integer("offset", as: UInt64.self)
        let previous = try replicationID("previous_replication_id")
        let forkOffset = try integer("fork_offset", as: UInt64.self)
        let nodeName = try string("node_name")
        return PairStatus(
            nodeName: nodeName, role: role, configuredRole: configuredRole, epoch: epoch, replicationID: id, offset: offset,
            previousReplicationID: previous, forkOffset: forkOffset
        )
    }
}
