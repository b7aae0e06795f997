import NIOCore

/// A message of Tandem's wire protocol. `Protocol.md` at the repository root
/// specifies every field's encoding; this enum is that list in Swift.
public enum WireMessage: Sendable, Equatable {
    // MARK: Session

    /// First frame of every connection, from the connecting side.
    case hello(Hello)
    /// The accepting side's answer to `hello`.
    case helloOK(HelloOK)
    /// The connecting side's proof that it knows the shared secret.
    case auth(proof: [UInt8])
    /// The accepting side's proof that it knows the secret too.
    case authOK(proof: [UInt8])
    /// A request failed, or the peer is closing the connection because of a protocol violation.
    case error(WireError)
    /// Liveness probe; answered with `pong` carrying the same timestamp.
    case ping(timestampMillis: Int64)
    case pong(timestampMillis: Int64)

    // MARK: Replication

    /// From a backup: start (or resume) replication after what it already has.
    case replicate(Replicate)
    /// From the primary: a snapshot follows, then the stream from `offset` on.
    case fullResync(FullResync)
    /// A part of the snapshot.
    case snapshotChunk([ReplicatedItem])
    /// The end of the snapshot; `items` were sent.
    case snapshotEnd(items: UInt64)
    /// From the primary: the stream continues right after `offset`; no snapshot.
    case partialResync(replicationID: ReplicationID, offset: UInt64)
    /// Consecutive changes of the primary's stream.
    case changes([ReplicatedChange])
    /// From a backup: every change up to `offset` is applied.
    case ack(offset: UInt64)
    /// A node about to become the backup asks which of its versions the primary
    /// may lack: `position` is where its data comes from.
    case reconcile(Replicate)
    /// Response to `reconcile`: send every version stamped above `watermark`
    /// (`UInt64.max`: none is needed).
    case reconcileFrom(watermark: UInt64)
    /// Versions for the primary to merge: upserts and deletes, `offset` 0.
    case reconcileChunk([ReplicatedChange])
    /// The last chunk was sent; `count` versions in all.
    case reconcileEnd(count: UInt64)
    /// Response to `reconcileEnd`: what the merge did.
    case reconcileDone(ReconcileSummary)

    // MARK: Forwarded memcached writes

    /// From a backup: one complete memcached request (command line and data block) to run on the primary.
    case forward(request: ByteBuffer)
    /// The primary's memcached reply, and its stream position right after the request ran.
    case forwardReply(offset: UInt64, reply: ByteBuffer)

    // MARK: Administration

    /// Asks for the node's status (role, epoch, offsets, …).
    case statusRequest
    /// Asks for every counter.
    case statsRequest
    /// Name/value pairs answering `statusRequest` or `statsRequest`.
    case properties([Property])
    /// Asks a node to become the primary (`tandemctl promote`, or the peer when
    /// this node holds the newer data).
    case promote(reason: String)
    /// Asks a primary to step down and become its peer's backup.
    case demote(reason: String)
    /// Response to `promote`/`demote`: the node's role and epoch now.
    case roleChanged(role: NodeRole, epoch: UInt64)
    /// From the other node of the pair (version 4 on): where this node and its data stand.
    case pairStatus
    /// Response to `pairStatus`.
    case pairStatusReply(PairStatus)
    /// One page of the items matching a filter, walked in short lock holds.
    case scan(ScanRequest)
    /// Response to `scan` and `inspect`.
    case scanPage(ScanPage)
    /// One item, with its value (answered `notFound` when absent).
    case inspect(key: [UInt8])
    /// Deletes these keys (on the primary).
    case deleteKeys([[UInt8]])
    /// Response to `deleteKeys`.
    case deleteResult(deleted: UInt64, missing: UInt64)
    /// Stores these items as they are (on the primary); `cas` is ignored.
    case importItems([SessionRecord])
    /// Response to `importItems` on a version 1 connection: the totals.
    case importResult(ImportSummary)
    /// Response to `importItems` from version 2 on: one outcome per item, in the request's order.
    case importReport([ImportOutcome])
    /// Writes a consistent copy of the node's database into a new directory on the node's machine.
    case backup(path: String)
    /// Response to `backup`.
    case backupDone(BackupSummary)
    /// Streams the changes to keys with this prefix as `watchEvent`s until the connection closes.
    case watch(prefix: [UInt8])
    /// One change, sent as a response to `watch` (same request id).
    case watchEvent(WatchEvent)

    // MARK: Data (version 5 on)

    /// An application's read of one or more keys (memcached `gets`).
    case get(keys: [ByteBuffer])
    /// Response to `get`: the items found, in the request's order (misses left out).
    case items([DataItem])
    /// An application's `set`, `add`, `replace` or `cas`.
    case store(DataWrite)
    /// An application's `touch`: a new TTL for an item, its value unchanged.
    case touch(key: ByteBuffer, ttlMillis: Int64)
    /// An application's `delete`.
    case delete(key: ByteBuffer)
    /// Response to `store`, `touch` and `delete`.
    case writeResult(WriteResult)
}

/// The first frame's content.
public struct Hello: Sendable, Equatable {
    /// Always `Hello.magic`; anything else is not a Tandem peer.
    public var magic: UInt32
    public var minimumVersion: UInt16
    public var maximumVersion: UInt16
    public var role: ConnectionRole
    /// The sender's node name (may be empty for clients).
    public var nodeName: String
    /// 16 random bytes the sender chose, bound into the authentication proofs.
    public var nonce: [UInt8]
    /// The sender's epoch (0 for clients): a primary that meets a higher one steps down.
    public var epoch: UInt64

    /// "TNDM".
    public static let magic: UInt32 = 0x544E_444D

    public init(minimumVersion: UInt16, maximumVersion: UInt16, role: ConnectionRole, nodeName: String, nonce: [UInt8], epoch: UInt64 = 0) {
        self.epoch = epoch
        self.magic = Self.magic
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.role = role
        self.nodeName = nodeName
        self.nonce = nonce
    }
}

/// What a connection is for.
public enum ConnectionRole: UInt8, Sendable, Equatable {
    /// An application or `tandemctl`.
    case client = 1
    /// The other node of the pair.
    case peer = 2
}

/// The accepting side's answer to `hello`.
public struct HelloOK: Sendable, Equatable {
    /// The protocol version both sides now speak.
    public var version: UInt16
    public var nodeName: String
    public var nodeRole: NodeRole
    public var epoch: UInt64
    /// Whether an `auth` exchange must follow before anything else.
    public var authentication: AuthenticationMethod
    /// 32 random bytes, bound into the authentication proofs (empty without authentication).
    public var nonce: [UInt8]

    public init(version: UInt16, nodeName: String, nodeRole: NodeRole, epoch: UInt64, authentication: AuthenticationMethod, nonce: [UInt8]) {
        self.version = version
        self.nodeName = nodeName
        self.nodeRole = nodeRole
        self.epoch = epoch
        self.authentication = authentication
        self.nonce = nonce
    }
}

/// A node's role in the pair.
public enum NodeRole: UInt8, Sendable, Equatable, CustomStringConvertible {
    case primary = 1
    case backup = 2
    /// Started, and comparing its data with its peer's before it serves.
    case joining = 3

    public var description: String {
        switch self {
        case .primary: return "primary"
        case .backup: return "backup"
        case .joining: return "joining"
        }
    }
}

/// How a connection proves it may talk to the node.
public enum AuthenticationMethod: UInt8, Sendable, Equatable {
    case none = 0
    /// Challenge–response over a shared secret (see Protocol.md).
    case hmacSHA256 = 1
}

/// An error answer.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: WireErrorCode
    public var message: String

    public init(_ code: WireErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code) (\(code.rawValue)): \(message)" }
}

/// Error codes; Protocol.md lists when each is sent.
public enum WireErrorCode: UInt16, Sendable, Equatable {
    case unsupportedVersion = 1
    case authenticationRequired = 2
    case authenticationFailed = 3
    case unknownMessage = 4
    case malformed = 5
    case notPrimary = 6
    case protocolViolation = 7
    case tooLarge = 8
    case internalError = 9
    case notFound = 10
    case unavailable = 11
    /// A data message's key that memcached's protocols cannot address (Protocol.md 1.4.5).
    case invalidKey = 12
    /// A data write the node sent on to the primary got no answer: it may or may not have run.
    case outcomeUnknown = 13
    /// A code this implementation does not know (kept so that it can be reported).
    case unknown = 0xFFFF
}

/// A backup's request to replicate.
public struct Replicate: Sendable, Equatable {
    /// The history the backup's data belongs to (`.none` for an empty backup).
    public var replicationID: ReplicationID
    /// The last offset of that history the backup has applied.
    public var offset: UInt64
    public var epoch: UInt64

    public init(replicationID: ReplicationID, offset: UInt64, epoch: UInt64) {
        self.replicationID = replicationID
        self.offset = offset
        self.epoch = epoch
    }
}

/// The start of a full resync.
public struct FullResync: Sendable, Equatable {
    public var replicationID: ReplicationID
    /// The stream position the snapshot corresponds to; changes after it follow the snapshot.
    public var offset: UInt64
    /// Items and bytes the snapshot is expected to hold (for progress reports).
    public var estimatedItems: UInt64
    public var estimatedBytes: UInt64

    public init(replicationID: ReplicationID, offset: UInt64, estimatedItems: UInt64, estimatedBytes: UInt64) {
        self.replicationID = replicationID
        self.offset = offset
        self.estimatedItems = estimatedItems
        self.estimatedBytes = estimatedBytes
    }
}

/// 16 random bytes naming one history of a primary's change stream.
public struct ReplicationID: Sendable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16, "a replication ID has 16 bytes")
        self.bytes = bytes
    }

    /// No history yet (an empty node).
    public static let none = ReplicationID(bytes: [UInt8](repeating: 0, count: 16))

    public static func random() -> ReplicationID {
        var generator = SystemRandomNumberGenerator()
        return ReplicationID(bytes: (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
    }

    /// Lower-case hex, as `stats` and `tandemctl` show it.
    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// Parses exactly 32 hex digits (either case); anything else (signs, spaces, other lengths) is `nil`.
    public init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 32 else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16)
        for pair in stride(from: 0, to: 32, by: 2) {
            guard let high = value(digits[pair]), let low = value(digits[pair + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        self.bytes = bytes
    }
}

/// An item as a snapshot carries it.
public struct ReplicatedItem: Sendable, Equatable {
    /// A slice of the received frame (copy it before keeping it).
    public var key: ByteBuffer
    public var value: ByteBuffer
    public var flags: UInt32
    /// Absolute expiry in milliseconds since the epoch; 0 never.
    public var deadlineMillis: Int64
    /// The item's stamp (Protocol.md 2.6), which memcached clients see as its CAS.
    public var stamp: UInt64

    public init(key: ByteBuffer, value: ByteBuffer, flags: UInt32, deadlineMillis: Int64, stamp: UInt64) {
        self.key = key
        self.value = value
        self.flags = flags
        self.deadlineMillis = deadlineMillis
        self.stamp = stamp
    }
}

/// One change of the primary's stream.
public struct ReplicatedChange: Sendable, Equatable {
    /// What happened.
    public enum Kind: UInt8, Sendable, Equatable {
        case upsert = 1
        /// Expiry or eviction: no tombstone.
        case remove = 2
        /// Carries the flush's stamp.
        case flushAll = 3
        /// A client's delete; carries its stamp.
        case delete = 4

        /// Whether the element carries a stamp after its key (and nothing else).
        public var carriesStampOnly: Bool { self == .flushAll || self == .delete }
    }

    public var offset: UInt64
    public var kind: Kind
    /// Empty for `flushAll`. A slice of the received frame (copy it before keeping it).
    public var key: ByteBuffer
    /// Empty unless `upsert`.
    public var value: ByteBuffer
    public var flags: UInt32
    public var deadlineMillis: Int64
    /// The change's stamp (Protocol.md 2.6).
    public var stamp: UInt64

    public init(offset: UInt64, kind: Kind, key: ByteBuffer, value: ByteBuffer = ByteBuffer(), flags: UInt32 = 0, deadlineMillis: Int64 = 0, stamp: UInt64 = 0) {
        self.offset = offset
        self.kind = kind
        self.key = key
        self.value = value
        self.flags = flags
        self.deadlineMillis = deadlineMillis
        self.stamp = stamp
    }
}

/// What merging a node's versions into the primary did.
public struct ReconcileSummary: Sendable, Equatable {
    /// Versions received.
    public var received: UInt64
    /// Versions that were newer and now stand on the primary.
    public var applied: UInt64
    /// Keys whose two versions differed (whichever won).
    public var conflicts: UInt64

    public init(received: UInt64, applied: UInt64, conflicts: UInt64) {
        self.received = received
        self.applied = applied
        self.conflicts = conflicts
    }
}

/// A name/value pair of a status or stats answer.
public struct Property: Sendable, Equatable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}
