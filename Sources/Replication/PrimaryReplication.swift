import Logging
import NIOCore
import SessionStore
import Synchronization
import WireProtocol

/// The connection a backup replicates on, as its primary sees it
/// (`ReplicaSession`, or a simulated one in the tests).
public protocol BackupConnection: AnyObject, Sendable {
    /// New changes were released to the backlog (called from any thread).
    func notify()
    /// Closes the connection (from any thread); `ReplicaSession.closed` follows.
    func close(reason: String)
}

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
        var session: (any BackupConnection)?
        var state: State
        var caughtUpAt: Int64
        var fullResyncs: UInt64 = 0
        var partialResyncs: UInt64 = 0
        /// Partial resyncs of a backup that asked from the previous history.
        var partialResyncsAfterPromotion: UInt64 = 0
        var syncTimeouts: UInt64 = 0
        var degradations: UInt64 = 0
        var backupName = ""
    }

    /// The history this node followed until it was promoted, and the last
    /// offset of it that its data holds: its own stream goes on from there
    /// (Protocol.md 2.2).
    public struct PreviousHistory: Sendable {
        public var replicationID: ReplicationID
        /// Exactly where this node's data stood in that history when it took
        /// over (the last offset it applied): its stream's first offset is
        /// one more.
        public var forkOffset: UInt64
        /// That history's frames up to `forkOffset`, as this node received
        /// them while following (nil: none kept).
        public var backlog: Backlog?

        public init(replicationID: ReplicationID, forkOffset: UInt64, backlog: Backlog?) {
            self.replicationID = replicationID
            self.forkOffset = forkOffset
            self.backlog = backlog
        }
    }

    /// How a backup asking to `replicate` from a position is served.
    public enum Resumption: Sendable, Equatable {
        /// From the backlog: the position is in this node's history.
        case partial
        /// From the backlog, the position being in the previous history at
        /// or before the fork: the backup adopts this node's replication ID.
        case partialAfterPromotion
        /// A snapshot: the position is not in this node's history, or the
        /// backlog no longer holds what follows it.
        case full(reason: String)
    }

    public let replicationID: ReplicationID
    /// The history continued by this node's stream, if it continues one.
    public let previous: (replicationID: ReplicationID, forkOffset: UInt64)?
    /// Added (wrapping) to a store sequence number to give its stream offset.
    let offsetShift: UInt64
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
    /// Whether a pump asked for by `afterWrites` has yet to run.
    private let pumpScheduled = Atomic<Bool>(false)

    /// Stamps of one history are handed out by several shards, so one
    /// written after another may be this much lower (a shard's counter runs
    /// ahead of the clock only in bursts over 1,024 writes per millisecond).
    public static let stampMargin = HybridTimestamp.floor(millis: 2_000)

    public init(
        store: SessionStore, feed: ChangeFeed, configuration: ReplicationConfiguration, logger: Logger,
        inherited: (replicationID: ReplicationID, stamp: UInt64)? = nil, previous: PreviousHistory? = nil
    ) {
        self.inherited = inherited
        self.replicationID = ReplicationID.random()
        self.configuration = configuration
        self.store = store
        self.feed = feed
        self.logger = logger
        self.shared = Mutex(Shared(state: .noBackup, caughtUpAt: store.now()))
        // Everything the store recorded so far is part of where the data
        // stands at the fork: the new stream starts after it.
        feed.pump()
        let released = feed.lastReleased
        if let previous, previous.replicationID != .none {
            self.previous = (previous.replicationID, previous.forkOffset)
            self.offsetShift = previous.forkOffset &- released
            if let kept = previous.backlog, kept.extent.last == previous.forkOffset {
                self.backlog = kept
            } else {
                self.backlog = Backlog(capacity: configuration.backlogSize)
                backlog.reset(end: previous.forkOffset)
            }
        } else {
            self.previous = nil
            self.offsetShift = 0
            self.backlog = Backlog(capacity: configuration.backlogSize)
            backlog.reset(end: released)
        }
        let backlog = self.backlog
        let shift = offsetShift
        let token = feed.subscribe { [weak self] batch in
            backlog.append(batch, offsetShift: shift)
            self?.streamAdvanced()
        }
        feedToken.withLock { $0 = token }
    }

    /// Ends this node's time as primary: the backup's session is closed,
    /// waiting writes are answered, and the stream no longer fills the backlog.
    public func shutdown(reason: String) {
        if let token = feedToken.withLock({ $0.take() }) { feed.unsubscribe(token) }
        let session = shared.withLock { shared -> (any BackupConnection)? in
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

    /// How a backup asking from `position` is served (Protocol.md 2.2). A
    /// position is in this node's history when it names the current one at
    /// or before its end, or the previous one at or before the fork: past the
    /// fork the asking node took changes this one never had, the histories
    /// diverged, and only a snapshot (after reconciliation) makes the two
    /// the same. `continuingHistories`: the backup's wire version lets it
    /// adopt this node's replication ID in a `partialResync`.
    public func resumption(for position: Replicate, continuingHistories: Bool) -> Resumption {
        let next = position.offset &+ 1
        let inHistory: Resumption?
        if position.replicationID == replicationID, position.offset <= offset {
            inHistory = .partial
        } else if let previous, position.replicationID == previous.replicationID, position.offset <= previous.forkOffset {
            guard continuingHistories else {
                return .full(reason: "the backup follows the history this node continues, but its wire version cannot adopt a new replication id")
            }
            inHistory = .partialAfterPromotion
        } else {
            inHistory = nil
        }
        guard let inHistory else {
            if position.replicationID == .none { return .full(reason: "backup is empty") }
            if position.replicationID == replicationID { return .full(reason: "backup is ahead of this node's stream") }
            if let previous, position.replicationID == previous.replicationID {
                return .full(reason: "backup went past the fork at offset \(previous.forkOffset) of the previous history: the histories diverged")
            }
            return .full(reason: "backup has another history")
        }
        guard backlog.covers(next) else { return .full(reason: "backlog no longer holds offset \(next)") }
        return inHistory
    }

    /// Whether a backup is connected.
    public var hasBackup: Bool { shared.withLock { $0.session != nil } }

    /// The offset of the newest released change.
    public var offset: UInt64 { feed.lastReleased &+ offsetShift }

    /// The stream offset of the store's change numbered `sequence`.
    public func offset(ofSequence sequence: UInt64) -> UInt64 { sequence &+ offsetShift }

    // MARK: Client writes

    /// Called after a connection ran writes: pushes them towards the backup
    /// and, in sync mode, returns a future to hold the replies on until the
    /// backup acknowledged them (or the sync timeout passed). nil: answer now.
    public func afterWrites(on eventLoop: any EventLoop) -> EventLoopFuture<Void>? {
        let state = shared.withLock { $0.state }
        // With no backup, the node's periodic pump keeps the backlog fed; a
        // connected backup gets the writes at the end of this loop's pass.
        guard state != .noBackup else { return nil }
        schedulePump(on: eventLoop)
        guard configuration.mode == .sync, state == .sync else { return nil }
        let target = offset(ofSequence: store.lastSequence)
        guard target > acknowledgements.reached else { return nil }
        return acknowledgements.wait(for: target, on: eventLoop, timeout: configuration.syncTimeout)
            .flatMapError { [self] error in
                if case OffsetWaiters.Failure.timedOut = error { degrade(waitingFor: target) }
                // Either way the client gets its reply: the write is done on the primary.
                return eventLoop.makeSucceededVoidFuture()
            }
    }

    /// Pumps the feed once this pass of `eventLoop` is over: the writes of
    /// every connection it served go to the backlog (and the backup) in one
    /// pump, one push and one frame write, where a pump per connection took
    /// every shard's lock for each write.
    private func schedulePump(on eventLoop: any EventLoop) {
        guard !pumpScheduled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        eventLoop.execute { [self] in
            // Cleared first: writes recorded from here on need another pump.
            pumpScheduled.store(false, ordering: .releasing)
            feed.pump()
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

    /// A backup asked to replicate on `session`: it replaces any previous one.
    func attach(_ session: any BackupConnection, backupName: String) {
        // Before the session decides between a partial and a full resync, so
        // that every change after its snapshot's offset is kept.
        backlog.startRecording()
        let previous = shared.withLock { shared -> (any BackupConnection)? in
            let previous = shared.session
            shared.session = session
            shared.state = configuration.mode == .sync ? .resyncing : .async
            shared.backupName = backupName
            return previous
        }
        previous?.close(reason: "replaced by a new connection from the backup")
    }

    func detach(_ session: any BackupConnection) {
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

    func countResync(_ resumption: Resumption) {
        shared.withLock { shared in
            switch resumption {
            case .full: shared.fullResyncs += 1
            case .partial: shared.partialResyncs += 1
            case .partialAfterPromotion:
                shared.partialResyncs += 1
                shared.partialResyncsAfterPromotion += 1
            }
        }
    }

    /// The backup acknowledged `offset`.
    func acknowledged(_ offset: UInt64) {
        acknowledgements.reach(offset)
        guard offset >= self.offset else { return }
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
        let offset = self.offset
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
            ("partial_resyncs_after_promotion", "\(shared.partialResyncsAfterPromotion)"),
            ("sync_timeouts", "\(shared.syncTimeouts)"),
            ("sync_degradations", "\(shared.degradations)"),
            ("history_inherited", inherited.map { "\($0.replicationID)" } ?? "none"),
            ("history_previous", previous.map { "\($0.replicationID)" } ?? "none"),
            ("history_fork_offset", previous.map { "\($0.forkOffset)" } ?? "0"),
            ("backlog_first_offset", "\(extent.first)"),
            ("backlog_bytes", "\(extent.bytes)"),
            ("backlog_capacity", "\(backlog.capacity)"),
        ]
    }
}
