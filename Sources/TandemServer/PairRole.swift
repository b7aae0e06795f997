import Logging
import NIOCore
import Replication
import SessionPersistence
import SessionStore
import Synchronization
import TandemTLS
import WireProtocol

/// A node's role in its pair over time: the I/O shell around
/// `PairStateMachine`, which holds the rules (Protocol.md 2.6). The shell
/// feeds it events (start, the timer's ticks with what the links show, the
/// peer's hello and answers, promote and demote requests, whether storage
/// took the epoch) and performs the actions it returns: it asks the peer
/// (`PeerLink`), commits the epoch, and starts or stops the primary's
/// replication and the backup's client.
final class PairRole: Sendable {
    /// What the node runs now.
    enum Role {
        /// Neither: started, or without a role yet.
        case joining
        /// Takes writes and streams them to the backup.
        case primary(PrimaryReplication)
        /// Follows the primary, serves reads, forwards writes.
        case backup(ReplicaClient)
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
        /// The rules: who leads, in which epoch.
        var machine: PairStateMachine
        /// What the node runs for the role the machine settled on.
        var role: Role = .joining
        /// A backup about to promote: what its history hands over (set by
        /// `stopFollowing`, taken by `lead`).
        var handover: Handover?
        var failovers: UInt64 = 0
        var promotions: UInt64 = 0
        var lastPromotion: (millis: Int64, reason: String)?
        var reconciledChanges: UInt64 = 0
        var reconcileConflicts: UInt64 = 0
        /// The epoch a promotion asked storage to take (`persistEpoch`):
        /// commits store it from then on, unless storage refused it.
        var persistingEpoch: UInt64 = 0
    }

    /// Why a role change did not happen.
    typealias ChangeError = PairStateMachine.Refusal

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
    private let state: Mutex<State>
    /// Orders the machine's steps with the actions they return that change
    /// what the node runs, so that those happen in the order decided.
    private let steps = Mutex(())
    private let timers = Mutex<[RepeatedTask]>([])

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
        let rules = PairStateMachine.Configuration(
            hasPeer: configuration.peer != nil, configuredRole: configuration.role,
            failoverAfterMillis: configuration.replication.failoverAfter.nanoseconds / 1_000_000,
            heartbeatIntervalMillis: configuration.replication.heartbeatInterval.nanoseconds / 1_000_000,
            recoveredReplicationID: recovered.replicationID, recoveredOffset: recovered.offset
        )
        self.state = Mutex(State(machine: PairStateMachine(configuration: rules, epoch: epoch)))
    }

    /// The node's name as its peer sees it (set once the wire port is bound).
    func nodeName() -> String { state.withLock { $0.machine.name } }

    func setName(_ value: String) { state.withLock { $0.machine.name = value } }

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

    var nodeRole: NodeRole { state.withLock { $0.machine.nodeRole } }

    var epoch: UInt64 { state.withLock { $0.machine.epoch } }

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
        let (role, epoch) = state.withLock { ($0.role, max($0.machine.committableEpoch, $0.persistingEpoch)) }
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
        let (role, nodeRole, epoch, name) = state.withLock { ($0.role, $0.machine.nodeRole, $0.machine.epoch, $0.machine.name) }
        let data = data(of: role)
        return PairStatus(
            nodeName: name, role: nodeRole, configuredRole: configuration.role, epoch: epoch,
            replicationID: data.replicationID, offset: data.offset,
            previousReplicationID: data.previous?.replicationID ?? .none, forkOffset: data.previous?.forkOffset ?? 0
        )
    }

    // MARK: Changing roles

    /// Makes this node the primary (nothing happens if it is one already).
    /// Returns the epoch it leads in.
    @discardableResult
    func becomePrimary(reason: String, automatic: Bool) async throws -> UInt64 {
        try await request(.promoteRequested(reason: reason, automatic: automatic))
    }

    /// Hands over to the peer: asks it to promote itself, then follows it.
    func demote(reason: String) async throws -> UInt64 {
        try await request(.demoteRequested(reason: reason))
    }

    /// A peer said hello with its epoch: a primary meeting a higher one steps down.
    func peerSaidHello(epoch peerEpoch: UInt64, name: String) {
        let (work, _) = apply(.peerHello(epoch: peerEpoch, name: name))
        // Stepping down is done here; only the machine's questions would remain.
        if !work.isEmpty { Task { await self.run(work) } }
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
        await run(.start(now: Self.monotonicMillis()))
        while state.withLock({ $0.machine.isStarting }) {
            try? await Task.sleep(for: .milliseconds(50))
            await run(.tick(now: Self.monotonicMillis(), observed: observe()))
        }
    }

    // MARK: Timers

    /// Ticks the machine every heartbeat interval: the failover timer (on a
    /// backup) and the peer check (on a primary without a backup).
    func startTimers() {
        let interval = configuration.replication.heartbeatInterval
        guard configuration.replication.failoverAfter.nanoseconds > 0 || configuration.peer != nil else { return }
        let task = group.next().scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            guard let self else { return }
            let tick = PairStateMachine.Event.tick(now: Self.monotonicMillis(), observed: self.observe())
            // Off the event loop: a failover stops the replication client, which waits for a frame being applied.
            Task { await self.run(tick) }
        }
        timers.withLock { $0 = [task] }
    }

    func stopTimers() {
        for task in timers.withLock({ $0 }) { task.cancel() }
    }

    private static func monotonicMillis() -> Int64 { Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000) }

    /// What the machine needs to know of the links at a tick.
    private func observe() -> PairStateMachine.Observation {
        let role = state.withLock { $0.role }
        switch role {
        case .joining: return PairStateMachine.Observation()
        case .primary(let primary): return PairStateMachine.Observation(hasBackup: primary.hasBackup)
        case .backup(let client): return PairStateMachine.Observation(primarySilenceMillis: client.silenceMillis, primaryEpoch: client.primaryEpoch)
        }
    }

    // MARK: Performing the machine's actions

    /// Runs a promote or demote request to its answer.
    private func request(_ event: PairStateMachine.Event) async throws -> UInt64 {
        let (work, answer) = apply(event)
        let outcome = await run(work) ?? answer
        switch outcome {
        case .success(let epoch)?: return epoch
        case .failure(let refusal)?: throw refusal
        case nil: return epoch
        }
    }

    /// Feeds `event`, then performs every action until what is left to do is
    /// a question (to the peer, to storage) for `run`. Returns those and the
    /// answer to the request, if the event was one.
    private func apply(_ event: PairStateMachine.Event) -> (work: [PairStateMachine.Action], answer: Result<UInt64, ChangeError>?) {
        steps.withLock { _ in
            let actions = state.withLock { $0.machine.step(event) }
            var work: [PairStateMachine.Action] = []
            var answer: Result<UInt64, ChangeError>?
            for action in actions {
                switch action {
                case .probePeer, .checkPeer, .askPeerToPromote, .persistEpoch:
                    work.append(action)
                case .stopFollowing:
                    stopFollowing()
                case .probePrimary:
                    replica?.probe()
                case .lead(let lead):
                    self.lead(lead)
                case .follow(let reason, let stepsDown):
                    follow(reason: reason, stepsDown: stepsDown)
                case .answer(let outcome):
                    answer = outcome
                case .log(let level, let message, let metadata):
                    logger.log(level: Self.level(level), "\(message)", metadata: metadata.mapValues { .string($0) })
                }
            }
            return (work, answer)
        }
    }

    /// Asks what `work` asks, feeding each answer back to the machine, until
    /// nothing is left to ask. Returns the last answer to a request.
    @discardableResult
    private func run(_ event: PairStateMachine.Event) async -> Result<UInt64, ChangeError>? {
        let (work, answer) = apply(event)
        return await run(work) ?? answer
    }

    @discardableResult
    private func run(_ work: [PairStateMachine.Action]) async -> Result<UInt64, ChangeError>? {
        var pending = work
        var answer: Result<UInt64, ChangeError>?
        while !pending.isEmpty {
            let event = await ask(pending.removeFirst())
            guard let event else { continue }
            let (more, outcome) = apply(event)
            pending += more
            answer = outcome ?? answer
        }
        return answer
    }

    /// One question of the machine's, and the event its answer is.
    private func ask(_ action: PairStateMachine.Action) async -> PairStateMachine.Event? {
        switch action {
        case .persistEpoch(let epoch):
            guard let persistence else { return .epochPersisted(true) }
            state.withLock { $0.persistingEpoch = max($0.persistingEpoch, epoch) }
            let stored = await persistence.commitNow()
            if !stored { state.withLock { $0.persistingEpoch = $0.machine.committableEpoch } }
            return .epochPersisted(stored)
        case .probePeer:
            guard let peer = configuration.peer else { return .peerStatus(nil) }
            return .peerStatus(try? await ask(peer, timeout: .milliseconds(500)) { try await $0.status() })
        case .checkPeer:
            guard let peer = configuration.peer else { return .peerChecked(nil) }
            let hello = try? await ask(peer, timeout: .milliseconds(500)) { $0.peer }
            return .peerChecked(hello.map { PairStateMachine.PeerIdentity(name: $0.nodeName, role: $0.nodeRole, epoch: $0.epoch) })
        case .askPeerToPromote(let reason, let timeout):
            guard let peer = configuration.peer else { return .peerPromoted(.failure(.noPeer)) }
            do {
                return .peerPromoted(.success(try await ask(peer, timeout: .milliseconds(timeout)) { try await $0.promote(reason: reason) }))
            } catch {
                return .peerPromoted(.failure(.peerRefused("\(error)")))
            }
        case .stopFollowing, .probePrimary, .lead, .follow, .answer, .log:
            return nil
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

    /// A backup about to promote: no more changes from the old primary
    /// (writes parked meanwhile wait for the outcome), and what its history
    /// hands over to the primary this node may become.
    private func stopFollowing() {
        guard let client = replica else { return }
        client.stop(parkedFailure: nil)
        // The history this node's stream continues, if its position is
        // exact, and the one its data came from (`Handover`).
        let handover = client.handOver()
        state.withLock { $0.handover = handover }
        // The old primary may have written until it went silent: writes from
        // here on order after every one of them (`Handover.stampFloor`).
        store.raiseCas(above: Handover.stampFloor(peerStamp: client.peerStamp, silenceMillis: client.silenceMillis))
    }

    /// Becomes the primary the machine decided on.
    private func lead(_ lead: PairStateMachine.Lead) {
        let (previous, handedOver) = state.withLock { ($0.role, $0.handover.take()) }
        let handover = handedOver ?? Handover(
            recovered: ReplicaClient.Position(replicationID: recovered.replicationID, offset: recovered.offset), stampCeiling: store.stampCeiling()
        )
        let primary = PrimaryReplication(
            store: store, feed: feed, configuration: configuration.replication, logger: logger, inherited: handover.inherited,
            previous: handover.continued
        )
        let now = store.now()
        state.withLock { state in
            state.role = .primary(primary)
            guard lead.isPromotion else { return }
            state.promotions += 1
            if lead.automatic { state.failovers += 1 }
            state.lastPromotion = (now, lead.reason)
        }
        if case .backup(let client) = previous {
            // Writes that waited for a primary run here now.
            client.failParked(.roleChanged)
        }
        guard lead.isPromotion else { return }
        logger.notice("this node is now the primary", metadata: [
            "epoch": "\(lead.epoch)", "reason": "\(lead.reason)", "replication_id": "\(primary.replicationID)",
            "continues": "\(primary.previous.map { "\($0.replicationID) after offset \($0.forkOffset)" } ?? "no history")",
        ])
    }

    /// Starts following the peer.
    private func follow(reason: String, stepsDown: Bool) {
        guard let peer = configuration.peer else { return }
        let previous = state.withLock { state -> Role in
            state.handover = nil
            return state.role
        }
        // A stepping-down primary's store may hold changes it never released
        // (so beyond its offset); a recovered position may be behind the data
        // (`ReplicaStream.start`).
        let recoveredPosition = ReplicaClient.Position(replicationID: recovered.replicationID, offset: recovered.offset)
        var (position, exact) = ReplicaStream.start(steppingDownFrom: nil, recovered: recoveredPosition)
        switch previous {
        case .primary(let primary):
            (position, exact) = ReplicaStream.start(steppingDownFrom: primary, recovered: recoveredPosition)
            primary.shutdown(reason: "this node steps down: \(reason)")
        case .backup(let client):
            position = client.position
            exact = client.positionIsExact
        case .joining:
            break
        }
        let client = ReplicaClient(
            peerHost: peer.host, peerPort: peer.port, store: store, position: position,
            configuration: configuration.replication, group: group, logger: logger,
            epoch: { [weak self] in self?.epoch ?? 0 }, positionIsExact: exact
        )
        state.withLock { $0.role = .backup(client) }
        if case .backup(let old) = previous { old.failParked(.notSent) }
        if stepsDown {
            logger.warning("this node steps down and follows its peer", metadata: ["reason": "\(reason)", "epoch": "\(epoch)"])
        } else {
            logger.info("following the primary", metadata: ["peer": "\(peer.host):\(peer.port)", "reason": "\(reason)"])
        }
        client.start()
    }

    private static func level(_ level: PairStateMachine.LogLevel) -> Logger.Level {
        switch level {
        case .info: return .info
        case .notice: return .notice
        case .warning: return .warning
        case .error: return .error
        }
    }

    // MARK: Statistics

    func statistics() -> [(String, String)] {
        let state = self.state.withLock { $0 }
        var stats: [(String, String)] = [
            ("epoch", "\(state.machine.epoch)"),
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
