import Logging
import NIOCore
import NIOPosix
import Replication
import ServiceLifecycle
import SessionPersistence
import SessionStore
import Synchronization
import WireProtocol

/// A node: one store served by its parts, each a service of one
/// swift-service-lifecycle `ServiceGroup`.
///
/// `run` first recovers persisted items into the store (a data directory
/// that cannot be used throws here, before anything listens). Then the parts
/// start one after the other, in this order, each once the one before it runs:
/// 1. persistence: recovery loaded the store before anything else, and the
///    pair decides from what it found; starting runs the writer;
/// 2. the event loops (nothing to start; stopping them closes what is left open);
/// 3. the metrics listener, before the role is settled, so that /health can
///    tell the node is still joining (503) until the memcached port opens;
/// 4. the wire listener: a node compares its data with its peer's over the
///    wire before its memcached port serves anything;
/// 5. the pair, which settles the role (comparing data with the peer);
/// 6. the memcached listener, last: its port accepts connections only once
///    every recovered item is in memory and the role is settled.
///
/// They stop in the reverse order, each once the one after it has stopped:
/// the memcached connections drain, the pair stops the wire port's data
/// writes and lets a connected backup catch up, the listeners close, the
/// event loops end, and persistence commits last, so a graceful stop
/// (SIGTERM) loses nothing. A part that fails to
/// start stops the parts that started, in the same reverse order, and `run`
/// (or `start`) throws its error.
///
/// A standalone node has no wire listener and no pair; a node without
/// persistence or a metrics port has no such part.
public final class TandemNode: Service, Sendable {
    /// The store this node serves (exposed for embedding and tests).
    public let store: SessionStore

    private let configuration: ServerConfiguration
    private let logger: Logger
    /// The memcached listener's gate: open once the node serves.
    private let serving = StartGate()
    private let lifecycle = Mutex(Lifecycle.created(stopRequested: false))
    /// Whether `run` was called: a node runs once.
    private let ran = Atomic<Bool>(false)
    /// `run` in the background, for a node started with `start`.
    private let running = Mutex<Task<Void, any Error>?>(nil)

    /// Where the node is in its life.
    private enum Lifecycle {
        /// Not run yet: nothing recovered, bound or started. A stop asked for
        /// now is remembered, and the node stops as soon as it runs.
        case created(stopRequested: Bool)
        /// Recovered, with its parts running in their group (or stopped).
        case assembled(Parts)
        /// Its recovery failed: no part was made.
        case failed
    }

    /// A recovered node's parts, and the group that runs them.
    private struct Parts {
        let context: ServerContext
        let services: ServiceGroup
        let memcache: MemcacheListener
        let wire: WireListener?
        let metrics: MetricsPart?
    }

    private var parts: Parts? {
        lifecycle.withLock { lifecycle in
            if case .assembled(let parts) = lifecycle { return parts }
            return nil
        }
    }

    /// The memcached port actually bound (with the real port when 0 was asked for); 0 before it is.
    public var port: Int { parts?.context.boundPort.load(ordering: .relaxed) ?? 0 }

    /// The memcached listener's address, once it is bound.
    public var localAddress: SocketAddress? { parts?.memcache.localAddress }

    /// The wire port actually bound, when there is a wire listener.
    public var wirePort: Int? { parts?.wire?.port }

    /// The metrics port actually bound, when there is a metrics listener.
    public var metricsPort: Int? { parts?.metrics?.boundPort }

    /// A node for `configuration`, with its (empty) store. Nothing is read
    /// or bound until `run`; `start` builds and runs a node in the background.
    public init(configuration: ServerConfiguration, clock: any StoreClock = SystemClock(), logger: Logger) throws {
        if let pair = configuration.pair, pair.role == .backup, pair.peer == nil { throw ServerError.backupWithoutPeer }
        var storeConfiguration = configuration.store
        // Persistence and replication both consume the change stream.
        storeConfiguration.recordsChanges = configuration.persistence != nil || configuration.pair != nil
        // With persistence, RAM is a cache of the log: a full store lets clean
        // values go before it loses an item (docs/storage.md).
        storeConfiguration.valuesLeaveRAM = configuration.persistence != nil
        // Only a node with a pair configuration (tandemd's always has one: any
        // node may take a backup) reconciles; one without keeps no tombstones
        // of expiries.
        storeConfiguration.remembersExpiries = configuration.pair != nil
        self.store = SessionStore(configuration: storeConfiguration, clock: clock)
        self.configuration = configuration
        self.logger = logger
    }

    /// Recovers the store (when persistence is on) and makes the parts.
    /// Recovery is the only step that can fail, and it comes first: when it
    /// throws, nothing else has been made.
    private func assemble() throws -> Parts {
        let (configuration, store, logger) = (self.configuration, self.store, self.logger)
        let feed = store.configuration.recordsChanges ? ChangeFeed(store: store) : nil
        let persistence = try configuration.persistence.map {
            try Persistence.open(configuration: $0, store: store, source: feed?.subscribe(), logger: logger)
        }
        if let persistence { store.attachColdValueReader(persistence.values) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        var pair: PairRole?
        if let pairConfiguration = configuration.pair, let feed {
            let role = PairRole(
                configuration: pairConfiguration, store: store, feed: feed, persistence: persistence,
                group: group, logger: logger
            )
            persistence?.setMetaProvider { role.meta() }
            pair = role
        }
        var countersByLoop: [ObjectIdentifier: CommandCounters] = [:]
        for loop in group.makeIterator() {
            countersByLoop[ObjectIdentifier(loop)] = CommandCounters()
        }
        let context = ServerContext(
            configuration: configuration, store: store, persistence: persistence,
            pair: pair, countersByLoop: countersByLoop, logger: logger
        )
        let metrics = configuration.metricsPort.map { MetricsPart(host: configuration.host, port: $0, context: context) }
        let memcache = MemcacheListener(context: context, group: group, announce: { metrics?.announce($0) })
        var wire: WireListener?
        var parts: [any NodePart] = []
        if let persistence { parts.append(PersistencePart(persistence: persistence, logger: logger)) }
        parts.append(EventLoopsPart(group: group))
        if let metrics { parts.append(metrics) }
        if let pairConfiguration = configuration.pair, let feed, let pair {
            let listener = WireListener(configuration: pairConfiguration, context: context, group: group)
            parts.append(listener)
            parts.append(PairPart(pair: pair, feed: feed, context: context, group: group, logger: logger))
            wire = listener
        }
        parts.append(memcache)

        var gate: StartGate?
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        for (index, part) in parts.enumerated() {
            // The last part's gate says the node serves.
            let started = index == parts.count - 1 ? serving : StartGate()
            services.append(.init(
                service: NodePartService(part: part, after: gate, started: started),
                // However a part ends, the others stop in order.
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup,
                serviceName: part.name
            ))
            gate = started
        }
        return Parts(
            context: context, services: ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger)),
            memcache: memcache, wire: wire, metrics: metrics
        )
    }

    /// Recovers the store, then runs the node's parts until graceful shutdown
    /// (a signal of the group running the node, or `shutdown`) and stops
    /// them. Throws why the node could not start: a data directory it cannot
    /// use, or the error of a part, once the parts that did start have stopped.
    public func run() async throws {
        // Its data directory and ports are the node's own: a second run would find them taken.
        guard !ran.exchange(true, ordering: .relaxed) else { throw ServerError.alreadyRun }
        let parts: Parts
        do {
            parts = try assemble()
        } catch {
            lifecycle.withLock { $0 = .failed }
            serving.settle(.abandoned)
            throw error
        }
        let stopRequested = lifecycle.withLock { lifecycle -> Bool in
            defer { lifecycle = .assembled(parts) }
            if case .created(let requested) = lifecycle { return requested }
            return false
        }
        // The group remembers it, and stops the parts as soon as it runs them.
        if stopRequested { await parts.services.triggerGracefulShutdown() }
        do {
            try await parts.services.run()
        } catch {
            logger.debug("the node stopped on an error", metadata: ["error": "\(error)"])
            throw error
        }
        logger.info("stopped")
    }

    /// Returns once the memcached port serves (true), or once it is clear it
    /// never will: recovery or a part failed, or the node was asked to stop first (false).
    public func waitUntilServing() async -> Bool {
        await serving.wait() == .started
    }

    /// Builds a node and runs it in the background; returns once the
    /// memcached port accepts connections, or throws why the node could
    /// not start (having stopped whatever had started).
    public static func start(
        configuration: ServerConfiguration, clock: any StoreClock = SystemClock(), logger: Logger
    ) async throws -> TandemNode {
        let node = try TandemNode(configuration: configuration, clock: clock, logger: logger)
        let task = Task { try await node.run() }
        node.running.withLock { $0 = task }
        guard await node.waitUntilServing() else {
            try await task.value
            // Unreachable in practice: a node that never served was stopped, by an error or by `shutdown`.
            throw ServerError.stoppedBeforeServing
        }
        return node
    }

    /// Stops the node: the parts stop in reverse order (connections drain,
    /// a backup catches up, persistence commits last). For a node started
    /// with `start`, returns once every part has stopped (a second call
    /// waits as well); for one not run yet, the node stops as soon as it runs.
    public func shutdown() async {
        let services = lifecycle.withLock { lifecycle -> ServiceGroup? in
            switch lifecycle {
            case .created:
                lifecycle = .created(stopRequested: true)
                return nil
            case .assembled(let parts):
                return parts.services
            case .failed:
                return nil
            }
        }
        await services?.triggerGracefulShutdown()
        _ = try? await running.withLock({ $0 })?.value
    }
}

/// Errors of the server layer.
public enum ServerError: Error, CustomStringConvertible {
    /// The listener bound but reports no local address.
    case noLocalAddress
    /// A backup needs a primary to replicate from.
    case backupWithoutPeer
    /// The node was stopped before its memcached port opened.
    case stoppedBeforeServing
    /// `run` was called on a node that already ran.
    case alreadyRun

    public var description: String {
        switch self {
        case .noLocalAddress: return "the listening socket has no local address"
        case .backupWithoutPeer: return "a backup needs --peer HOST:PORT, the primary's wire address"
        case .stoppedBeforeServing: return "the node was stopped before its memcached port opened"
        case .alreadyRun: return "this node has already run; make a new one"
        }
    }
}
