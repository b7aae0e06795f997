import Logging
import NIOCore
import Replication
import SessionPersistence
import SessionStore
import Synchronization
import TandemTLS
import WireProtocol

/// A node's role in its pair over time, and the epoch that orders the
/// primaries: promotion (manual, automatic after `--failover-after`, or at
/// start when this node holds the newer data), stepping down when a peer
/// with a higher epoch shows up, and the comparison with the peer at start.
///
/// The rules (Protocol.md 2.6):
/// - Becoming primary raises the epoch above every epoch seen, and the epoch
///   is committed to SQLite before the node takes a write.
/// - A primary that meets a primary with a higher epoch (or the same epoch
///   and a greater name) steps down and becomes its backup; before the
///   resync it sends what it holds that the other may lack, to be merged
///   per key by stamp (`reconcile`).
/// - A node that starts with a peer does not serve until it has compared
///   its data with the peer's: the node with the newer data leads.
final class PairRole: Sendable {
    /// What the node is now.
    enum Role {
        /// Started; comparing positions with the peer before serving.
        case joining
        /// Takes writes and streams them to the backup.
        case primary(PrimaryReplication)
        /// Follows the primary, serves reads, forwards writes.
        case backup(ReplicaClient)

        var nodeRole: NodeRole {
            switch self {
            case .joining: return .joining
            case .primary: return .primary
            case .backup: return .backup
            }
        }
    }

    /// Where the node's data came from when it started.
    struct Recovered {
        var replicationID: ReplicationID
        var offset: UInt64
        var role: NodeRole?
        /// The history the data continued at its last promotion, and where.
        var previous: (replicationID: ReplicationID, forkOffset: UInt64)?
    }

    struct State {
        var role: Role = .joining
        var epoch: UInt64
        /// The highest epoch any peer was seen with.
        var peerEpoch: UInt64 = 0
        /// A role change is under way (they are serialised).
        var changing = false
        var failovers: UInt64 = 0
        var promotions: UInt64 = 0
        var lastPromotion: (millis: Int64, reason: String)?
        var reconciledChanges: UInt64 = 0
        var reconcileConflicts: UInt64 = 0
    }

    /// Why a role change did not happen.
    enum ChangeError: Error, CustomStringConvertible {
        case inProgress
        case epochNotPersisted
        case noPeer
        case peerRefused(String)

        var description: String {
            switch self {
            case .inProgress: return "a role change is already under way; retry in a moment"
            case .epochNotPersisted: return "the new epoch could not be written to storage, so this node does not take writes; check the data directory"
            case .noPeer: return "this node has no --peer to hand over to"
            case .peerRefused(let reason): return "the peer did not take over: \(reason)"
            }
        }
    }

    let configuration: PairConfiguration
    /// TLS for this node's questions to its peer, as for replication: the
    /// current contexts, so that a reload applies to the next question.
    private var peerTLS: ClientTLS? { configuration.replication.tls?.peerClient }
    let store: SessionStore
    let feed: ChangeFeed
    let persistence: Persistence?
    let group: any EventLoopGroup
    let logger: Logger
    let recovered: Recovered
    private let name = Mutex("")
    private let state: Mutex<State>
    private let timers = Mutex<[RepeatedTask]>([])
    /// When the failover timer first found the primary silent for long.
    private let suspectSince = Mutex<NIODeadline?>(nil)

    init(
        configuration: PairConfiguration, store: SessionStore, feed: ChangeFeed, persistence: Persistence?,
        group: any EventLoopGroup, logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.feed = feed
        self.persistence = persistence
        self.group = group
        self.logger = logger
        let meta = persistence?.recoveredMeta ?? [:]
        var recovered = Recovered(replicationID: .none, offset: 0, role: nil, previous: nil)
        if case .blob(let id)? = meta[ReplicationMetaKey.replicationID], id.count == 16,
            case .integer(let offset)? = meta[ReplicationMetaKey.offset]
        {
            recovered.replicationID = ReplicationID(bytes: id)
            recovered.offset = UInt64(bitPattern: offset)
        }
        if case .blob(let id)? = meta[ReplicationMetaKey.previousReplicationID], id.count == 16, ReplicationID(bytes: id) != .none,
            case .integer(let fork)? = meta[ReplicationMetaKey.forkOffset]
        {
            recovered.previous = (ReplicationID(bytes: id), UInt64(bitPattern: fork))
        }
        if case .integer(let role)? = meta[ReplicationMetaKey.role] { recovered.role = NodeRole(rawValue: UInt8(truncatingIfNeeded: role)) }
        var epoch: UInt64 = 0
        if case .integer(let stored)? = meta[ReplicationMetaKey.epoch] { epoch = UInt64(bitPattern: stored) }
        self.recovered = recovered
        self.state = Mutex(State(epoch: epoch))
    }

    /// The node's name as its peer sees it (set once the wire port is bound).
    func nodeName() -> String { name.withLock { $0 } }

    func setName(_ value: String) { name.withLock { $0 = value } }

    // MARK: Reading the role

    var primary: PrimaryReplication? {
        state.withLock { state in
            if case .primary(let primary) = state.role { return primary }
            return nil
        }
    }

    var replica: ReplicaClient? {
        state.withLock { state in
            if case .backup(let client) = state.role { return client }
            return nil
        }
    }

    var nodeRole: NodeRole { state.withLock { $0.role.nodeRole } }

    var epoch: UInt64 { state.withLock { $0.epoch } }

    /// Where the node's data stands: the position in its history, the role
    /// it was stored with, and the history the data continued at the node's
    /// last promotion.
    private struct DataPosition {
        var replicationID: ReplicationID
        var offset: UInt64
        var roleCode: UInt8
        var previous: (replicationID: ReplicationID, forkOffset: UInt64)?
    }

    private func data(of role: Role) -> DataPosition {
        var data = DataPosition(
            replicationID: recovered.replicationID, offset: recovered.offset, roleCode: recovered.role?.rawValue ?? NodeRole.joining.rawValue,
            // Kept until a promotion replaces it: a restart or a spell as a
            // backup does not make the data forget where it came from.
            previous: recovered.previous
        )
        switch role {
        case .joining:
            break
        case .primary(let primary):
            (data.replicationID, data.offset) = (primary.replicationID, primary.offset)
            data.roleCode = NodeRole.primary.rawValue
            data.previous = primary.previous ?? data.previous
        case .backup(let client):
            let followed = client.position
            (data.replicationID, data.offset) = (followed.replicationID, followed.offset)
            data.roleCode = NodeRole.backup.rawValue
        }
        return data
    }

    /// What every commit stores in the meta table: the position of the data
    /// in its history, the epoch, the role, and the history the data
    /// continued at its last promotion.
    func meta() -> [String: MetaValue] {
        let (role, epoch) = state.withLock { ($0.role, $0.epoch) }
        let data = data(of: role)
        return [
            ReplicationMetaKey.replicationID: .blob(data.replicationID.bytes),
            ReplicationMetaKey.offset: .integer(Int64(bitPattern: data.offset)),
            ReplicationMetaKey.epoch: .integer(Int64(bitPattern: epoch)),
            ReplicationMetaKey.role: .integer(Int64(data.roleCode)),
            ReplicationMetaKey.previousReplicationID: .blob((data.previous?.replicationID ?? .none).bytes),
            ReplicationMetaKey.forkOffset: .integer(Int64(bitPattern: data.previous?.forkOffset ?? 0)),
        ]
    }

    /// This node as its peer asks for it (`pairStatus`): its role now and
    /// configured, its epoch, and where its data stands.
    func status() -> PairStatus {
        let (role, epoch) = state.withLock { ($0.role, $0.epoch) }
        let data = data(of: role)
        return PairStatus(
            nodeName: nodeName(), role: role.nodeRole, configuredRole: configuration.role, epoch: epoch,
            replicationID: data.replicationID, offset: data.offset,
            previousReplicationID: data.previous?.replicationID ?? .none, forkOffset: data.previous?.forkOffset ?? 0
        )
    }

    // MARK: Changing roles

    /// Makes this node the primary (nothing happens if it is one already).
    /// Returns the epoch it leads in.
    @discardableResult
    func becomePrimary(reason: String, automatic: Bool) async throws -> UInt64 {
        let previous = try state.withLock { state -> Role? in
            if case .primary = state.role { return nil }
            guard !state.changing else { throw ChangeError.inProgress }
            state.changing = true
            return state.role
        }
        guard let previous else { return epoch }
        let inherited: (replicationID: ReplicationID, stamp: UInt64)
        // The history this node's stream continues: only one whose position
        // is exact (`ReplicaClient`'s `exact`). An offset recovered from
        // storage is not: a commit can hold changes after the offset it
        // stores, and a node resuming from this one's stream would never get
        // them.
        var continued: PrimaryReplication.PreviousHistory?
        switch previous {
        case .backup(let client):
            // No more changes from the old primary; writes parked meanwhile wait for the outcome.
            client.stop(parkedFailure: nil)
            let (position, exact, backlog) = client.handOver()
            inherited = (position.replicationID, store.stampCeiling())
            if exact {
                continued = PrimaryReplication.PreviousHistory(replicationID: position.replicationID, forkOffset: position.offset, backlog: backlog)
            }
            // The old primary may have written until it went silent; its clock
            // runs as fast as ours, so its stamps stayed below where its clock
            // stood at the last contact plus the silence. Writes from here on
            // order after every one of them, however far its clock is ahead.
            // (From the peer's clock, not ours: bumps do not pile up when
            // the nodes change roles again and again.)
            store.raiseCas(above: client.peerStamp &+ HybridTimestamp.floor(millis: client.silenceMillis))
        case .joining:
            inherited = (recovered.replicationID, store.stampCeiling())
        case .primary:
            preconditionFailure("handled above")
        }
        let (oldEpoch, newEpoch) = state.withLock { state -> (UInt64, UInt64) in
            let old = state.epoch
            state.epoch = max(state.epoch, state.peerEpoch) + 1
            return (old, state.epoch)
        }
        if let persistence, await !persistence.commitNow() {
            state.withLock {
                $0.epoch = oldEpoch
                $0.changing = false
            }
            logger.error("promotion abandoned: the new epoch could not be stored", metadata: ["epoch": "\(newEpoch)", "reason": "\(reason)"])
            if case .backup = previous {
                state.withLock { $0.changing = true }
                follow(from: previous, reason: "promotion failed")
            }
            throw ChangeError.epochNotPersisted
        }
        let primary = PrimaryReplication(
            store: store, feed: feed, configuration: configuration.replication, logger: logger, inherited: inherited, previous: continued
        )
        let now = store.now()
        state.withLock { state in
            state.role = .primary(primary)
            state.changing = false
            state.promotions += 1
            if automatic { state.failovers += 1 }
            state.lastPromotion = (now, reason)
        }
        if case .backup(let client) = previous {
            // Writes that waited for a primary run here now.
            client.failParked(.roleChanged)
        }
        logger.notice("this node is now the primary", metadata: [
            "epoch": "\(newEpoch)", "reason": "\(reason)", "replication_id": "\(primary.replicationID)",
            "continues": "\(primary.previous.map { "\($0.replicationID) after offset \($0.forkOffset)" } ?? "no history")",
        ])
        return newEpoch
    }

    /// Steps down (or, while joining, settles) as the backup of the peer.
    func becomeBackup(reason: String, peerEpoch: UInt64) {
        state.withLock { $0.peerEpoch = max($0.peerEpoch, peerEpoch) }
        becomeBackupNow(reason: reason)
    }

    private func becomeBackupNow(reason: String) {
        let previous = state.withLock { state -> Role? in
            if case .backup = state.role { return nil }
            guard !state.changing else { return nil }
            state.changing = true
            state.epoch = max(state.epoch, state.peerEpoch)
            return state.role
        }
        guard let previous else { return }
        follow(from: previous, reason: reason)
    }

    /// Starts following the peer; ends the role change begun by the caller.
    private func follow(from previous: Role, reason: String) {
        guard let peer = configuration.peer else {
            state.withLock { $0.changing = false }
            logger.error("cannot become a backup without --peer", metadata: ["reason": "\(reason)"])
            return
        }
        var position = ReplicaClient.Position(replicationID: recovered.replicationID, offset: recovered.offset)
        // A stepping-down primary's store may hold changes it never released
        // (so beyond its offset); a recovered position may be behind the data.
        var exact = false
        switch previous {
        case .primary(let primary):
            position = ReplicaClient.Position(replicationID: primary.replicationID, offset: primary.offset)
            primary.shutdown(reason: "this node steps down: \(reason)")
        case .backup(let client):
            position = client.position
            exact = client.handOver().exact
        case .joining:
            break
        }
        let client = ReplicaClient(
            peerHost: peer.host, peerPort: peer.port, store: store, position: position,
            configuration: configuration.replication, group: group, logger: logger,
            epoch: { [weak self] in self?.epoch ?? 0 }, positionIsExact: exact
        )
        state.withLock { state in
            state.role = .backup(client)
            state.changing = false
        }
        if case .backup(let old) = previous { old.failParked(.primaryUnavailable) }
        if case .primary = previous {
            logger.warning("this node steps down and follows its peer", metadata: ["reason": "\(reason)", "epoch": "\(epoch)"])
        } else {
            logger.info("following the primary", metadata: ["peer": "\(peer.host):\(peer.port)", "reason": "\(reason)"])
        }
        client.start()
    }

    /// A peer said hello with its epoch: a primary meeting a higher one steps down.
    func peerSaidHello(epoch peerEpoch: UInt64, name: String) {
        let stepDown = state.withLock { state -> Bool in
            state.peerEpoch = max(state.peerEpoch, peerEpoch)
            guard case .primary = state.role, !state.changing else { return false }
            return peerEpoch > state.epoch
        }
        if stepDown {
            becomeBackup(reason: "peer \(name) leads in epoch \(peerEpoch)", peerEpoch: peerEpoch)
        }
    }

    /// Hands over to the peer: asks it to promote itself, then follows it.
    func demote(reason: String) async throws -> UInt64 {
        guard let peer = configuration.peer else { throw ChangeError.noPeer }
        guard case .primary = nodeRole else { return epoch }
        let peerEpoch: UInt64
        do {
            let reason = "handed over by \(nodeName()): \(reason)"
            peerEpoch = try await ask(peer, timeout: .seconds(2)) { try await $0.promote(reason: reason) }
        } catch {
            throw ChangeError.peerRefused("\(error)")
        }
        becomeBackup(reason: "handed over: \(reason)", peerEpoch: peerEpoch)
        return epoch
    }

    func countReconciliation(applied: UInt64, conflicts: UInt64) {
        state.withLock {
            $0.reconciledChanges += applied
            $0.reconcileConflicts += conflicts
        }
    }

    // MARK: Start

    /// Settles the role at start: with a peer, compares data with it first
    /// (the node with the newer data leads); without one, leads.
    func join() async {
        guard let peer = configuration.peer else {
            // Nobody to compare with or to fence: a node without --peer leads in
            // its stored epoch (a backup without one is refused earlier).
            let primary = PrimaryReplication(
                store: store, feed: feed, configuration: configuration.replication, logger: logger,
                inherited: (recovered.replicationID, store.stampCeiling())
            )
            state.withLock { $0.role = .primary(primary) }
            return
        }
        let deadline = ContinuousClock.now + .milliseconds(max(Int64(1000), configuration.replication.failoverAfter.nanoseconds / 1_000_000))
        while ContinuousClock.now < deadline {
            if let status = await peerStatus(peer) {
                if await settle(against: status, peer: peer) { return }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.warning("the peer did not answer at start; taking the configured role", metadata: [
            "peer": "\(peer.host):\(peer.port)", "role": "\(configuration.role)",
        ])
        switch configuration.role {
        case .primary, .joining:
            _ = try? await becomePrimary(reason: "start: peer unreachable", automatic: false)
        case .backup:
            becomeBackupNow(reason: "start: configured as backup")
        }
    }

    /// Asks the peer on a link of its own, saying hello with this node's
    /// epoch; the connection and each answer may take up to `timeout`.
    private func ask<Answer>(
        _ peer: (host: String, port: Int), timeout: TimeAmount, _ question: (PeerLink) async throws -> Answer
    ) async throws -> Answer {
        try await PeerLink.open(
            host: peer.host, port: peer.port, name: nodeName(), epoch: epoch, secret: configuration.secret, tls: peerTLS,
            timeout: timeout, group: group, question
        )
    }

    private func peerStatus(_ peer: (host: String, port: Int)) async -> PairStatus? {
        try? await ask(peer, timeout: .milliseconds(500)) { try await $0.status() }
    }

    /// Decides the role against the peer's status; false to ask again.
    private func settle(against peer: PairStatus, peer address: (host: String, port: Int)) async -> Bool {
        state.withLock { $0.peerEpoch = max($0.peerEpoch, peer.epoch) }
        switch peer.role {
        case .primary:
            becomeBackupNow(reason: "start: \(peer.nodeName) is the primary")
            return true
        case .backup, .joining:
            if peerHoldsNewerData(peer) {
                logger.notice("the peer holds newer data than this node's storage; it leads", metadata: [
                    "peer": "\(peer.nodeName)", "peer_offset": "\(peer.offset)", "offset": "\(recovered.offset)",
                ])
                let reason = "\(nodeName()) restarted with older data"
                _ = try? await ask(address, timeout: .seconds(1)) { try await $0.promote(reason: reason) }
                becomeBackupNow(reason: "start: the peer holds newer data")
                return true
            }
            do {
                try await becomePrimary(reason: "start: this node holds the newest data", automatic: false)
                return true
            } catch {
                return false
            }
        }
    }

    /// Whether the peer's data is newer than what this node recovered: the
    /// same history further on, or another history in a higher epoch (ties:
    /// the configured primary, then the greater name, leads). Two nodes
    /// started together both see the other joining: the configured backup
    /// defers to a peer configured as primary, or the pair would be led by
    /// whichever name sorts last.
    private func peerHoldsNewerData(_ peer: PairStatus) -> Bool {
        if peer.replicationID == recovered.replicationID, peer.replicationID != .none {
            if peer.offset != recovered.offset { return peer.offset > recovered.offset }
        } else if peer.epoch != epoch {
            return peer.epoch > epoch
        }
        if configuration.role == .primary { return false }
        if configuration.role == .backup && (peer.role != .joining || peer.configuredRole == .primary) { return true }
        return peer.nodeName > nodeName()
    }

    // MARK: Timers

    /// Starts the failover timer (on a backup) and the peer check (on a primary).
    func startTimers() {
        let interval = configuration.replication.heartbeatInterval
        let failoverAfter = configuration.replication.failoverAfter
        let loop = group.next()
        var tasks: [RepeatedTask] = []
        if failoverAfter.nanoseconds > 0 {
            tasks.append(loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
                self?.checkPrimary(failoverAfter: failoverAfter)
            })
        }
        if configuration.peer != nil {
            let every = max(interval * 2, .milliseconds(200))
            tasks.append(loop.scheduleRepeatedTask(initialDelay: every, delay: every) { [weak self] _ in
                guard let self, let primary = self.primary, !primary.hasBackup else { return }
                Task { await self.checkPeer() }
            })
        }
        timers.withLock { $0 = tasks }
    }

    func stopTimers() {
        for task in timers.withLock({ $0 }) { task.cancel() }
    }

    /// On a backup: promotes this node once the primary has been silent for
    /// `failoverAfter`, the last part of it spent trying a fresh connection.
    /// A node that was itself paused sees a long silence when it resumes; the
    /// fresh try (and whatever was buffered) answers before it would promote.
    private func checkPrimary(failoverAfter: TimeAmount) {
        guard let client = replica else {
            suspectSince.withLock { $0 = nil }
            return
        }
        let silence = client.silenceMillis
        let limit = failoverAfter.nanoseconds / 1_000_000
        let window = min(300, limit / 2)
        guard silence >= limit - window else {
            suspectSince.withLock { $0 = nil }
            return
        }
        let now = NIODeadline.now()
        let since = suspectSince.withLock { since -> NIODeadline in
            if since == nil { since = now }
            return since!
        }
        client.probe()
        guard silence >= limit, (now - since).nanoseconds / 1_000_000 >= window else { return }
        suspectSince.withLock { $0 = nil }
        Task {
            do {
                try await becomePrimary(reason: "failover: no word from the primary for \(silence) ms", automatic: true)
            } catch ChangeError.inProgress {
            } catch {
                logger.error("failover failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// On a primary without a backup: looks at the peer, and steps down if it
    /// leads in a higher epoch (or the same epoch with a greater name). Saying
    /// hello also tells a stale primary there of this node's epoch.
    private func checkPeer() async {
        guard let peer = configuration.peer else { return }
        let epoch = self.epoch
        guard let server = try? await ask(peer, timeout: .milliseconds(500), { $0.peer }) else { return }
        guard server.nodeRole == .primary else { return }
        if server.epoch > epoch || (server.epoch == epoch && server.nodeName > nodeName()) {
            becomeBackup(reason: "peer \(server.nodeName) is primary in epoch \(server.epoch)", peerEpoch: server.epoch)
        }
    }

    // MARK: Statistics

    func statistics() -> [(String, String)] {
        let state = self.state.withLock { $0 }
        var stats: [(String, String)] = [
            ("epoch", "\(state.epoch)"),
            ("failovers", "\(state.failovers)"),
            ("promotions", "\(state.promotions)"),
            ("last_promotion_time", state.lastPromotion.map { "\($0.millis / 1000)" } ?? "0"),
            ("last_promotion_reason", state.lastPromotion?.reason ?? "none"),
            ("reconciled_changes", "\(state.reconciledChanges)"),
            ("reconcile_conflicts", "\(state.reconcileConflicts)"),
            ("failover_after_ms", "\(configuration.replication.failoverAfter.nanoseconds / 1_000_000)"),
            ("peer_address", configuration.peer.map { "\($0.host):\($0.port)" } ?? "none"),
            // --role: which node leads when both start with the same data.
            ("configured_role", "\(configuration.role)"),
        ]
        // The history the node's data belongs to: what its peer compares at
        // start (with `pairStatus`), shown to people.
        let data = data(of: state.role)
        stats.append(("data_replication_id", data.replicationID.description))
        stats.append(("data_offset", "\(data.offset)"))
        let previous = data.previous?.replicationID ?? .none
        stats.append(("data_previous_replication_id", previous == .none ? "none" : previous.description))
        stats.append(("data_fork_offset", "\(data.previous?.forkOffset ?? 0)"))
        if case .backup(let client) = state.role, let summary = client.reconcileSummary {
            stats.append(("last_reconcile_sent", "\(summary.received)"))
        }
        return stats
    }
}
