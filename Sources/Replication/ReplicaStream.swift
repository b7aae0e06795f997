import NIOCore
import SessionStore
import WireProtocol

/// A backup's copy of the history it follows, as rules without I/O: where its
/// data stands in the primary's history, and what each of the primary's
/// resync and stream messages does to the store, to that position and to the
/// backlog the backup keeps of the stream as received (which it serves once
/// promoted, Protocol.md 2.2).
///
/// `ReplicaClient` holds one for as long as the node follows, across
/// reconnections, and feeds it what its connection receives; the pair
/// simulator (`PairSimulation` in the tests) drives the same type over a
/// simulated network.
public struct ReplicaStream: Sendable {
    /// Where the backup's data stands in the primary's history.
    public typealias Position = ReplicaClient.Position

    /// The store the stream is applied to (and so, through the change feed,
    /// persisted like any write).
    public let store: SessionStore
    /// The stream as received, from the position the node started from.
    public let backlog: Backlog
    /// Where the data stands. While a snapshot is being received the data
    /// matches no position, so it reads as none.
    public private(set) var position: Position
    /// Whether the data is exactly the history up to `position`, with no
    /// later change of it: true after a full resync and the stream that
    /// follows it. A position recovered from storage may be behind the data
    /// (a commit can hold changes after the offset it stores), a stepping-down
    /// primary's store may hold changes it never released, and a partial
    /// resync from either keeps that doubt. Only an exact position may be
    /// continued by this node's own stream once it is promoted.
    public private(set) var exact: Bool
    /// Set by `stop()`: nothing changes the data or the position any more, so
    /// the position read after it is exactly where the data stands.
    public private(set) var stopped = false
    /// The highest stamp among the changes and snapshot items applied: where
    /// the primary's clock stood at least, at the last change received.
    public private(set) var highestStamp: UInt64 = 0

    /// Starts following from `position` (`exact`: see `exact`).
    public init(store: SessionStore, position: Position, exact: Bool, backlogCapacity: Int) {
        self.store = store
        self.position = position
        self.exact = exact
        self.backlog = Backlog(capacity: backlogCapacity)
        backlog.startRecording()
        backlog.reset(end: position.offset)
    }

    /// Where a node that starts following stands, from what it ran before:
    /// a primary stepping down continues from the end of its own stream, but
    /// its store may hold changes it never released (beyond that offset), so
    /// the position is not exact; a node that has not followed anyone yet
    /// starts from what it recovered from storage, which may be behind the
    /// data. (A backup that follows again keeps its stream's position.)
    public static func start(steppingDownFrom primary: PrimaryReplication?, recovered: Position) -> (position: Position, exact: Bool) {
        guard let primary else { return (recovered, false) }
        return (Position(replicationID: primary.replicationID, offset: primary.offset), false)
    }

    /// Stops applying: the node is promoted or follows another way.
    public mutating func stop() {
        stopped = true
    }

    /// What a backup about to be promoted hands over to the primary it
    /// becomes (call after `stop()`).
    public func handOver() -> Handover {
        precondition(stopped, "handOver() before stop()")
        return Handover(position: position, exact: exact, backlog: backlog, stampCeiling: store.stampCeiling())
    }

    // MARK: Resync

    /// `fullResync` arrived: the snapshot replaces the data, so it is dropped
    /// (not as a client's flush_all: no stamp says "deleted"), and until the
    /// snapshot ends it matches no position. False once stopped (nothing done).
    public mutating func startFullResync() -> Bool {
        guard !stopped else { return false }
        position = Position(replicationID: .none, offset: 0)
        exact = false
        backlog.reset(end: 0)
        store.flushAll(stamp: 0)
        return true
    }

    /// Applies snapshot items (the position stays none until the snapshot ends).
    public mutating func applySnapshot(_ items: [ReplicatedItem]) {
        guard !stopped else { return }
        for item in items {
            highestStamp = max(highestStamp, item.stamp)
            item.key.withUnsafeReadableBytes { key in
                item.value.withUnsafeReadableBytes { value in
                    _ = store.applyUpsert(key, value: value, flags: item.flags, deadline: Deadline(millis: item.deadlineMillis), cas: item.stamp)
                }
            }
        }
    }

    /// `snapshotEnd`: the data is now exactly the primary's history up to
    /// `offset`, and the stream this backlog keeps starts after it.
    public mutating func finishFullResync(replicationID: ReplicationID, offset: UInt64) {
        guard !stopped else { return }
        position = Position(replicationID: replicationID, offset: offset)
        exact = true
        backlog.reset(end: offset)
    }

    /// How a `partialResync` was taken.
    public enum PartialResync: Sendable, Equatable {
        /// The stream goes on in the history this node follows.
        case sameHistory
        /// The primary continues the history this node followed (it was
        /// promoted from it): the offsets go on, and the data is now a
        /// position in the primary's history, whose ID it adopts.
        case adopted(previous: ReplicationID)
    }

    /// The primary resumes the stream after `offset`. nil: this node's data
    /// is not at `offset` (or it has no position, or it stopped), and the
    /// offer cannot be taken.
    public mutating func partialResync(replicationID: ReplicationID, offset: UInt64) -> PartialResync? {
        guard !stopped, position.offset == offset, position.replicationID != .none else { return nil }
        let was = position.replicationID
        position.replicationID = replicationID
        if backlog.extent.last != offset { backlog.reset(end: offset) }
        return was == replicationID ? .sameHistory : .adopted(previous: was)
    }

    // MARK: The stream

    /// Applies a frame of changes (`body`: the frame's, kept in the backlog):
    /// changes at or before the position are ones the data has (a frame may
    /// start before it). Returns the offset the data is at now, which is what
    /// the backup acknowledges.
    public mutating func apply(_ changes: [ReplicatedChange], body: ByteBuffer) -> UInt64 {
        guard !stopped else { return position.offset }
        var offset = position.offset
        for change in changes where change.offset > offset {
            highestStamp = max(highestStamp, change.stamp)
            switch change.kind {
            case .upsert:
                change.key.withUnsafeReadableBytes { key in
                    change.value.withUnsafeReadableBytes { value in
                        _ = store.applyUpsert(key, value: value, flags: change.flags, deadline: Deadline(millis: change.deadlineMillis), cas: change.stamp)
                    }
                }
            case .remove:
                change.key.withUnsafeReadableBytes { _ = store.applyRemove($0) }
            case .delete:
                change.key.withUnsafeReadableBytes { _ = store.applyDelete($0, stamp: change.stamp) }
            case .flushAll:
                store.flushAll(stamp: change.stamp)
            }
            offset = change.offset
        }
        position.offset = offset
        if let first = changes.first?.offset, let last = changes.last?.offset {
            backlog.appendReceived(body: body, first: first, last: last)
        }
        return offset
    }
}

/// What a backup about to be promoted hands to the primary it becomes: the
/// history its data came from and the highest stamp it held then (a node
/// coming back from that history sends only what is stamped above it,
/// `PrimaryReplication.reconcileWatermark`), and the history its stream
/// continues, if any.
public struct Handover: Sendable {
    public var inherited: (replicationID: ReplicationID, stamp: UInt64)
    /// Only a history whose position is exact (`ReplicaStream.exact`) is
    /// continued: an offset recovered from storage may be behind the data,
    /// and a node resuming from this one's stream would never get the
    /// changes in between.
    public var continued: PrimaryReplication.PreviousHistory?

    public init(position: ReplicaStream.Position, exact: Bool, backlog: Backlog, stampCeiling: UInt64) {
        inherited = (position.replicationID, stampCeiling)
        continued = exact ? PrimaryReplication.PreviousHistory(replicationID: position.replicationID, forkOffset: position.offset, backlog: backlog) : nil
    }

    /// A node that leads without having followed since it started: its data
    /// came from the history it recovered from storage, and its stream
    /// continues none (the recovered offset may be behind the data).
    public init(recovered position: ReplicaStream.Position, stampCeiling: UInt64) {
        inherited = (position.replicationID, stampCeiling)
        continued = nil
    }

    /// The floor of the stamps a promoted node hands out: the old primary may
    /// have written until it went silent, and its clock runs as fast as
    /// this node's, so its stamps stayed below where its clock stood at the
    /// last contact (`peerStamp`) plus the silence since. Writes from here on
    /// order after every one of them, however far its clock is ahead. (From
    /// the peer's clock, not this node's: bumps do not pile up when the nodes
    /// change roles again and again.)
    public static func stampFloor(peerStamp: UInt64, silenceMillis: Int64) -> UInt64 {
        peerStamp &+ HybridTimestamp.floor(millis: silenceMillis)
    }
}
