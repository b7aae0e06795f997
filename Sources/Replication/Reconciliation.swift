import Logging
import NIOCore
import SessionStore
import WireProtocol

/// Reconciliation (Protocol.md 2.6), both ends, without I/O: the versions a
/// node about to follow sends, and how its new primary merges them.
///
/// A node starting to follow sends its last `flush_all`, then every item and
/// tombstone, stamped above the primary's watermark
/// (`PrimaryReplication.reconcileWatermark`); the primary merges each per
/// key, the newer stamp winning (`SessionStore.merge`; a flush weighs
/// against every key, `SessionStore.mergeFlush`), and counts the conflicts:
/// keys both nodes changed after the point they last agreed on. `WireConnectionHandler` (primary) and
/// `ReplicaClient` (backup) do the I/O; the pair simulator drives the same
/// code over a simulated network.
public struct ReconcileMerge: Sendable {
    /// Versions stamped at or below this may be ones both nodes saw: meeting
    /// another version of the key there is no conflict.
    public let conflictsAbove: UInt64
    /// Versions received, merged (newer, now standing) and in conflict.
    public private(set) var received: UInt64 = 0
    public private(set) var applied: UInt64 = 0
    public private(set) var conflicts: UInt64 = 0

    /// A merge of the versions sent above `watermark` (not `.max`, which
    /// asks for none). Versions up to the watermark plus its margin are ones
    /// this node's history saw.
    public init(watermark: UInt64) {
        let (seenUpTo, overflow) = watermark.addingReportingOverflow(PrimaryReplication.stampMargin)
        conflictsAbove = watermark == 0 ? 0 : (overflow ? .max : seenUpTo)
    }

    /// What the merge did, as `reconcileDone` reports it.
    public var summary: ReconcileSummary {
        ReconcileSummary(received: received, applied: applied, conflicts: conflicts)
    }

    /// Merges versions into the store; a conflict (both nodes changed the key
    /// after the point they last agreed on) is counted and logged with its key.
    public mutating func merge(_ changes: [ReplicatedChange], into store: SessionStore, from name: String, logger: Logger) {
        for change in changes {
            received += 1
            let outcome: MergeOutcome
            switch change.kind {
            case .upsert:
                outcome = change.key.withUnsafeReadableBytes { key in
                    change.value.withUnsafeReadableBytes { value in
                        store.merge(key, value: value, flags: change.flags, deadline: Deadline(millis: change.deadlineMillis), stamp: change.stamp)
                    }
                }
            case .delete:
                outcome = change.key.withUnsafeReadableBytes { store.merge($0, value: nil, flags: 0, deadline: .never, stamp: change.stamp) }
            case .flushAll:
                // Not a conflict of one key: the items it removes were older than a flush a client asked for.
                if store.mergeFlush(stamp: change.stamp) > 0 { applied += 1 }
                continue
            case .remove:
                continue
            }
            let conflict: (local: UInt64, winner: String)?
            switch outcome {
            case .applied(let replaced):
                applied += 1
                conflict = replaced.map { ($0, name) }
            case .kept(let local):
                conflict = (local, "this node")
            case .same:
                conflict = nil
            }
            // Versions at or below `conflictsAbove` may be ones both nodes saw;
            // only a change made after it, meeting another version, is a conflict.
            if let conflict, change.stamp > conflictsAbove {
                conflicts += 1
                logger.warning("reconcile conflict", metadata: [
                    "key": "\(String(decoding: change.key.readableBytesView, as: UTF8.self))",
                    "kind": "\(change.kind == .delete ? "delete" : "write")",
                    "incoming_stamp": "\(change.stamp)", "local_stamp": "\(conflict.local)", "winner": "\(conflict.winner)",
                ])
            }
        }
    }

    // MARK: What the following node sends

    /// The version a node sends for a live item stamped above the watermark
    /// (`SessionStore.versions(inShard:newerThan:from:limit:)`); `coldValue`
    /// is its value read from the log when the item is cold (ignored if not).
    public static func version(of item: ItemSnapshot, coldValue: [UInt8]) -> ReplicatedChange {
        let key = ByteBuffer(bytes: item.storage[..<item.keyLength])
        let value = item.isCold ? ByteBuffer(bytes: coldValue) : ByteBuffer(bytes: item.storage[item.keyLength...])
        return ReplicatedChange(offset: 0, kind: .upsert, key: key, value: value, flags: item.flags, deadlineMillis: item.deadline.millis, stamp: item.cas)
    }

    /// The version a node sends for its last `flush_all`, when it is stamped
    /// above the watermark (`SessionStore.flushStamp`): without it, the
    /// primary would keep versions older than a flush this node applied.
    public static func version(ofFlush stamp: UInt64) -> ReplicatedChange {
        ReplicatedChange(offset: 0, kind: .flushAll, key: ByteBuffer(), stamp: stamp)
    }

    /// The version a node sends for a delete it remembers, stamped above the
    /// watermark (`SessionStore.tombstones(inShard:newerThan:)`).
    public static func version(ofDelete key: [UInt8], stamp: UInt64) -> ReplicatedChange {
        ReplicatedChange(offset: 0, kind: .delete, key: ByteBuffer(bytes: key), stamp: stamp)
    }
}
