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
/// The parts start one after the other, in this order, each once the one
/// before it runs:
/// 1. persistence: recovery already loaded the store when the node was
///    built, before anything else, and the pair decides from what it found;
///    starting runs the writer;
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
/// the memcached connections drain, the pair lets a connected backup catch
/// up, the listeners close, the event loops end, and persistence commits
/// last, so a graceful stop (SIGTERM) loses nothing. A part that fails to
/// start stops the parts that started, in the same reverse order, and `run`
/// (or `start`) throws its error.
///
/// A standalone node has no wire listener and no pair; a node without
/// persistence or a metrics port has no such part.
public final class TandemNode: Service, Sendable {
    /// The store this node serves (exposed for embedding and tests).
    public let store: SessionStore

    private let context: ServerContext
    private let services: ServiceGroup
    private let memcache: MemcacheListener
    private let wire: WireListener?
    private let metrics: MetricsPart?
    /// The memcached listener's gate: open once the node serves.
    private let serving: StartGate
    /// `run` in the background, for a node started with `start`.
    private let running = Mutex<Task<Void, any Error>?>(nil)

    /// The memcached port actually bound (with the real port when 0 was asked for); 0 before it is.
    public var port: Int { context.boundPort.load(ordering: .relaxed) }

    /// The memcached listener's address, once it is bound.
    public var localAddress: SocketAddress? { memcache.localAddress }

    /// The wire port actually bound, when there is a wire listener.
    public var wirePort: Int? { wire?.port }

    /// The metrics port actually bound, when there is a metrics listener.
    public var metricsPort: Int? { metrics?.boundPort }

    /// Builds the node: recovers persisted items into a new store (when
    /// persistence is on) and prepares the parts. Nothing listens until
    /// `run`; `start` builds and runs a node in the background.
    public init(configuration: ServerConfiguration, clock: any StoreClock = SystemClock(), logger: Logger) throws {
        if let pair = configuration.pair, pair.role == .backup, pair.peer == nil { throw ServerError.backupWithoutPeer }
        var storeConfiguration = configuration.store
        // Persistence and replication both consume the change stream.
        storeConfiguration.recordsChanges = configuration.persistence != nil || configuration.pair != nil
        // With persistence, RAM is a cache of the log: a full store lets clean
        // values go before it loses an item (docs/storage.md).
        storeConfiguration.valuesLeaveRAM = configuration.persistence != nil
        let store = SessionStore(configuration: storeConfiguration, clock: clock)
        let feed = storeConfiguration.recordsChanges ? ChangeFeed(store: store) : nil
        // The only step that can fail, and it comes first: when it throws,
        // nothing else has been made.
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
            parts.append(PairPart(pair: pair, feed: feed, group: group, logger: logger))
            wire = listener
        }
        parts.append(memcache)

        var gate: StartGate?
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        for part in parts {
            let started = StartGate()
            services.append(.init(
                service: NodePartService(part: part, after: gate, started: started),
                // However a part ends, the others stop in order.
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup,
                serviceName: part.name
            ))
            gate = started
        }
        self.serving = gate!
        self.services = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        self.store = store
        self.context = context
        self.memcache = memcache
        self.wire = wire
        self.metrics = metrics
    }

    /// Runs the node until graceful shutdown (a signal of the group running
    /// it, or `shutdown`), then stops it. Throws the error of a part that
    /// could not start, once the parts that did have stopped.
    public func run() async throws {
        do {
            try await services.run()
        } catch {
            context.logger.debug("the node stopped on an error", metadata: ["error": "\(error)"])
            throw error
        }
        context.logger.info("stopped")
    }

    /// Returns once the memcached port serves (true), or once it is clear it
    /// never will: a part failed to start, or the node was asked to stop first (false).
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

    /// Stops a node started with `start`: the parts stop in reverse order
    /// (connections drain, a backup catches up, persistence commits last).
    /// Returns once every part has stopped; a second call waits as well.
    public func shutdown() async {
        await services.triggerGracefulShutdown()
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

    public var description: String {
        switch self {
        case .noLocalAddress: return "the listening socket has no local address"
        case .backupWithoutPeer: return "a backup needs --peer HOST:PORT, the primary's wire address"
        case .stoppedBeforeServing: return "the node was stopped before its memcached port opened"
        }
    }
}
