import Logging
import NIOCore
import SessionStore
import Synchronization
import WireProtocol

/// A primary's side of replication: its history (replication ID), the
/// backlog, the connected backup's session, and whether writes wait for the
/// backup (sync) or not.
public final class PrimaryReplication: Sendable {
    /// Where replication stands, as `stats` reports it.
    public enum State: String, Sendable {
        /// No backup connected: writes do not wait.
        case noBackup = "async_no_backup"
        /// A backup is being brought up to date (snapshot or catching up).
        case resyncing
        /// The backup acknowledges every write before it is answered.
        case sync
        /// A sync wait timed out: writes do not wait until the backup catches up.
        case degraded = "degraded_async"
        /// `--replication async`.
        case async
    }

    struct Shared {
        var session: ReplicaSession?
        var state: State
        var caughtUpAt: Int64
        var fullResyncs: UInt64 = 0
        var partialResyncs: UInt64 = 0
        var syncTimeouts: UInt64 = 0
        var degradations: UInt64 = 0
        var backupName = ""
    }

    public let replicationID: ReplicationID
    public let configuration: ReplicationConfiguration
    let store: SessionStore
    let feed: ChangeFeed
    let backlog: Backlog
    let logger: Logger
    /// The backup's acknowledged offsets; sync writes wait here.
    let acknowledgements = OffsetWaiters()
    private let shared: Mutex<Shared>
    /// The history this node's data came from before it led (the primary it
    /// followed, or its own before a restart) and the highest stamp it held
    /// then: a node that comes back from that history has to send only what
    /// is stamped above it.
    public let inherited: (replicationID: ReplicationID, stamp: UInt64)?
    private let feedToken: Mutex<Int?> = Mutex(nil)

    /// Stamps of one history are handed out by several shards, so one
    /// written after another may be this much lower (a shard's counter runs
    /// ahead of the clock only in bursts over 1,024 writes per millisecond).
    public static let stampMargin = HybridTimestamp.floor(millis: 2_000)

    public init(
        store: SessionStore, feed: ChangeFeed, configuration: ReplicationConfiguration, logger: Logger,
        inherited: (replicationID: ReplicationID, stamp: UInt64)? = nil
    ) {
        self.inherited = inherited
        self.replicationID = ReplicationID.random()
        self.configuration = configuration
        self.store = store
        self.feed = feed
        self.backlog = Backlog(capacity: configuration.backlogSize)
        self.logger = logger
        self.shared = Mutex(Shared(state: .noBackup, caughtUpAt: store.now()))
        backlog.reset(end: feed.lastReleased)
        let backlog = self.backlog
        let token = feed.subscribe { [weak self] batch in
            backlog.append(batch)
            self?.streamAdvanced()
        }
        feedToken.withLock { $0 = token }
    }

    /// Ends this node's time as primary: the backup's session is closed,
    /// waiting writes are answered, and the stream no longer fills the backlog.
    public func shutdown(reason: String) {
        if let token = feedToken.withLock({ $0.take() }) { feed.unsubscribe(token) }
        let session = shared.withLock { shared -> ReplicaSession? in
            let session = shared.session
            shared.session = nil
            shared.state = .noBackup
            return session
        }
        session?.close(reason: reason)
        acknowledgements.releaseAll(failing: false)
    }

    /// Which of its versions a node coming back from `position` must send for
    /// merging: those stamped above the returned watermark (`.max`: none).
    public func reconcileWatermark(for position: Replicate) -> UInt64 {
        if position.replicationID == replicationID, position.offset <= offset {
            // A prefix of this node's own history: everything it has is here.
            return .max
        }
        if let inherited, inherited.replicationID == position.replicationID {
            return inherited.stamp > Self.stampMargin ? inherited.stamp - Self.stampMargin : 0
        }
        // Unrelated histories (or a node mid-snapshot): everything it holds may be news.
        return 0
    }

    /// Whether a backup is connected.
    public var hasBackup: Bool { shared.withLock { $0.session != nil } }

    /// The offset of the newest released change.
    public var offset: UInt64 { feed.lastReleased }

    // MARK: Client writes

    /// Called after a connection ran writes: pushes them towards the backup
    /// and, in sync mode, returns a future to hold the replies on until the
    /// backup acknowledged them (or the sync timeout passed). nil: answer now.
    public func afterWrites(on eventLoop: any EventLoop) -> EventLoopFuture<Void>? {
        let state = shared.withLock { $0.state }
        // With no backup, the node's periodic pump keeps the backlog fed; a
        // connected backup gets the writes at once.
        guard state != .noBackup else { return nil }
        feed.pump()
        guard configuration.mode == .sync, state == .sync else { return nil }
        let target = store.lastSequence
        guard target > acknowledgements.reached else { return nil }
        return acknowledgements.wait(for: target, on: eventLoop, timeout: configuration.syncTimeout)
            .flatMapError { [self] error in
                if case OffsetWaiters.Failure.timedOut = error { degrade(waitingFor: target) }
                // Either way the client gets its reply: the write is done on the primary.
                return eventLoop.makeSucceededVoidFuture()
            }
    }

    private func degrade(waitingFor target: UInt64) {
        let changed = shared.withLock { shared -> Bool in
            shared.syncTimeouts += 1
            guard shared.state == .sync else { return false }
            shared.state = .degraded
            shared.degradations += 1
            return true
        }
        if changed {
            logger.warning("backup did not acknowledge in time; answering writes without waiting until it catches up", metadata: [
                "sync_timeout_ms": "\(configuration.syncTimeout.nanoseconds / 1_000_000)",
                "waiting_for": "\(target)", "acknowledged": "\(acknowledgements.reached)",
            ])
            // Everyone else waiting would time out the same way: answer them now.
            acknowledgements.releaseAll(failing: false)
        }
    }

    // MARK: Sessions

    /// A backup asked to replicate on `channel`: the new session replaces any previous one.
    func attach(_ session: ReplicaSession, backupName: String) {
        // Before the session decides between a partial and a full resync, so
        // that every change after its snapshot's offset is kept.
        backlog.startRecording()
        let previous = shared.withLock { shared -> ReplicaSession? in
            let previous = shared.session
            shared.session = session
            shared.state = configuration.mode == .sync ? .resyncing : .async
            shared.backupName = backupName
            return previous
        }
        previous?.close(reason: "replaced by a new connection from the backup")
    }

    func detach(_ session: ReplicaSession) {
        let detached = shared.withLock { shared -> Bool in
            guard shared.session === session else { return false }
            shared.session = nil
            shared.state = .noBackup
            return true
        }
        if detached {
            // Nobody will acknowledge: writes waiting for the backup are answered.
            acknowledgements.releaseAll(failing: false)
            logger.warning("backup disconnected; writes no longer wait for it")
        }
    }

    func countResync(full: Bool) {
        shared.withLock { shared in
            if full { shared.fullResyncs += 1 } else { shared.partialResyncs += 1 }
        }
    }

    /// The backup acknowledged `offset`.
    func acknowledged(_ offset: UInt64) {
        acknowledgements.reach(offset)
        guard offset >= feed.lastReleased else { return }
        let now = store.now()
        let resumed = shared.withLock { shared -> State? in
            shared.caughtUpAt = now
            switch shared.state {
            case .resyncing, .degraded:
                guard configuration.mode == .sync else { return nil }
                let was = shared.state
                shared.state = .sync
                return was
            case .noBackup, .sync, .async:
                return nil
            }
        }
        if let resumed {
            logger.info("backup caught up; writes wait for its acknowledgement again", metadata: ["was": "\(resumed.rawValue)", "offset": "\(offset)"])
        }
    }

    private func streamAdvanced() {
        shared.withLock { $0.session }?.notify()
    }

    // MARK: Statistics

    public func statistics() -> [(String, String)] {
        let now = store.now()
        let offset = feed.lastReleased
        let acknowledged = acknowledgements.reached
        let extent = backlog.extent
        let shared = self.shared.withLock { $0 }
        let lagChanges = shared.session == nil ? 0 : (offset > acknowledged ? offset - acknowledged : 0)
        let lagMillis = lagChanges > 0 ? max(0, now - shared.caughtUpAt) : 0
        return [
            ("role", "primary"),
            ("replication_id", replicationID.description),
            ("replication_offset", "\(offset)"),
            ("replication_mode", configuration.mode.rawValue),
            ("replication_state", shared.state.rawValue),
            ("link_state", shared.session == nil ? "down" : "up"),
            ("peer_name", shared.backupName.isEmpty ? "none" : shared.backupName),
            ("peer_offset", "\(acknowledged)"),
            ("peer_lag_changes", "\(lagChanges)"),
            ("peer_lag_ms", "\(lagMillis)"),
            ("full_resyncs", "\(shared.fullResyncs)"),
            ("partial_resyncs", "\(shared.partialResyncs)"),
            ("sync_timeouts", "\(shared.syncTimeouts)"),
            ("sync_degradations", "\(shared.degradations)"),
            ("history_inherited", inherited.map { "\($0.replicationID)" } ?? "none"),
            ("backlog_first_offset", "\(extent.first)"),
            ("backlog_bytes", "\(extent.bytes)"),
            ("backlog_capacity", "\(backlog.capacity)"),
        ]
    }
}
