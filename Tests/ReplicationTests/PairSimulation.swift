import Replication
import TandemTestSupport
import WireProtocol

/// Two nodes' `PairStateMachine`s on simulated time and a simulated network,
/// driven by one seed: messages are delayed, dropped, cut one way or both and
/// healed; clocks are skewed; nodes crash and restart with only what they
/// stored; storage refuses commits for a while; operators ask for promotions
/// and hand-overs. It models what the shell (`PairRole`) does with each
/// action: the peer's questions travel as messages and are answered or time
/// out, the epoch is committed after a delay, a backup hears its primary
/// through the replication link's heartbeats.
struct PairSimulation {
    typealias Machine = PairStateMachine

    /// Something the network carries.
    enum Message {
        /// A question on a short link of its own; every one starts with a hello in the sender's epoch.
        case question(from: Int, operation: Int, epoch: UInt64, name: String, Question)
        case answer(operation: Int, Machine.Event)
        /// The backup's replication link saying hello (and asking to replicate).
        case replicate(from: Int, epoch: UInt64, name: String)
        /// The primary's answer to `replicate`: the handshake's hello, with its epoch.
        case greeting(from: Int, epoch: UInt64, name: String)
        /// The primary's stream or heartbeat, with where its data stands.
        case heartbeat(from: Int, data: Position)
    }

    enum Question {
        case status, hello
        case promote(reason: String)
    }

    struct Position: Equatable {
        var id: ReplicationID
        var offset: UInt64
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
    }

    struct Node {
        let name: String
        let configuredRole: NodeRole
        var machine: Machine?
        var life = 0
        var skew: Int64 = 0
        var storageFails = false
        var storedEpoch: UInt64 = 0
        var storedData = Position(id: .none, offset: 0)
        var data = Position(id: .none, offset: 0)
        var lastHeard: Int64 = 0
        var backupUntil: Int64 = 0
        var settledEpoch: UInt64 = 0
        /// The highest epoch of a primary this node followed in this life
        /// (what the simulation saw, whatever the machine made of it).
        var followedEpoch: UInt64 = 0
    }

    let seed: UInt64
    var random: SplitMix64
    var time: Int64 = 0
    var nodes = [Node(name: "a", configuredRole: .primary), Node(name: "b", configuredRole: .backup)]
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
    let tracing: Bool
    static let failoverAfter: Int64 = 600
    static let heartbeat: Int64 = 100

    init(seed: UInt64, tracing: Bool = false) {
        self.seed = seed
        self.random = SplitMix64(seed: seed)
        self.tracing = tracing
    }

    // MARK: Running

    /// Faults for `faultMillis`, then everything healed for `healMillis`;
    /// returns the first broken invariant, if any.
    mutating func run(faultMillis: Int64 = 8_000, healMillis: Int64 = 8_000) -> String? {
        nodes[0].skew = Int64(random.int(-500...500))
        nodes[1].skew = Int64(random.int(-500...500))
        restart(0)
        if random.chance(70) { restart(1) } else { schedule(in: Int64(random.int(0...3000)), .restart(node: 1)) }
        var nextFault: Int64 = Int64(random.int(0...500))
        while time < faultMillis {
            if time >= nextFault {
                fault()
                nextFault = time + Int64(random.int(50...1500))
            }
            if let broken = advance(until: min(nextFault, faultMillis)) { return broken }
        }
        // Heal: both nodes up, the network whole, storage working.
        linkUp = [[true, true], [true, true]]
        lossPercent = 0
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
        guard time - nodes[backup].lastHeard < 1000 else { return "after healing, the backup does not hear its primary: \(states)" }
        return nil
    }

    /// Runs what happens until `end`, checking the invariants after each step.
    mutating func advance(until end: Int64) -> String? {
        while let next = queue.first, next.time <= end {
            queue.removeFirst()
            time = next.time
            happen(next.what)
            if let broken = check() { return broken }
        }
        time = end
        return nil
    }

    mutating func schedule(in delay: Int64, _ what: Happening) {
        order += 1
        let entry = (time: time + delay, order: order, what: what)
        let index = queue.firstIndex { ($0.time, $0.order) > (entry.time, entry.order) } ?? queue.endIndex
        queue.insert(entry, at: index)
    }

    func log(_ line: @autoclosure () -> String) {
        if tracing { trace.lines.append("\(time) ms: \(line())") }
    }

    // MARK: Faults

    mutating func fault() {
        let node = random.int(0...1)
        switch random.int(0...11) {
        case 0:
            linkUp = [[true, false], [false, true]]
            log("partition")
        case 1:
            linkUp[node][1 - node] = false
            log("\(nodes[node].name) cannot reach \(nodes[1 - node].name)")
        case 2, 3:
            linkUp = [[true, true], [true, true]]
            lossPercent = 0
            log("network healed")
        case 4:
            lossPercent = random.pick([5, 20, 50])
            log("\(lossPercent)% of messages lost")
        case 5:
            if nodes[node].machine != nil {
                crash(node)
                schedule(in: Int64(random.int(100...2000)), .restart(node: node))
            }
        case 6:
            nodes[node].storageFails.toggle()
            log("\(nodes[node].name) storage \(nodes[node].storageFails ? "fails" : "works")")
        case 7:
            nodes[node].skew += Int64(random.int(-200...200))
        case 8:
            request(node, .promoteRequested(reason: "operator", automatic: false))
        case 9:
            request(node, .demoteRequested(reason: "operator"))
        default:
            break
        }
    }

    mutating func crash(_ node: Int) {
        log("\(nodes[node].name) crashes")
        nodes[node].machine = nil
        nodes[node].life += 1
    }

    mutating func restart(_ index: Int) {
        guard nodes[index].machine == nil else { return }
        nodes[index].life += 1
        let node = nodes[index]
        var machine = Machine(
            configuration: .init(
                hasPeer: true, configuredRole: node.configuredRole, failoverAfterMillis: Self.failoverAfter,
                heartbeatIntervalMillis: Self.heartbeat, recoveredReplicationID: node.storedData.id, recoveredOffset: node.storedData.offset
            ),
            epoch: node.storedEpoch
        )
        machine.name = node.name
        nodes[index].machine = machine
        nodes[index].data = node.storedData
        nodes[index].settledEpoch = node.storedEpoch
        nodes[index].followedEpoch = 0
        log("\(node.name) starts in epoch \(node.storedEpoch)")
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
        case .tick(let node, let life):
            guard nodes[node].life == life, let machine = nodes[node].machine else { return }
            // The periodic commit, and the writes a primary takes.
            if machine.acceptsWrites { nodes[node].data.offset += UInt64(random.int(0...5)) }
            if !nodes[node].storageFails { commit(node) }
            if machine.acceptsWrites, time < nodes[node].backupUntil {
                send(from: node, .heartbeat(from: node, data: nodes[node].data))
            }
            if case .backup = machine.state { send(from: node, .replicate(from: node, epoch: machine.epoch, name: machine.name)) }
            let observed = Machine.Observation(
                primarySilenceMillis: time - nodes[node].lastHeard, hasBackup: time < nodes[node].backupUntil
            )
            step(node, .tick(now: now(node), observed: observed), replyTo: nil)
            let every = nodes[node].machine?.isStarting == true ? 50 : Self.heartbeat
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
        }
    }

    /// Stores the node's data and epoch: `epoch` for a promotion's own
    /// commit, else the one every commit carries.
    mutating func commit(_ node: Int, epoch: UInt64? = nil) {
        guard let machine = nodes[node].machine else { return }
        let epoch = epoch ?? machine.committableEpoch
        if epoch < nodes[node].storedEpoch { storedEpochWentBack = "\(machine.name) stored epoch \(epoch) over \(nodes[node].storedEpoch)" }
        nodes[node].storedEpoch = epoch
        nodes[node].storedData = nodes[node].data
    }

    mutating func complete(_ operation: Operation, with event: Machine.Event) {
        guard nodes[operation.node].life == operation.life, nodes[operation.node].machine != nil else { return }
        step(operation.node, event, replyTo: operation.replyTo)
    }

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
                let status = PairStatus(
                    nodeName: machine.name, role: machine.nodeRole, configuredRole: nodes[node].configuredRole, epoch: machine.epoch,
                    replicationID: nodes[node].data.id, offset: nodes[node].data.offset
                )
                send(from: node, .answer(operation: operation, .peerStatus(status)))
            case .hello:
                let identity = Machine.PeerIdentity(name: machine.name, role: machine.nodeRole, epoch: machine.epoch)
                send(from: node, .answer(operation: operation, .peerChecked(identity)))
            case .promote(let reason):
                step(node, .promoteRequested(reason: reason, automatic: false), replyTo: (from, operation))
            }
        case .answer(let id, let event):
            guard let operation = operations.removeValue(forKey: id) else { return }
            complete(operation, with: event)
        case .replicate(let from, let epoch, let name):
            step(node, .peerHello(epoch: epoch, name: name), replyTo: nil)
            guard nodes[node].machine!.acceptsWrites else { return }
            nodes[node].backupUntil = time + 3 * Self.heartbeat
            let primary = nodes[node].machine!
            send(from: node, .greeting(from: node, epoch: primary.epoch, name: primary.name))
            send(from: node, .heartbeat(from: node, data: nodes[node].data))
            _ = from
        case .greeting(_, let epoch, let name):
            guard case .backup = machine.state else { return }
            nodes[node].followedEpoch = max(nodes[node].followedEpoch, epoch)
            step(node, .primaryGreeted(epoch: epoch, name: name), replyTo: nil)
        case .heartbeat:
            guard case .backup = machine.state else { return }
            nodes[node].lastHeard = time
            if case .heartbeat(_, let data) = message { nodes[node].data = data }
        }
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
                break
            case .probePrimary:
                send(from: node, .replicate(from: node, epoch: machine.epoch, name: machine.name))
            case .lead:
                nodes[node].data.id = ReplicationID(bytes: random.bytes(16))
            case .follow:
                // A new replication client counts its silence from its start.
                nodes[node].lastHeard = time
                nodes[node].backupUntil = 0
                send(from: node, .replicate(from: node, epoch: machine.epoch, name: machine.name))
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
        for index in 0..<2 {
            guard let machine = nodes[index].machine else { continue }
            if machine.acceptsWrites {
                // A node that followed a primary and then leads (a failover,
                // a hand-over) must lead above it: else the old primary,
                // back, finds its own epoch higher and takes the lead again.
                if machine.epoch <= nodes[index].followedEpoch {
                    return "\(machine.name) leads in epoch \(machine.epoch), not above the epoch \(nodes[index].followedEpoch) of the primary it followed"
                }
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
