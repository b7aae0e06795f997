import WireProtocol

/// Who leads a pair, as pure rules: events in, the next state and the actions
/// for the shell (`PairRole` in the server) out. No I/O, no clock, no lock:
/// time is what the events say (`tick(now:)`, monotonic milliseconds), and
/// what the node observes of its links comes in with the tick. The shell
/// performs the actions, and what an action learns (an answer from the peer,
/// whether storage took the epoch) comes back as the next event.
///
/// The rules (Protocol.md 2.6):
/// - Becoming primary raises the epoch above every epoch seen, and the epoch
///   is stored before the node takes a write (`persistEpoch`, then `lead`).
/// - A primary that meets a primary with a higher epoch (or the same epoch
///   and a greater name) steps down and follows it.
/// - A node that starts with a peer does not serve until it has compared its
///   data with the peer's: the node with the newer data leads.
/// - A backup whose primary is silent for the failover time, the last part
///   of it spent trying a fresh connection, promotes itself.
/// - Role changes are serialised: a promotion under way refuses another.
public struct PairStateMachine: Sendable {
    public struct Configuration: Sendable, Equatable {
        /// Whether the node has a `--peer` to follow or compare with.
        public var hasPeer: Bool
        /// `--role`: which node leads when both start with the same data.
        public var configuredRole: NodeRole
        /// `--failover-after` in ms (0: no automatic failover).
        public var failoverAfterMillis: Int64
        /// How often a primary without a backup looks at its peer.
        public var peerCheckEveryMillis: Int64
        /// How long the start-up comparison waits for the peer to answer.
        public var joinTimeoutMillis: Int64
        /// Where the node's stored data stands in which history.
        public var recoveredReplicationID: ReplicationID
        public var recoveredOffset: UInt64

        public init(
            hasPeer: Bool, configuredRole: NodeRole, failoverAfterMillis: Int64, heartbeatIntervalMillis: Int64,
            recoveredReplicationID: ReplicationID = .none, recoveredOffset: UInt64 = 0
        ) {
            self.hasPeer = hasPeer
            self.configuredRole = configuredRole
            self.failoverAfterMillis = failoverAfterMillis
            self.peerCheckEveryMillis = max(heartbeatIntervalMillis * 2, 200)
            self.joinTimeoutMillis = max(1000, failoverAfterMillis)
            self.recoveredReplicationID = recoveredReplicationID
            self.recoveredOffset = recoveredOffset
        }
    }

    /// Where a promotion started, and so where a failed one returns.
    public enum Origin: Sendable, Equatable {
        /// The start-up comparison, which goes on (until `deadline`).
        case joining(deadline: Int64)
        /// Start is over without a role (`unsettled`).
        case unsettled
        /// Following a primary: a failed promotion follows again.
        case backup
    }

    public enum State: Sendable, Equatable {
        /// Started with a peer; asks it where it stands until `deadline`,
        /// then takes the configured role.
        case joining(deadline: Int64)
        /// At start, found the peer's data newer and asked it to lead; follows it, whatever it answers.
        case handingOverAtStart
        /// The start is over and no role could be taken (the epoch could not be stored): asks the peer at each tick, and follows a primary or promotes again.
        case unsettled
        /// Raised its epoch and waits for storage to commit it before it takes writes.
        case promoting(reason: String, automatic: Bool, previousEpoch: UInt64, from: Origin)
        /// Takes writes and streams them to the backup.
        case primary
        /// Still takes writes, and has asked the peer to take over: follows it once it answers that it leads.
        case demoting(reason: String)
        /// Follows the primary, serves reads, forwards writes; `suspectSince` is when the primary first looked silent.
        case backup(suspectSince: Int64?)
    }

    /// What the node sees of its links at a tick.
    public struct Observation: Sendable, Equatable {
        /// A backup's: milliseconds since it last heard its primary.
        public var primarySilenceMillis: Int64
        /// A backup's: the epoch its primary leads in, as the `helloOK` of
        /// the replication link said (0: not connected yet).
        public var primaryEpoch: UInt64
        /// A primary's: whether a backup follows it now.
        public var hasBackup: Bool

        public init(primarySilenceMillis: Int64 = 0, primaryEpoch: UInt64 = 0, hasBackup: Bool = false) {
            self.primarySilenceMillis = primarySilenceMillis
            self.primaryEpoch = primaryEpoch
            self.hasBackup = hasBackup
        }
    }

    /// The peer as its `helloOK` describes it.
    public typealias PeerIdentity = NodeIdentity

    public enum Event: Sendable, Equatable {
        /// The node has its name and starts; `now` is monotonic ms.
        case start(now: Int64)
        /// Time passes (every heartbeat interval, and between start-up questions).
        case tick(now: Int64, observed: Observation)
        /// The answer to `probePeer` (nil: none).
        case peerStatus(PairStatus?)
        /// The answer to `checkPeer` (nil: none).
        case peerChecked(PeerIdentity?)
        /// The peer said hello on a connection to this node, with its epoch.
        case peerHello(epoch: UInt64, name: String)
        /// The answer to `askPeerToPromote`: the peer's epoch once it leads, or why not.
        case peerPromoted(Result<UInt64, Refusal>)
        /// Someone (an operator, the peer) asks this node to lead.
        case promoteRequested(reason: String, automatic: Bool)
        /// Someone asks this node to hand over to its peer.
        case demoteRequested(reason: String)
        /// The answer to `persistEpoch`.
        case epochPersisted(Bool)
    }

    /// How the shell becomes a primary.
    public struct Lead: Sendable, Equatable {
        public var epoch: UInt64
        public var reason: String
        /// A failover (counted apart from other promotions).
        public var automatic: Bool
        /// A promotion, counted and logged (false: a node without a peer leading at start).
        public var isPromotion: Bool
    }

    public enum LogLevel: Sendable, Equatable { case info, notice, warning, error }

    public enum Action: Sendable, Equatable {
        /// Ask the peer for its `pairStatus`; answer with `peerStatus`.
        case probePeer
        /// Say hello to the peer (with this node's epoch) and read its `helloOK`; answer with `peerChecked`.
        case checkPeer
        /// Ask the peer to promote itself; answer with `peerPromoted`.
        case askPeerToPromote(reason: String, timeoutMillis: Int64)
        /// A backup about to promote: stop following, keep writes parked, hand over the position.
        case stopFollowing
        /// A backup whose primary is silent: try a fresh connection now.
        case probePrimary
        /// Store the epoch (the node's epoch now); answer with `epochPersisted`.
        case persistEpoch(UInt64)
        /// Become the primary.
        case lead(Lead)
        /// Follow the peer; `stepsDown` when this node was the primary.
        case follow(reason: String, stepsDown: Bool)
        /// The outcome of the request being run (promote or demote).
        case answer(Result<UInt64, Refusal>)
        case log(LogLevel, String, [String: String])
    }

    /// Why a role change did not happen.
    public enum Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        case inProgress
        case epochNotPersisted
        case noPeer
        case peerRefused(String)

        public var description: String {
            switch self {
            case .inProgress: return "a role change is already under way; retry in a moment"
            case .epochNotPersisted: return "the new epoch could not be written to storage, so this node does not take writes; check the data directory"
            case .noPeer: return "this node has no --peer to hand over to"
            case .peerRefused(let reason): return "the peer did not take over: \(reason)"
            }
        }
    }

    public let configuration: Configuration
    public internal(set) var state: State
    /// The epoch this node leads or follows in (stored with every commit).
    public internal(set) var epoch: UInt64
    /// The epoch a commit stores: while a promotion waits for storage, the
    /// epoch it started from. The shell adds the promotion's epoch from the
    /// moment it asks storage to commit it (`persistEpoch`) and drops it if
    /// that commit fails; were every commit to carry it from the start, a
    /// promotion abandoned because storage failed could leave on disk an
    /// epoch the node never led in, and the node, restarted, would take its
    /// data for newer than a peer that did lead.
    public var committableEpoch: UInt64 {
        if case .promoting(_, _, let previousEpoch, _) = state { return previousEpoch }
        return epoch
    }
    /// The highest epoch any peer was seen with.
    public internal(set) var peerEpoch: UInt64 = 0
    /// The node's name as its peer sees it (set before `start`).
    public var name: String = ""
    /// When a primary without a backup next looks at its peer.
    var nextPeerCheck: Int64 = .min

    /// A node that starts (or restarts) with the epoch it stored.
    public init(configuration: Configuration, epoch: UInt64) {
        self.configuration = configuration
        self.epoch = epoch
        self.state = .joining(deadline: .max)
    }

    /// The role the node shows: a promotion keeps the role it started from until it leads.
    public var nodeRole: NodeRole {
        switch state {
        case .joining, .handingOverAtStart, .unsettled: return .joining
        case .promoting(_, _, _, let origin):
            switch origin {
            case .joining, .unsettled: return .joining
            case .backup: return .backup
            }
        case .primary, .demoting: return .primary
        case .backup: return .backup
        }
    }

    /// Whether the node takes writes.
    public var acceptsWrites: Bool { nodeRole == .primary }

    /// Whether the start-up comparison is still going on.
    public var isStarting: Bool {
        switch state {
        case .joining, .handingOverAtStart: return true
        case .promoting(_, _, _, .joining): return true
        case .promoting, .unsettled, .primary, .demoting, .backup: return false
        }
    }

    // MARK: Events

    public mutating func step(_ event: Event) -> [Action] {
        switch event {
        case .start(let now): return start(now: now)
        case .tick(let now, let observed): return tick(now: now, observed: observed)
        case .peerStatus(let status): return settle(against: status)
        case .peerChecked(let peer): return checked(peer)
        case .peerHello(let peerEpoch, let name): return hello(epoch: peerEpoch, name: name)
        case .peerPromoted(let outcome): return peerPromoted(outcome)
        case .promoteRequested(let reason, let automatic): return promoteRequested(reason: reason, automatic: automatic)
        case .demoteRequested(let reason): return demoteRequested(reason: reason)
        case .epochPersisted(let stored): return epochPersisted(stored)
        }
    }

    private mutating func start(now: Int64) -> [Action] {
        nextPeerCheck = now &+ configuration.peerCheckEveryMillis
        guard configuration.hasPeer else {
            // Nobody to compare with or to fence: a node without a peer leads
            // in its stored epoch (a backup without one is refused earlier).
            state = .primary
            return [.lead(Lead(epoch: epoch, reason: "start: no peer", automatic: false, isPromotion: false))]
        }
        state = .joining(deadline: now &+ configuration.joinTimeoutMillis)
        return [.probePeer]
    }

    private mutating func tick(now: Int64, observed: Observation) -> [Action] {
        var actions: [Action] = []
        switch state {
        case .joining(let deadline):
            guard now >= deadline else { return [.probePeer] }
            let configured = configuration.configuredRole
            actions.append(.log(.warning, "the peer did not answer at start; taking the configured role", ["role": "\(configured)"]))
            switch configured {
            case .primary, .joining:
                actions += promote(reason: "start: peer unreachable", automatic: false, from: .unsettled)
            case .backup:
                actions += becomeBackup(reason: "start: configured as backup")
            }
            return actions
        case .backup(let suspectSince):
            // A backup follows in its primary's epoch, whatever it learnt
            // before it followed (a hand-over refused at start says none):
            // a failover then goes above it, and the old primary, back, finds
            // itself in a lower epoch and follows.
            if observed.primaryEpoch > epoch { epoch = observed.primaryEpoch }
            peerEpoch = max(peerEpoch, observed.primaryEpoch)
            return checkPrimary(now: now, silence: observed.primarySilenceMillis, suspectSince: suspectSince)
        case .primary, .demoting:
            guard configuration.hasPeer, now >= nextPeerCheck else { return [] }
            nextPeerCheck = now &+ configuration.peerCheckEveryMillis
            return observed.hasBackup ? [] : [.checkPeer]
        case .unsettled:
            // Not stuck: asks the peer again, and leads or follows on its answer.
            return [.probePeer]
        case .handingOverAtStart, .promoting:
            return []
        }
    }

    /// On a backup: promotes once the primary has been silent for the
    /// failover time, the last part of it (`window`) spent trying a fresh
    /// connection. A node that was itself paused sees a long silence when it
    /// resumes; the fresh try answers before it would promote.
    private mutating func checkPrimary(now: Int64, silence: Int64, suspectSince: Int64?) -> [Action] {
        let limit = configuration.failoverAfterMillis
        guard limit > 0 else { return [] }
        let window = min(300, limit / 2)
        guard silence >= limit - window else {
            state = .backup(suspectSince: nil)
            return []
        }
        let since = suspectSince ?? now
        state = .backup(suspectSince: since)
        guard silence >= limit, now - since >= window else { return [.probePrimary] }
        return [.probePrimary] + promote(reason: "failover: no word from the primary for \(silence) ms", automatic: true, from: .backup)
    }

    /// At start: decides against the peer's status (nil: ask again at the next tick).
    private mutating func settle(against peer: PairStatus?) -> [Action] {
        let origin: Origin
        switch state {
        case .joining(let deadline): origin = .joining(deadline: deadline)
        case .unsettled: origin = .unsettled
        case .handingOverAtStart, .promoting, .primary, .demoting, .backup: return []
        }
        guard let peer else { return [] }
        peerEpoch = max(peerEpoch, peer.epoch)
        switch peer.role {
        case .primary:
            return becomeBackup(reason: "start: \(peer.nodeName) is the primary")
        case .backup, .joining:
            if case .joining = origin, peerHoldsNewerData(peer) {
                state = .handingOverAtStart
                return [
                    .log(.notice, "the peer holds newer data than this node's storage; it leads", [
                        "peer": peer.nodeName, "peer_offset": "\(peer.offset)", "offset": "\(configuration.recoveredOffset)",
                    ]),
                    .askPeerToPromote(reason: "\(name) restarted with older data", timeoutMillis: 1000),
                ]
            }
            return promote(reason: "start: this node holds the newest data", automatic: false, from: origin)
        }
    }

    /// Whether the peer's data is newer than what this node recovered: the
    /// same history further on, or another history in a higher epoch (ties:
    /// the configured primary, then the greater name, leads). Two nodes
    /// started together both see the other joining: the configured backup
    /// defers to a peer configured as primary, or the pair would be led by
    /// whichever name sorts last.
    public func peerHoldsNewerData(_ peer: PairStatus) -> Bool {
        let recovered = configuration.recoveredReplicationID
        if peer.replicationID == recovered, peer.replicationID != .none {
            if peer.offset != configuration.recoveredOffset { return peer.offset > configuration.recoveredOffset }
        } else if peer.epoch != epoch {
            return peer.epoch > epoch
        }
        if configuration.configuredRole == .primary { return false }
        if configuration.configuredRole == .backup && (peer.role != .joining || peer.configuredRole == .primary) { return true }
        return peer.nodeName > name
    }

    /// On a primary without a backup, the peer's `helloOK`: a peer that leads
    /// in a higher epoch (or the same epoch with a greater name) wins.
    private mutating func checked(_ peer: PeerIdentity?) -> [Action] {
        guard let peer, peer.role == .primary else { return [] }
        switch state {
        case .primary, .demoting:
            guard peer.epoch > epoch || (peer.epoch == epoch && peer.name > name) else { return [] }
            return becomeBackup(reason: "peer \(peer.name) is primary in epoch \(peer.epoch)", peerEpoch: peer.epoch)
        case .joining, .handingOverAtStart, .unsettled, .promoting, .backup:
            return []
        }
    }

    /// A peer said hello with its epoch: a primary meeting a higher one steps down.
    private mutating func hello(epoch peerEpoch: UInt64, name peerName: String) -> [Action] {
        self.peerEpoch = max(self.peerEpoch, peerEpoch)
        switch state {
        case .primary, .demoting:
            guard peerEpoch > epoch else { return [] }
            return becomeBackup(reason: "peer \(peerName) leads in epoch \(peerEpoch)", peerEpoch: peerEpoch)
        case .joining, .handingOverAtStart, .unsettled, .promoting, .backup:
            return []
        }
    }

    private mutating func peerPromoted(_ outcome: Result<UInt64, Refusal>) -> [Action] {
        switch state {
        case .handingOverAtStart:
            // Whatever it answered: this node's data is the older. The epoch
            // it leads in, if it answered, is one this node has seen: a later
            // promotion of this node must go above it.
            let peerEpoch = (try? outcome.get()) ?? 0
            return becomeBackup(reason: "start: the peer holds newer data", peerEpoch: peerEpoch)
        case .demoting(let reason):
            switch outcome {
            case .success(let peerEpoch):
                let actions = becomeBackup(reason: "handed over: \(reason)", peerEpoch: peerEpoch)
                return actions + [.answer(.success(epoch))]
            case .failure(let refusal):
                state = .primary
                return [.answer(.failure(refusal))]
            }
        case .joining, .unsettled, .promoting, .primary, .backup:
            // The answer to a hand-over overtaken by another change (the node
            // stepped down meanwhile).
            switch outcome {
            case .success(let peerEpoch):
                self.peerEpoch = max(self.peerEpoch, peerEpoch)
                return [.answer(.success(epoch))]
            case .failure(let refusal):
                return [.answer(.failure(refusal))]
            }
        }
    }

    private mutating func promoteRequested(reason: String, automatic: Bool) -> [Action] {
        switch state {
        case .primary, .demoting:
            return [.answer(.success(epoch))]
        case .promoting, .handingOverAtStart:
            return [.answer(.failure(.inProgress))]
        case .joining(let deadline):
            return promote(reason: reason, automatic: automatic, from: .joining(deadline: deadline))
        case .unsettled:
            return promote(reason: reason, automatic: automatic, from: .unsettled)
        case .backup:
            return promote(reason: reason, automatic: automatic, from: .backup)
        }
    }

    private mutating func demoteRequested(reason: String) -> [Action] {
        guard configuration.hasPeer else { return [.answer(.failure(.noPeer))] }
        switch state {
        case .primary:
            state = .demoting(reason: reason)
            return [.askPeerToPromote(reason: "handed over by \(name): \(reason)", timeoutMillis: 2000)]
        case .demoting:
            return [.answer(.failure(.inProgress))]
        case .joining, .handingOverAtStart, .unsettled, .promoting, .backup:
            return [.answer(.success(epoch))]
        }
    }

    private mutating func epochPersisted(_ stored: Bool) -> [Action] {
        guard case .promoting(let reason, let automatic, let previousEpoch, let origin) = state else { return [] }
        if stored {
            state = .primary
            return [.lead(Lead(epoch: epoch, reason: reason, automatic: automatic, isPromotion: true)), .answer(.success(epoch))]
        }
        var actions: [Action] = [
            .log(.error, "promotion abandoned: the new epoch could not be stored", ["epoch": "\(epoch)", "reason": reason]),
        ]
        if automatic { actions.append(.log(.error, "failover failed", ["error": "\(Refusal.epochNotPersisted)"])) }
        epoch = previousEpoch
        switch origin {
        case .joining(let deadline):
            state = .joining(deadline: deadline)
        case .unsettled:
            state = .unsettled
        case .backup:
            state = .backup(suspectSince: nil)
            actions.append(.follow(reason: "promotion failed", stepsDown: false))
        }
        return actions + [.answer(.failure(.epochNotPersisted))]
    }

    // MARK: Changing roles

    /// Raises the epoch above every epoch seen and asks for it to be stored.
    private mutating func promote(reason: String, automatic: Bool, from origin: Origin) -> [Action] {
        let previousEpoch = epoch
        epoch = Self.nextEpoch(above: max(epoch, peerEpoch), configuredRole: configuration.configuredRole)
        state = .promoting(reason: reason, automatic: automatic, previousEpoch: previousEpoch, from: origin)
        let stop: [Action] = origin == .backup ? [.stopFollowing] : []
        return stop + [.persistEpoch(epoch)]
    }

    /// The epoch a promotion takes: the first above `highest` of the node's
    /// own parity, odd for the node configured as backup, even for the one
    /// configured as primary. Two nodes that promote at the same moment
    /// without hearing each other (a partition healing, a failover timer
    /// firing while the other node settles) then never lead in one epoch:
    /// the higher of the two wins as soon as they meet. With two nodes there
    /// is no quorum to serialise promotions; disjoint epochs keep "one writer
    /// per epoch" true all the same. (Two nodes configured alike share a
    /// parity and fall back to the tie-break by name.)
    static func nextEpoch(above highest: UInt64, configuredRole: NodeRole) -> UInt64 {
        let parity: UInt64 = configuredRole == .backup ? 1 : 0
        let next = highest + 1
        return next % 2 == parity ? next : next + 1
    }

    /// Steps down (or, while joining, settles) as the backup of a peer seen in `peerEpoch`.
    private mutating func becomeBackup(reason: String, peerEpoch: UInt64) -> [Action] {
        self.peerEpoch = max(self.peerEpoch, peerEpoch)
        return becomeBackup(reason: reason)
    }

    private mutating func becomeBackup(reason: String) -> [Action] {
        let stepsDown: Bool
        switch state {
        case .backup, .promoting: return []
        case .primary, .demoting: stepsDown = true
        case .joining, .handingOverAtStart, .unsettled: stepsDown = false
        }
        epoch = max(epoch, peerEpoch)
        guard configuration.hasPeer else {
            return [.log(.error, "cannot become a backup without --peer", ["reason": reason])]
        }
        state = .backup(suspectSince: nil)
        return [.follow(reason: reason, stepsDown: stepsDown)]
    }
}
