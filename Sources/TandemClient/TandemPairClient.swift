import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemTLS
import WireProtocol

/// A node's wire address.
public struct TandemNodeAddress: Sendable, Hashable, CustomStringConvertible {
    /// A host name or an IP address.
    public var host: String
    /// The node's wire port (`--wire-port`), not its memcached port.
    public var port: Int

    /// The node at `host`, wire port `port`.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`.
    public var description: String { "\(host):\(port)" }
}

/// The two nodes of a pair (or one standalone node).
public struct TandemPair: Sendable, Hashable {
    /// Names the pair on the hash ring: every client given the same names
    /// places every key on the same pair. Keep it when a pair's nodes move.
    public var name: String
    /// The pair's nodes: two, or one standalone node.
    public var nodes: [TandemNodeAddress]

    /// `name` defaults to the first node's address.
    public init(_ nodes: TandemNodeAddress..., name: String? = nil) {
        self.init(nodes: nodes, name: name)
    }

    /// `nodes` holds one node or two (a programming error otherwise: check
    /// what comes from configuration first); `name` defaults to the first
    /// node's address.
    public init(nodes: [TandemNodeAddress], name: String? = nil) {
        precondition((1...2).contains(nodes.count), "a pair has one node or two")
        self.nodes = nodes
        self.name = name ?? nodes[0].description
    }
}

/// A client for one pair of Tandem nodes, or several pairs with the keys
/// spread over them by a consistent hash (`PairRing`).
///
/// It keeps a few connections to every node, opened on first use, each
/// with a bound on the requests in flight on it (`Configuration`). Writes
/// go to the pair's primary: the node whose handshake said primary in the
/// highest epoch. When a request fails because the node went away, the
/// client asks both nodes again where they stand, and follows a promotion
/// within `Configuration.failoverTimeout` (a backup that promoted itself
/// says primary in a higher epoch). A write sent to the backup meanwhile
/// is not lost either: the backup forwards it to its primary, or holds it
/// until it leads (Protocol.md 2.5, 2.6).
///
/// **Retries.** A request is sent again, on another connection or node,
/// only when that cannot do harm:
/// - a `get`, after any failure of the connection or node;
/// - any write the node never ran: it was not sent (the connection had
///   closed), the node could not be reached, or the node said so
///   (`unavailable`: it could not pass the write on to a primary);
/// - `set` and `touch` also when their outcome is unknown (the connection
///   closed or timed out after the request left, or the backup got no
///   answer from the primary): running them twice leaves what running them
///   once does.
/// `add`, `replace`, `compareAndSet` and `delete` are never sent twice when
/// they may have run: their answer would be wrong (an `add` that stored
/// would report the key as existing); the error is thrown instead.
///
/// **Stale reads.** With `ReadPreference.primary` (the default) a read sees
/// every write acknowledged before it. With `.eitherNode` reads are spread
/// over both nodes, and one served by the backup may miss recent writes:
/// a write is acknowledged once the backup applied it only while the pair
/// replicates synchronously (`--replication sync`, the default); with
/// `async`, while the backup resyncs, and once a sync wait timed out
/// (`degraded_async`) the backup may lag the primary. A read of a write
/// still in flight (another task's, not yet acknowledged) may be served by
/// either node before or after it.
///
/// ```swift
/// let sessions = TandemPairClient(pairs: [
///     TandemPair(TandemNodeAddress(host: "10.0.0.1", port: 11311), TandemNodeAddress(host: "10.0.0.2", port: 11311)),
/// ])
/// try await sessions.set("session:42", value: Array("hello".utf8), expiry: .after(.seconds(1800)))
/// let item = try await sessions.get("session:42")
/// await sessions.close()
/// ```
public final class TandemPairClient: Sendable {
    /// Which node serves reads.
    public enum ReadPreference: Sendable, Equatable {
        /// The primary, as writes: every read sees every acknowledged write.
        case primary
        /// Either node, in turn: twice the read capacity; a read served by
        /// the backup may miss recent writes (see the type's documentation).
        case eitherNode
    }

    /// How the client connects, bounds its requests and follows a failover.
    public struct Configuration: Sendable {
        /// The client's name in its handshakes (the nodes log it).
        public var name: String = "tandem-pair-client"
        /// The nodes' shared secret, when they have one (`--secret-file`).
        public var secret: WireSecret?
        /// TLS, when the nodes' wire ports use it.
        public var tls: ClientTLS?
        /// Connections kept to each node.
        public var connectionsPerNode = 2
        /// Requests in flight on one connection at most; more wait for a slot.
        public var maxInFlightPerConnection = 64
        /// How long a connection and its handshake may take.
        public var connectTimeout: Duration = .seconds(2)
        /// How long a sent request may wait for its answer. More than the
        /// longest a node may take to answer a write sent to the backup
        /// during a failover (held up to 0.9 s for a primary, up to 3 s for
        /// the primary's answer, up to 3 s until the backup applied it):
        /// a shorter wait would report such writes as of unknown outcome.
        public var requestTimeout: Duration = .seconds(8)
        /// How long an operation keeps retrying (what may be retried) while
        /// it looks for a node that serves it: more than the pair's
        /// failover time (`--failover-after`, 600 ms by default, plus
        /// the promotion).
        public var failoverTimeout: Duration = .seconds(5)
        /// Which node serves reads.
        public var reads: ReadPreference = .primary
        /// The event loops the connections run on.
        public var group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton

        /// The defaults; set what differs.
        public init() {}
    }

    /// The pairs the keys are spread over.
    public let pairs: [TandemPair]
    public let configuration: Configuration
    private let ring: PairRing
    private let links: [PairLinks]

    /// A client for `pairs` (one or more, each named once: a programming
    /// error otherwise); connects on first use.
    public init(pairs: [TandemPair], configuration: Configuration = Configuration()) {
        precondition(!pairs.isEmpty, "give at least one pair")
        precondition(Set(pairs.map(\.name)).count == pairs.count, "pair names must differ")
        self.pairs = pairs
        self.configuration = configuration
        self.ring = PairRing(names: pairs.map(\.name))
        self.links = pairs.map { PairLinks(pair: $0, configuration: configuration) }
    }

    /// The index in `pairs` of the pair that holds `key`.
    public func pairIndex(for key: String) -> Int {
        ring.pair(for: key.utf8)
    }

    // MARK: Data

    /// The item at `key`, or nil (see `TandemClient.get(_:)`).
    public func get(_ key: String) async throws -> TandemItem? {
        try await run(key, .read) { try await $0.get(key) }
    }

    /// The items found at `keys`: one request per pair they live on, run concurrently.
    public func get(_ keys: [String]) async throws -> [String: TandemItem] {
        var byPair: [Int: [String]] = [:]
        for key in keys { byPair[pairIndex(for: key), default: []].append(key) }
        if byPair.count == 1, let (_, keys) = byPair.first {
            return try await run(keys[0], .read) { try await $0.get(keys) }
        }
        return try await withThrowingTaskGroup(of: [String: TandemItem].self) { group in
            for (_, keys) in byPair {
                group.addTask { try await self.run(keys[0], .read) { try await $0.get(keys) } }
            }
            var found: [String: TandemItem] = [:]
            for try await items in group { found.merge(items) { first, _ in first } }
            return found
        }
    }

    /// Stores `value` whatever `key` holds; returns its new stamp.
    @discardableResult
    public func set(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> UInt64 {
        try await run(key, .repeatableWrite) { try await $0.set(key, value: value, flags: flags, expiry: expiry) }
    }

    /// Stores `value` only if `key` holds nothing; false: the key exists.
    public func add(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> Bool {
        try await run(key, .write) { try await $0.add(key, value: value, flags: flags, expiry: expiry) }
    }

    /// Stores `value` only if `key` holds an item; false: it does not.
    public func replace(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> Bool {
        try await run(key, .write) { try await $0.replace(key, value: value, flags: flags, expiry: expiry) }
    }

    /// Stores `value` only if the item still has `stamp`.
    public func compareAndSet(
        _ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never, stamp: UInt64
    ) async throws -> TandemCASResult {
        try await run(key, .write) { try await $0.compareAndSet(key, value: value, flags: flags, expiry: expiry, stamp: stamp) }
    }

    /// Gives the item a new expiry; false: no such key.
    public func touch(_ key: String, expiry: TandemExpiry) async throws -> Bool {
        try await run(key, .repeatableWrite) { try await $0.touch(key, expiry: expiry) }
    }

    /// Deletes the item; false: there was none.
    public func delete(_ key: String) async throws -> Bool {
        try await run(key, .write) { try await $0.delete(key) }
    }

    /// Closes every connection; requests in flight fail.
    public func close() async {
        for pair in links { await pair.close() }
    }

    // MARK: Routing and retries

    /// What a request is, for routing and for what may be retried.
    enum Operation {
        /// Served by the primary, or either node (`ReadPreference`); always retried.
        case read
        /// Running it twice leaves what running it once does (`set`, `touch`).
        case repeatableWrite
        /// Retried only when it did not run.
        case write
    }

    /// Why a request failed, as far as retrying it goes.
    enum Failure {
        /// The node did not run it: send it again.
        case notRun
        /// It may have run.
        case outcomeUnknown
        /// The request itself was refused (bad key, too large, …): another try gets the same.
        case final
    }

    static func classify(_ error: any Error) -> Failure {
        guard let error = error as? TandemClientError else { return .outcomeUnknown }
        switch error {
        case .notSent, .unreachable, .closedBeforeHandshake:
            return .notRun
        case .server(let wire):
            switch wire.code {
            case .unavailable: return .notRun
            case .outcomeUnknown: return .outcomeUnknown
            default: return .final
            }
        case .connectionClosed, .timedOut:
            return .outcomeUnknown
        case .authenticationRequired, .authenticationFailed, .unexpectedReply, .tls, .unsupported:
            return .final
        }
    }

    /// Whether a request that failed so may be sent again.
    static func mayRetry(_ failure: Failure, _ operation: Operation) -> Bool {
        switch (failure, operation) {
        case (.final, _), (.outcomeUnknown, .write): return false
        case (.notRun, _), (.outcomeUnknown, .read), (.outcomeUnknown, .repeatableWrite): return true
        }
    }

    private func run<T: Sendable>(_ key: String, _ operation: Operation, _ body: @Sendable (TandemClient) async throws -> T) async throws -> T {
        let pair = links[pairIndex(for: key)]
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.failoverTimeout)
        var attempt = 0
        while true {
            let node = await pair.target(for: operation, attempt: attempt)
            do {
                let client = try await node.connection()
                return try await body(client)
            } catch {
                guard Self.mayRetry(Self.classify(error), operation) else { throw error }
                pair.failed(node)
                attempt += 1
                // Back off a little, so that a pair in the middle of a
                // failover is not hammered, and give up at the deadline.
                let pause = Duration.milliseconds(min(200, 10 << min(attempt, 5)))
                guard clock.now.advanced(by: pause) < deadline else { throw error }
                try await Task.sleep(for: pause)
            }
        }
    }
}

/// The connections to one pair's nodes, and which of them leads.
final class PairLinks: Sendable {
    let nodes: [NodeLinks]
    private struct State {
        /// The node believed primary; nil: ask the nodes again.
        var leader: Int?
        /// The next node for reads spread over both.
        var nextRead = 0
        /// The nodes being asked who leads: every caller that needs to know
        /// meanwhile waits for the same answer, so a failover under load
        /// costs one handshake per node per retry, not one per request.
        var probe: Task<Int?, Never>?
    }

    private let state = NIOLockedValueBox(State())

    init(pair: TandemPair, configuration: TandemPairClient.Configuration) {
        nodes = pair.nodes.map { NodeLinks(node: $0, configuration: configuration) }
    }

    /// The node a request goes to.
    func target(for operation: TandemPairClient.Operation, attempt: Int) async -> NodeLinks {
        if case .read = operation, nodes.count > 1, nodes[0].configuration.reads == .eitherNode {
            let index = state.withLockedValue { state -> Int in
                state.nextRead = (state.nextRead + 1) % nodes.count
                return state.nextRead
            }
            return nodes[index]
        }
        if let leader = state.withLockedValue({ $0.leader }) { return nodes[leader] }
        let leader = await findLeader()
        if let leader { return nodes[leader] }
        // No node says primary (a failover is under way): a backup holds a
        // write until it leads, or answers that it did not run it. Take turns.
        return nodes[attempt % nodes.count]
    }

    /// Asks every node where it stands (a fresh handshake each) and takes
    /// the one that says primary in the highest epoch; or waits for the
    /// answer of such a probe already under way.
    private func findLeader() async -> Int? {
        let probe = state.withLockedValue { state -> Task<Int?, Never> in
            if let probe = state.probe { return probe }
            let probe = Task { await self.probeNodes() }
            state.probe = probe
            return probe
        }
        return await probe.value
    }

    private func probeNodes() async -> Int? {
        let hellos = await withTaskGroup(of: (Int, HelloOK?).self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask { (index, await node.probe()) }
            }
            var hellos: [(Int, HelloOK?)] = []
            for await hello in group { hellos.append(hello) }
            return hellos
        }
        let leader = hellos.compactMap { index, hello in hello.map { (index, $0) } }
            .filter { $0.1.nodeRole == .primary }
            .max { $0.1.epoch < $1.1.epoch }?.0
        state.withLockedValue { state in
            if state.leader == nil { state.leader = leader }
            state.probe = nil
        }
        return leader
    }

    /// A request to `node` failed in a way that may mean it no longer leads:
    /// the next request asks the nodes again. (A node that failed but was
    /// not the one believed leading leaves that belief as it is.)
    func failed(_ node: NodeLinks) {
        guard let index = nodes.firstIndex(where: { $0 === node }) else { return }
        state.withLockedValue { state in
            if state.leader == index { state.leader = nil }
        }
    }

    func close() async {
        for node in nodes { await node.close() }
    }
}

/// A few connections to one node, opened on first use and again after they close.
final class NodeLinks: Sendable {
    let node: TandemNodeAddress
    let configuration: TandemPairClient.Configuration

    private enum Slot {
        /// Not connected.
        case empty
        /// A connection being opened; every caller waits for the same one.
        case connecting(Task<TandemClient, any Error>)
        /// Open (until it closes; then it is opened again).
        case open(TandemClient)
    }

    private struct State {
        var slots: [Slot]
        var next = 0
        var closed = false
    }

    private let state: NIOLockedValueBox<State>

    init(node: TandemNodeAddress, configuration: TandemPairClient.Configuration) {
        self.node = node
        self.configuration = configuration
        self.state = NIOLockedValueBox(State(slots: Array(repeating: .empty, count: max(1, configuration.connectionsPerNode))))
    }

    /// One of the node's connections, in turn; opened if it is not open.
    func connection() async throws -> TandemClient {
        enum Pick {
            case ready(TandemClient)
            case wait(Task<TandemClient, any Error>)
        }
        let pick = try state.withLockedValue { state -> Pick in
            guard !state.closed else { throw TandemClientError.notSent(reason: "the client is closed") }
            let index = state.next
            state.next = (state.next + 1) % state.slots.count
            switch state.slots[index] {
            case .open(let client) where client.isOpen:
                return .ready(client)
            case .connecting(let task):
                return .wait(task)
            case .open, .empty:
                let task = Task { try await self.connect() }
                state.slots[index] = .connecting(task)
                Task { await self.settle(index, task) }
                return .wait(task)
            }
        }
        switch pick {
        case .ready(let client): return client
        case .wait(let task): return try await task.value
        }
    }

    /// A fresh connection's handshake, for where the node stands now; the
    /// connection joins the pool in place of a closed one, or is closed.
    func probe() async -> HelloOK? {
        guard let client = try? await connect() else { return nil }
        let kept = state.withLockedValue { state -> Bool in
            guard !state.closed else { return false }
            for index in state.slots.indices {
                switch state.slots[index] {
                case .empty:
                    state.slots[index] = .open(client)
                    return true
                case .open(let old) where !old.isOpen:
                    state.slots[index] = .open(client)
                    return true
                case .open, .connecting:
                    continue
                }
            }
            return false
        }
        if !kept { try? await client.close() }
        return client.server
    }

    private func connect() async throws -> TandemClient {
        try await TandemClient.connect(
            host: node.host, port: node.port, name: configuration.name, secret: configuration.secret, tls: configuration.tls,
            timeout: Self.timeAmount(configuration.connectTimeout), group: configuration.group,
            maxInFlight: configuration.maxInFlightPerConnection, requestTimeout: Self.timeAmount(configuration.requestTimeout)
        )
    }

    /// Puts a connection that opened into its slot, or empties the slot;
    /// one that opened after `close()` is closed.
    private func settle(_ index: Int, _ task: Task<TandemClient, any Error>) async {
        let result = await task.result
        let kept = state.withLockedValue { state -> Bool in
            guard !state.closed, case .connecting(let current) = state.slots[index], current == task else { return false }
            switch result {
            case .success(let client): state.slots[index] = .open(client)
            case .failure: state.slots[index] = .empty
            }
            return true
        }
        if !kept, case .success(let client) = result { try? await client.close() }
    }

    func close() async {
        let clients = state.withLockedValue { state -> [TandemClient] in
            state.closed = true
            let clients = state.slots.compactMap { slot -> TandemClient? in
                if case .open(let client) = slot { return client }
                return nil
            }
            state.slots = state.slots.map { _ in .empty }
            return clients
        }
        for client in clients { try? await client.close() }
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
