import NIOCore
import SessionStore
import WireProtocol

/// The primary's end of one backup's stream, as rules without I/O: how a
/// backup's `replicate` opens it (a partial resync from the backlog, or a
/// full one from a snapshot, Protocol.md 2.2), which backlog frames go next,
/// and which acknowledgements count (2.3).
///
/// `ReplicaSession` holds one per replication connection and does the I/O
/// (the snapshot's walk of the store, writes, heartbeats); the pair simulator
/// (`PairSimulation` in the tests) drives the same type over a simulated
/// network.
public struct BackupStream: Sendable {
    /// Where the stream is.
    public enum State: Sendable, Equatable {
        /// Sending the snapshot; the stream resumes at `resumeAt` once it is done.
        case snapshotting(resumeAt: UInt64)
        /// Sending the stream; `next` is the first offset not yet sent.
        case streaming(next: UInt64)
        /// Not open, or closed.
        case closed
    }

    /// How the stream opened: what to send first.
    public enum Opening: Sendable, Equatable {
        /// `partialResync(replicationID, offset)`, then the backlog's frames
        /// after `offset`. `resumption` says from which history.
        case partial(replicationID: ReplicationID, offset: UInt64, resumption: PrimaryReplication.Resumption)
        /// `fullResync`, a snapshot of the store, `snapshotEnd`, then the
        /// backlog's frames after the resync's offset.
        case full(FullResync, reason: String)
    }

    /// What to send next on a streaming connection.
    public enum Pending: Sendable {
        /// Nothing new (or not streaming).
        case nothing
        /// These backlog frames, in order; the stream moved past them.
        case frames([ByteBuffer])
        /// The backlog no longer holds `offset`: the backup must resync.
        case overflow(UInt64)
    }

    /// What an acknowledgement from the backup did.
    public enum Acknowledgement: Sendable, Equatable {
        /// It counts: writes up to `offset` are on the backup.
        case accepted(UInt64)
        /// The stream is not open: it means nothing.
        case ignored
        /// It claims what was never sent, or goes back: either would make
        /// writes count as replicated that are not (or shows a backup that
        /// lost track of the stream), so the connection is closed.
        case violation(String)
    }

    public let primary: PrimaryReplication
    public private(set) var state: State = .closed
    /// The lowest offset the backup may acknowledge next: where its resync
    /// started, then its last acknowledgement. Acknowledgements never go back.
    public private(set) var acknowledgedFloor: UInt64 = 0

    public init(primary: PrimaryReplication) {
        self.primary = primary
    }

    /// A backup asked to `replicate` from `request`'s position on
    /// `connection`, which replaces any connection the primary had to it.
    /// Decides between a partial and a full resync (and counts it). For a
    /// partial one the caller then tells the primary the position is
    /// acknowledged (the backup's request states what it has applied),
    /// after this returns, as for `acknowledge`. `continuingHistories`: the
    /// backup's wire version (3 on) adopts this node's replication ID when it
    /// resumes from the previous history.
    public mutating func open(
        for request: Replicate, on connection: any BackupConnection, backupName: String, continuingHistories: Bool
    ) -> Opening {
        // Before deciding, so that every change after the snapshot's offset is kept.
        primary.attach(connection, backupName: backupName)
        primary.feed.pump()
        let resumption = primary.resumption(for: request, continuingHistories: continuingHistories)
        primary.countResync(resumption)
        switch resumption {
        case .partial, .partialAfterPromotion:
            state = .streaming(next: request.offset &+ 1)
            acknowledgedFloor = request.offset
            // Always this node's ID: a backup coming from the previous history adopts it.
            return .partial(replicationID: primary.replicationID, offset: request.offset, resumption: resumption)
        case .full(let reason):
            let offset = primary.offset
            let statistics = primary.store.statistics()
            state = .snapshotting(resumeAt: offset + 1)
            acknowledgedFloor = offset
            return .full(
                FullResync(
                    replicationID: primary.replicationID, offset: offset,
                    estimatedItems: UInt64(statistics.currentItems), estimatedBytes: UInt64(statistics.bytes)
                ),
                reason: reason
            )
        }
    }

    /// Whether the stream can still resume after a snapshot taken at
    /// `offset` (a `FullResync`'s): the backlog must hold every change after
    /// it. Checked as the snapshot is sent; if not, the backup must resync.
    public static func snapshotCanResume(after offset: UInt64, on primary: PrimaryReplication) -> Bool {
        primary.backlog.covers(offset &+ 1)
    }

    /// The snapshot and `snapshotEnd` were sent: the stream follows.
    public mutating func snapshotSent() {
        guard case .snapshotting(let resumeAt) = state else { return }
        state = .streaming(next: resumeAt)
    }

    /// The backlog frames from the first offset not yet sent, counted as
    /// sent (a frame may start before it: the backup skips offsets it has).
    public mutating func pending() -> Pending {
        guard case .streaming(let next) = state else { return .nothing }
        guard let (frames, end) = primary.backlog.frames(from: next) else { return .overflow(next) }
        guard !frames.isEmpty else { return .nothing }
        state = .streaming(next: end + 1)
        return .frames(frames)
    }

    /// The last offset sent: the snapshot's position while it is sent (the
    /// backup acknowledges it after `snapshotEnd`, which may arrive before
    /// this side moves on to the stream), then the stream's. nil once closed.
    public var sentThrough: UInt64? {
        switch state {
        case .snapshotting(let resumeAt): return resumeAt - 1
        case .streaming(let next): return next - 1
        case .closed: return nil
        }
    }

    /// Takes the backup's `ack(offset)`.
    public mutating func acknowledge(_ offset: UInt64) -> Acknowledgement {
        guard let sentThrough else { return .ignored }
        guard offset <= sentThrough else {
            return .violation("ack of offset \(offset) beyond the last offset sent, \(sentThrough)")
        }
        guard offset >= acknowledgedFloor else {
            return .violation("ack of offset \(offset) goes back from \(acknowledgedFloor)")
        }
        acknowledgedFloor = offset
        // The caller tells the primary (`primary.acknowledged`) once this
        // returns: that answers writes waiting for the backup, whose
        // callbacks may close this very connection, and so reach the stream
        // again while it would still be being changed here.
        return .accepted(offset)
    }

    /// Nothing more is sent or taken (a protocol violation, a failure).
    public mutating func close() {
        state = .closed
    }

    /// The connection closed. The caller then detaches it from the primary
    /// (`primary.detach`), so writes waiting for it are answered: outside
    /// this change, since their callbacks may close the connection again and
    /// so reach the stream while it would still be being changed here.
    public mutating func closed() {
        state = .closed
    }
}
