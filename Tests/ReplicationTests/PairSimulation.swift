import Logging
import NIOCore
import NIOEmbedded
@testable import Replication
import SessionStore
import TandemTestSupport
import WireProtocol

/// Two nodes of a pair on simulated time and a simulated network, driven by
/// one seed: messages are delayed, dropped, cut one way or both and healed;
/// clocks are skewed and jump; nodes crash and restart with only what their
/// writer committed; storage refuses commits for a while; operators ask for
/// promotions and hand-overs; clients write to whichever node takes writes.
///
/// What decides the outcome is the real code, driven as the node drives it:
/// - who leads: `PairStateMachine`, whose actions the simulation performs as
///   `PairRole` does (questions to the peer travel as messages and are
///   answered or time out, the epoch is committed after a delay);
/// - the data: each node holds a real `SessionStore` with its `ChangeFeed`;
///   a primary is a real `PrimaryReplication` (its backlog, histories,
///   resync decision, reconciliation watermark and sync acknowledgements,
///   waited for on an `EmbeddedEventLoop` running on simulated time); each
///   replication link runs `BackupStream` at the primary's end and
///   `ReplicaStream` at the backup's, over frames encoded and decoded by the
///   wire protocol's own code; reconciliation merges with `ReconcileMerge`;
///   a promotion hands over with `Handover`;
/// - the backup's link: `ReplicaLink` (attempts and their back-off, the
///   handshake, with a secret in half the seeds against the real
///   `WireHandshakeAcceptor`, the order of reconcile, replicate and resync,
///   heartbeats and silence), and its forwarded writes: `ForwardedWrites`.
///
/// Modelled rather than run: the sockets (a replication link is a connection
/// whose messages arrive in order, and which a cut direction stalls until a
/// side's link timeout closes it), the timers, and SQLite (see
/// `PairSimulation+Data.swift`: what a node keeps across a crash is what its
/// writer committed).
struct PairSimulation {
    typealias Machine = PairStateMachine
    typealias Position = ReplicaStream.Position

    /// Something the network carries.
    enum Message {
        /// A question on a short link of its own; every one starts with a hello in the sender's epoch.
        case question(from: Int, operation: Int, epoch: UInt64, name: String, Question)
        case answer(operation: Int, Machine.Event)
        /// A message on replication link `id`.
        case link(id: Int, LinkMessage)
    }

    enum Question {
        case status, hello
        case promote(reason: String)
    }

    /// One question the shell is waiting on: its answer becomes an event for `node`.
    struct Operation {
        var node: Int
        var life: Int
        /// The event if no answer comes.
        var otherwise: Machine.Event
        /// Where a request's answer goes (a promote asked by the peer).
        var replyTo: (node: Int, operation: Int)?
    }

    enum Happening {
        case deliver(to: Int, Message)
        case tick(node: Int, life: Int)
        case timeout(operation: Int)
        case stored(operation: Int)
        case restart(node: Int)
        case fault(Fault)
        case clientWrite
        /// A write a backup held (for `follower`) waited its longest.
        case forwardHoldRanOut(node: Int, follower: Int, hold: UInt64)
        /// A backup's next attempt to connect to its primary (`follower`: which following it belongs to).
        case reconnect(node: Int, follower: Int, attempt: UInt64)
        /// A connection attempt refused, or unanswered until the connect timeout.
        case connectFailed(node: Int, follower: Int, attempt: UInt64)
        /// The next page of the snapshot a primary sends on link `link`.
        case snapshotPage(link: Int)
    }

    /// What can go wrong, or be done by an operator.
    enum Fault: Equatable {
        case partition
        /// Messages from `from` to the other node are lost.
        case cut(from: Int)
        case heal
        case loss(percent: Int)
        case crash(Int, restartAfter: Int64?)
        case restart(Int)
        case storage(Int, fails: Bool)
        case skew(Int, by: Int64)
        case promote(Int)
        case demote(Int)
        /// Clients stop writing, or start again.
        case pauseWrites, resumeWrites
        /// A client sets `key` (or deletes it), paused or not.
        case write(key: String, delete: Bool)
    }

    /// How a run is set up.
    struct Options {
        /// Faults for this long, then everything healed for `healMillis`.
        var faultMillis: Int64 = 8_000
        var healMillis: Int64 = 6_000
        /// nil: drawn (sync four times in five).
        var mode: ReplicationConfiguration.Mode?
        /// nil: drawn (the default, or small enough to overflow now and then).
        var backlogBytes: Int?
        /// Faults at fixed times instead of drawn ones.
        var script: [(at: Int64, fault: Fault)]?
        /// Both nodes start at once (else the second one may start up to 3 s later).
        var startTogether = false
        /// Time between two client writes.
        var writeEvery: ClosedRange<Int> = 50...250
        /// Shards per node's store. nil: by the seed (odd seeds run four),
        /// so that changes recorded in several shards meet the feed's
        /// ordering as on a real node (64 shards), without changing what
        /// the seed draws.
        var shards: Int?
        /// The share of client writes sent to a backup, which forwards them
        /// (none in scripted runs).
        var forwardPercent = 20
    }

    /// What a run did, for the report and for assertions.
    struct Stats {
        var writes = 0
        var acknowledged = 0
        var acknowledgedInSync = 0
        /// Client writes sent to a backup, and those it answered (each also counts in `acknowledged`).
        var forwarded = 0
        var forwardedAcknowledged = 0
        /// Forwarded writes held (link down, or lost with the link and sent again), and those run twice.
        var forwardsHeld = 0
        var forwardsRunTwice = 0
        /// Held writes a backup ran itself once it was promoted.
        var forwardsRunHere = 0
        var flushes = 0
        /// Sets given a deadline, expired items the reclaimers removed, and
        /// expiries whose committed row stayed on disk (it expires itself).
        var expiringSets = 0
        var reclaimed = 0
        var expiredCommittedRows = 0
        /// Acknowledged writes lost in a documented window (their only copy
        /// was in the memory of a node that crashed).
        var excused = 0
        var fullResyncs = 0
        var partialResyncs = 0
        var partialResyncsAfterPromotion = 0
        var fullResyncReasons: [String: Int] = [:]
        var reconciledVersions: UInt64 = 0
        var reconcileConflicts: UInt64 = 0
        var crashes = 0
        var promotions = 0

        mutating func add(_ other: Stats) {
            writes += other.writes
            acknowledged += other.acknowledged
            acknowledgedInSync += other.acknowledgedInSync
            forwarded += other.forwarded
            forwardedAcknowledged += other.forwardedAcknowledged
            forwardsHeld += other.forwardsHeld
            forwardsRunTwice += other.forwardsRunTwice
            forwardsRunHere += other.forwardsRunHere
            flushes += other.flushes
            expiringSets += other.expiringSets
            reclaimed += other.reclaimed
            expiredCommittedRows += other.expiredCommittedRows
            excused += other.excused
            fullResyncs += other.fullResyncs
            partialResyncs += other.partialResyncs
            partialResyncsAfterPromotion += other.partialResyncsAfterPromotion
            for (reason, count) in other.fullResyncReasons { fullResyncReasons[reason, default: 0] += count }
            reconciledVersions += other.reconciledVersions
            reconcileConflicts += other.reconcileConflicts
            crashes += other.crashes
            promotions += other.promotions
        }
    }

    struct Node {
        let name: String
        let configuredRole: NodeRole
        var machine: Machine?
        var life = 0
        var skew: Int64 = 0
        var storageFails = false
        var storedEpoch: UInt64 = 0
        var settledEpoch: UInt64 = 0
        /// The highest epoch the node took writes in.
        var ledEpoch: UInt64 = 0
        /// The machine's wall clock (the simulation's time plus the skew).
        let clock: ManualClock
        var data: NodeData

        init(name: String, configuredRole: NodeRole) {
            self.name = name
            self.configuredRole = configuredRole
            clock = ManualClock(millis: PairSimulation.wallBase)
            data = NodeData(recovering: Disk(), clock: clock)
        }
    }

    let seed: UInt64
    let options: Options
    /// Shards per node's store (`Options.shards`).
    let shards: Int
    var random: SplitMix64
    var time: Int64 = 0
    var nodes: [Node]
    /// Whether messages from one node to the other get through, and how many in a hundred are lost.
    var linkUp = [[true, true], [true, true]]
    var lossPercent = 0
    var queue: [(time: Int64, order: Int, what: Happening)] = []
    var order = 0
    var operations: [Int: Operation] = [:]
    var nextOperation = 0
    /// Who took writes in which epoch.
    var writers: [UInt64: Set<String>] = [:]
    /// What happened, when tracing (a replayed seed).
    final class Trace { var lines: [String] = [] }
    let trace = Trace()
    var storedEpochWentBack: String?
    /// The first broken rule a link or a write noticed.
    var broken: String?
    let tracing: Bool
    static let failoverAfter: Int64 = 600
    static let heartbeat: Int64 = 100

    // The data (PairSimulation+Data.swift).
    let replication: ReplicationConfiguration
    /// The event loop sync writes wait on: its time is the simulation's.
    let loop = EmbeddedEventLoop()
    let completions = Completions()
    var links: [Int: Link] = [:]
    var nextLink = 0
    var nextFollower = 0
    var writes: [Write] = []
    /// The stamps of the clients' flush_all commands.
    var flushStamps: [UInt64] = []
    var forwarded: [Forwarded] = []
    var forwardAnswers: [ForwardAnswer] = []
    var writesPaused = false
    var stats = Stats()

    init(seed: UInt64, tracing: Bool = false, options: Options = Options()) {
        self.seed = seed
        self.random = SplitMix64(seed: seed)
        self.tracing = tracing
        self.options = options
        self.shards = options.shards ?? (seed & 1 == 1 ? 4 : 1)
        var replication = ReplicationConfiguration(
            syncTimeout: .milliseconds(Self.syncTimeout), heartbeatInterval: .milliseconds(Self.heartbeat),
            linkTimeout: .milliseconds(Self.linkTimeout)
        )
        nodes = [Node(name: "a", configuredRole: .primary), Node(name: "b", configuredRole: .backup)]
        if let mode = options.mode {
            replication.mode = mode
        } else {
            replication.mode = random.chance(80) ? .sync : .async
        }
        if let bytes = options.backlogBytes {
            replication.backlogSize = bytes
        } else if random.chance(20) {
            replication.backlogSize = 2048
        }
        if random.chance(50) {
            // The link authenticates both ways (`ReplicaLink`'s handshake against the real acceptor).
            var bytes: [UInt8] = []
            for _ in 0..<32 { bytes.append(UInt8(random.int(0...255))) }
            replication.secret = try! WireSecret(bytes: bytes)
        }
        self.replication = replication
    }

    // MARK: Running

    /// Faults for `faultMillis`, then everything healed for `healMillis`
    /// (clients write for its first half); returns the first broken
    /// invariant, if any.
    mutating func run() -> String? {
        let broken = runSchedule()
        // Every timer left on the loop (sync waits of crashed primaries) runs
        // out, so the loop is released empty.
        loop.advanceTime(by: .hours(1))
        return broken
    }

    private mutating func runSchedule() -> String? {
        let faultMillis = options.faultMillis
        let healMillis = options.healMillis
        nodes[0].skew = Int64(random.int(-500...500))
        nodes[1].skew = Int64(random.int(-500...500))
        restart(0)
        if options.startTogether || random.chance(70) {
            restart(1)
        } else {
            schedule(in: Int64(random.int(0...3000)), .restart(node: 1))
        }
        schedule(in: Int64(random.int(options.writeEvery)), .clientWrite)
        if let script = options.script {
            for (at, fault) in script { schedule(in: at, .fault(fault)) }
            if let broken = advance(until: faultMillis) { return broken }
        } else {
            var nextFault: Int64 = Int64(random.int(0...500))
            while time < faultMillis {
                if time >= nextFault {
                    fault()
                    nextFault = time + Int64(random.int(50...1500))
                }
                if let broken = advance(until: min(nextFault, faultMillis)) { return broken }
            }
        }
        // Heal: both nodes up, the network whole, storage working, clients writing.
        linkUp = [[true, true], [true, true]]
        lossPercent = 0
        writesPaused = false
        for index in 0..<2 {
            nodes[index].storageFails = false
            if nodes[index].machine == nil { restart(index) }
        }
        log("healed")
        if let broken = advance(until: faultMillis + healMillis) { return broken }
        let states = nodes.map { $0.machine.map { "\($0.state)" } ?? "down" }
        let roles = nodes.compactMap { $0.machine?.state }
        let primaries = roles.filter { if case .primary = $0 { return true } else { return false } }.count
        let backups = roles.filter { if case .backup = $0 { return true } else { return false } }.count
        guard primaries == 1, backups == 1 else { return "after healing, not one primary and one backup: \(states)" }
        let backup = nodes.firstIndex { if case .backup? = $0.machine?.state { return true } else { return false } }!
        guard time - lastHeard(by: nodes[backup].data.follower!) < 1000 else { return "after healing, the backup does not hear its primary: \(states)" }
        return checkData(primary: 1 - backup, backup: backup)
    }

    /// Runs what happens until `end`, checking the invariants after each step.
    mutating func advance(until end: Int64) -> String? {
        while let next = queue.first, next.time <= end {
            queue.removeFirst()
            time = next.time
            runClocks()
            happen(next.what)
            settleData()
            if let broken = check() { return broken }
        }
        time = end
        runClocks()
        return nil
    }

    mutating func schedule(in delay: Int64, _ what: Happening) {
        schedule(at: time + delay, what)
    }

    mutating func schedule(at when: Int64, _ what: Happening) {
        order += 1
        let entry = (time: when, order: order, what: what)
        let index = queue.firstIndex { ($0.time, $0.order) > (entry.time, entry.order) } ?? queue.endIndex
        queue.insert(entry, at: index)
    }

    func log(_ line: @autoclosure () -> String) {
        if tracing { trace.lines.append("\(time) ms: \(line())") }
    }

    // MARK: Faults

    /// Draws a fault (or nothing).
    mutating func fault() {
        let node = random.int(0...1)
        switch random.int(0...11) {
        case 0: apply(.partition)
        case 1: apply(.cut(from: node))
        case 2, 3: apply(.heal)
        case 4: apply(.loss(percent: random.pick([5, 20, 50])))
        case 5: apply(.crash(node, restartAfter: Int64(random.int(100...2000))))
        case 6: apply(.storage(node, fails: !nodes[node].storageFails))
        case 7: apply(.skew(node, by: Int64(random.int(-200...200))))
        case 8: apply(.promote(node))
        case 9: apply(.demote(node))
        default: break
        }
    }

    mutating func apply(_ fault: Fault) {
        switch fault {
        case .partition:
            linkUp = [[true, false], [false, true]]
            log("partition")
        case .cut(let node):
            linkUp[node][1 - node] = false
            log("\(nodes[node].name) cannot reach \(nodes[1 - node].name)")
        case .heal:
            linkUp = [[true, true], [true, true]]
            lossPercent = 0
            log("network healed")
        case .loss(let percent):
            lossPercent = percent
            log("\(lossPercent)% of messages lost")
        case .crash(let node, let restartAfter):
            guard nodes[node].machine != nil else { return }
            crash(node)
            if let restartAfter { schedule(in: restartAfter, .restart(node: node)) }
        case .restart(let node):
            restart(node)
        case .storage(let node, let fails):
            nodes[node].storageFails = fails
            log("\(nodes[node].name) storage \(fails ? "fails" : "works")")
        case .skew(let node, let delta):
            nodes[node].skew += delta
            log("\(nodes[node].name)'s clock jumps \(delta) ms")
        case .promote(let node):
            request(node, .promoteRequested(reason: "operator", automatic: false))
        case .demote(let node):
            request(node, .demoteRequested(reason: "operator"))
        case .pauseWrites:
            writesPaused = true
            log("clients pause")
        case .resumeWrites:
            writesPaused = false
            log("clients write again")
        case .write(let key, let delete):
            clientWrite((key, delete))
        }
    }

    mutating func crash(_ node: Int) {
        log("\(nodes[node].name) crashes")
        stats.crashes += 1
        excuseWritesLost(crashing: node)
        dropLinks(of: node)
        nodes[node].machine = nil
        nodes[node].life += 1
        nodes[node].data.role = .none
        nodes[node].data.handover = nil
    }

    mutating func restart(_ index: Int) {
        guard nodes[index].machine == nil else { return }
        nodes[index].life += 1
        // What the writer committed is all the node has.
        nodes[index].data = NodeData(recovering: nodes[index].data.disk, clock: nodes[index].clock, shards: shards)
        let node = nodes[index]
        let recovered = node.data.recovered
        var machine = Machine(
            configuration: .init(
                hasPeer: true, configuredRole: node.configuredRole, failoverAfterMillis: Self.failoverAfter,
                heartbeatIntervalMillis: Self.heartbeat, recoveredReplicationID: recovered.replicationID, recoveredOffset: recovered.offset
            ),
            epoch: node.storedEpoch
        )
        machine.name = node.name
        nodes[index].machine = machine
        nodes[index].settledEpoch = node.storedEpoch
        log("\(node.name) starts in epoch \(node.storedEpoch) with \(recovered.replicationID) at \(recovered.offset)")
        step(index, .start(now: now(index)), replyTo: nil)
        schedule(in: 50, .tick(node: index, life: nodes[index].life))
    }

    /// An operator's request on `node`; its answer goes nowhere.
    mutating func request(_ node: Int, _ event: Machine.Event) {
        guard nodes[node].machine != nil else { return }
        log("operator → \(nodes[node].name): \(event)")
        step(node, event, replyTo: nil)
    }

    func now(_ node: Int) -> Int64 { time + nodes[node].skew }

    // MARK: What happens

    mutating func happen(_ what: Happening) {
        switch what {
        case .restart(let node):
            restart(node)
        case .fault(let fault):
            apply(fault)
        case .tick(let node, let life):
            guard nodes[node].life == life, let machine = nodes[node].machine else { return }
            // The node's reclaimer of expired items (`MemcacheListener`'s,
            // every `reclaimInterval`; here on some ticks, and while clients
            // write: its removals are changes to replicate too), its
            // periodic pump of its change feed (every 5 ms in `NodeParts`,
            // here at each tick), and the writer's commit.
            if time < options.faultMillis + options.healMillis / 2, random.chance(10),
                case let reclaimed = nodes[node].data.store.reclaimExpired(), reclaimed > 0 {
                stats.reclaimed += reclaimed
                log("\(nodes[node].name) reclaims \(reclaimed) expired items")
            }
            nodes[node].data.feed.pump()
            if !nodes[node].storageFails { commit(node) }
            tickLinks(of: node)
            let observed = Machine.Observation(
                primarySilenceMillis: nodes[node].data.follower.map { time - lastHeard(by: $0) } ?? 0,
                primaryEpoch: nodes[node].data.follower?.link.primary?.epoch ?? 0,
                hasBackup: nodes[node].data.primary?.hasBackup ?? false
            )
            step(node, .tick(now: now(node), observed: observed), replyTo: nil)
            let every = machine.isStarting ? 50 : Self.heartbeat
            schedule(in: every + Int64(random.int(0...10)), .tick(node: node, life: life))
        case .timeout(let id):
            guard let operation = operations.removeValue(forKey: id) else { return }
            complete(operation, with: operation.otherwise)
        case .stored(let id):
            guard let operation = operations.removeValue(forKey: id) else { return }
            let stored = !nodes[operation.node].storageFails
            if stored { commit(operation.node, epoch: nodes[operation.node].machine?.epoch) }
            complete(operation, with: .epochPersisted(stored))
        case .deliver(let to, let message):
            deliver(message, to: to)
        case .clientWrite:
            if time < options.faultMillis + options.healMillis / 2 {
                schedule(in: Int64(random.int(options.writeEvery)), .clientWrite)
            }
            clientWrite()
        case .reconnect(let node, let follower, let attempt):
            linkEvent(node, follower: follower) { $0.retryDue(attempt) }
        case .connectFailed(let node, let follower, let attempt):
            linkEvent(node, follower: follower) { $0.closed(attempt) }
        case .forwardHoldRanOut(let node, let follower, let hold):
            forwardHoldRanOut(node: node, follower: follower, hold: hold)
        case .snapshotPage(let link):
            sendSnapshotPage(link)
        }
    }

    mutating func complete(_ operation: Operation, with event: Machine.Event) {
        guard nodes[operation.node].life == operation.life, nodes[operation.node].machine != nil else { return }
        step(operation.node, event, replyTo: operation.replyTo)
    }

    /// A short link's message: lost when the way is cut, or now and then.
    mutating func send(from node: Int, _ message: Message) {
        guard linkUp[node][1 - node], !random.chance(lossPercent) else { return }
        schedule(in: Int64(random.int(0...random.pick([2, 20, 200]))), .deliver(to: 1 - node, message))
    }

    mutating func deliver(_ message: Message, to node: Int) {
        guard var machine = nodes[node].machine else { return }
        switch message {
        case .question(let from, let operation, let epoch, let name, let question):
            step(node, .peerHello(epoch: epoch, name: name), replyTo: nil)
            machine = nodes[node].machine!
            switch question {
            case .status:
                send(from: node, .answer(operation: operation, .peerStatus(status(of: node))))
            case .hello:
                let identity = Machine.PeerIdentity(name: machine.name, role: machine.nodeRole, epoch: machine.epoch)
                send(from: node, .answer(operation: operation, .peerChecked(identity)))
            case .promote(let reason):
                step(node, .promoteRequested(reason: reason, automatic: false), replyTo: (from, operation))
            }
        case .answer(let id, let event):
            guard let operation = operations.removeValue(forKey: id) else { return }
            complete(operation, with: event)
        case .link(let id, let message):
            receive(message, on: id, at: node)
        }
    }

    /// `node` as its peer's `pairStatus` sees it (`PairRole.status()`).
    func status(of node: Int) -> PairStatus {
        let machine = nodes[node].machine!
        let data = dataPosition(of: node)
        let previous = nodes[node].data.primary?.previous
        return PairStatus(
            nodeName: machine.name, role: machine.nodeRole, configuredRole: nodes[node].configuredRole, epoch: machine.epoch,
            replicationID: data.replicationID, offset: data.offset,
            previousReplicationID: previous?.replicationID ?? .none, forkOffset: previous?.forkOffset ?? 0
        )
    }

    /// Feeds `event` to `node`'s machine and does what it asks, as the shell does.
    mutating func step(_ node: Int, _ event: Machine.Event, replyTo: (node: Int, operation: Int)?) {
        guard var machine = nodes[node].machine else { return }
        let actions = machine.step(event)
        nodes[node].machine = machine
        if !actions.isEmpty { log("\(machine.name) \(event) → \(machine.state) e\(machine.epoch): \(actions)") }
        for action in actions {
            switch action {
            case .probePeer:
                ask(node, .status, timeout: 500, otherwise: .peerStatus(nil), replyTo: replyTo)
            case .checkPeer:
                ask(node, .hello, timeout: 500, otherwise: .peerChecked(nil), replyTo: replyTo)
            case .askPeerToPromote(let reason, let timeout):
                ask(node, .promote(reason: reason), timeout: timeout, otherwise: .peerPromoted(.failure(.peerRefused("timed out"))), replyTo: replyTo)
            case .persistEpoch:
                let id = newOperation(node, otherwise: .epochPersisted(false), replyTo: replyTo)
                schedule(in: Int64(random.int(1...40)), .stored(operation: id))
            case .stopFollowing:
                stopFollowing(node)
            case .probePrimary:
                probePrimary(node)
            case .lead(let lead):
                if lead.isPromotion { stats.promotions += 1 }
                self.lead(node)
            case .follow:
                follow(node)
            case .answer(let outcome):
                if let replyTo {
                    let event: Machine.Event
                    switch outcome {
                    case .success(let epoch): event = .peerPromoted(.success(epoch))
                    case .failure(let refusal): event = .peerPromoted(.failure(.peerRefused("\(refusal)")))
                    }
                    send(from: node, .answer(operation: replyTo.operation, event))
                }
            case .log:
                break
            }
        }
    }

    mutating func newOperation(_ node: Int, otherwise: Machine.Event, replyTo: (node: Int, operation: Int)?) -> Int {
        nextOperation += 1
        operations[nextOperation] = Operation(node: node, life: nodes[node].life, otherwise: otherwise, replyTo: replyTo)
        return nextOperation
    }

    mutating func ask(_ node: Int, _ question: Question, timeout: Int64, otherwise: Machine.Event, replyTo: (node: Int, operation: Int)?) {
        let machine = nodes[node].machine!
        let id = newOperation(node, otherwise: otherwise, replyTo: replyTo)
        schedule(in: timeout, .timeout(operation: id))
        send(from: node, .question(from: node, operation: id, epoch: machine.epoch, name: machine.name, question))
    }

    // MARK: Invariants

    mutating func check() -> String? {
        if let storedEpochWentBack { return storedEpochWentBack }
        if let broken { return broken }
        for index in 0..<2 {
            guard let machine = nodes[index].machine else { continue }
            if machine.acceptsWrites {
                guard nodes[index].storedEpoch >= machine.epoch else {
                    return "\(machine.name) takes writes in epoch \(machine.epoch), having stored \(nodes[index].storedEpoch)"
                }
                nodes[index].ledEpoch = max(nodes[index].ledEpoch, machine.epoch)
                writers[machine.epoch, default: []].insert(machine.name)
                // The nodes promote into disjoint epochs (odd for the one
                // configured as backup, even for the primary), so no two ever
                // lead in one epoch, whether or not they heard each other.
                if writers[machine.epoch]!.count > 1 {
                    return "two nodes took writes in epoch \(machine.epoch)"
                }
            }
            if case .promoting = machine.state { continue }
            guard machine.epoch >= nodes[index].settledEpoch else {
                return "\(machine.name)'s epoch went back from \(nodes[index].settledEpoch) to \(machine.epoch)"
            }
            nodes[index].settledEpoch = machine.epoch
        }
        return nil
    }
}
