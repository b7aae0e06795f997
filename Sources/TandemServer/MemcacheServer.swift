import Logging
import MemcacheProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Replication
import ServiceLifecycle
import SessionPersistence
import SessionStore
import Synchronization
import WireProtocol

/// A running node: the memcached listener over one store.
///
/// `start` binds and returns once the port accepts connections; `shutdown`
/// stops accepting, lets every connection write the replies it owes, and
/// releases the event loops.
public final class MemcacheServer: Sendable {
    /// The address actually bound (with the real port when 0 was asked for).
    public let localAddress: SocketAddress
    /// The store this node serves (exposed for embedding and tests).
    public let store: SessionStore

    private let group: MultiThreadedEventLoopGroup
    private let serverChannel: any Channel
    private let context: ServerContext
    private let connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>
    private let reclaimer: RepeatedTask
    /// The wire listener, when the node is part of a pair.
    private let wireChannel: (any Channel)?
    /// Releases the change stream to replication between the writer's commits.
    private let pump: RepeatedTask?
    /// The /metrics and /health listener (`--metrics-port`).
    private let metrics: MetricsServer?

    private let stopped = Synchronization.Atomic<Bool>(false)

    /// The wire port actually bound, when there is a wire listener.
    public var wirePort: Int? { wireChannel?.localAddress?.port }

    /// The metrics port actually bound, when there is a metrics listener.
    public var metricsPort: Int? { metrics?.port }

    /// How often expired items nobody reads are swept, and how many slots per shard a sweep examines.
    static let reclaimInterval = TimeAmount.milliseconds(250)
    static let reclaimBudgetPerShard = 2048

    /// The port the listener is bound to.
    public var port: Int { localAddress.port ?? 0 }

    private init(
        localAddress: SocketAddress, store: SessionStore, group: MultiThreadedEventLoopGroup, serverChannel: any Channel,
        context: ServerContext, connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>, reclaimer: RepeatedTask,
        wireChannel: (any Channel)?, pump: RepeatedTask?, metrics: MetricsServer?
    ) {
        self.metrics = metrics
        self.wireChannel = wireChannel
        self.pump = pump
        self.localAddress = localAddress
        self.store = store
        self.group = group
        self.serverChannel = serverChannel
        self.context = context
        self.connections = connections
        self.reclaimer = reclaimer
    }

    /// Recovers persisted items (when persistence is on), then binds the
    /// listener and starts serving: the port accepts connections only once
    /// every recovered item is in memory.
    public static func start(
        configuration: ServerConfiguration, clock: any StoreClock = SystemClock(), logger: Logger
    ) async throws -> MemcacheServer {
        var storeConfiguration = configuration.store
        // Persistence and replication both consume the change stream.
        storeConfiguration.recordsChanges = configuration.persistence != nil || configuration.pair != nil
        // With persistence, RAM is a cache of the log: a full store lets clean
        // values go before it loses an item (docs/storage.md).
        storeConfiguration.valuesLeaveRAM = configuration.persistence != nil
        let store = SessionStore(configuration: storeConfiguration, clock: clock)
        let feed = storeConfiguration.recordsChanges ? ChangeFeed(store: store) : nil
        var persistence: Persistence?
        if let persistenceConfiguration = configuration.persistence {
            persistence = try Persistence.open(configuration: persistenceConfiguration, store: store, source: feed?.subscribe(), logger: logger)
            store.attachColdValueReader(persistence!.values)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        var pair: PairRole?
        if let pairConfiguration = configuration.pair, let feed {
            if pairConfiguration.role == .backup, pairConfiguration.peer == nil { throw ServerError.backupWithoutPeer }
            let role = PairRole(
                configuration: pairConfiguration, store: store, feed: feed, persistence: persistence,
                group: group, logger: logger
            )
            persistence?.setMetaProvider { role.meta() }
            pair = role
        }
        persistence?.start()
        var countersByLoop: [ObjectIdentifier: CommandCounters] = [:]
        for loop in group.makeIterator() {
            countersByLoop[ObjectIdentifier(loop)] = CommandCounters()
        }
        let context = ServerContext(
            configuration: configuration, store: store, persistence: persistence,
            pair: pair, countersByLoop: countersByLoop, logger: logger
        )
        let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
        let limits = MemcacheDecoderLimits(maxItemSize: configuration.store.maxItemSize)
        let frozenCounters = countersByLoop

        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            .childChannelInitializer { channel in
                let counters = frozenCounters[ObjectIdentifier(channel.eventLoop)] ?? CommandCounters()
                let id = ObjectIdentifier(channel)
                connections.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in
                    _ = connections.withLockedValue { $0.removeValue(forKey: id) }
                }
                let dispatcher = Dispatcher(context: context, counters: counters, eventLoop: channel.eventLoop)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ConnectionGate(context: context),
                        MemcacheConnectionHandler(
                            decoder: MemcacheDecoder(limits: limits), dispatcher: dispatcher,
                            counters: counters, logger: logger
                        )
                    )
                    try context.secure(channel, port: .memcached)
                }
            }

        // The metrics port comes up before the node settles its role, so that
        // /health can tell it is still joining (503) until the memcached port opens.
        var metrics: MetricsServer?
        if let metricsPort = configuration.metricsPort {
            do {
                metrics = try await MetricsServer.start(host: configuration.host, port: metricsPort, context: context, logger: logger)
            } catch {
                try? await group.shutdownGracefully()
                persistence?.stop()
                throw error
            }
        }

        // The wire port comes first: a node compares its data with its peer's
        // (over the wire) before its memcached port serves anything.
        var wireChannel: (any Channel)?
        var pump: RepeatedTask?
        if let pairConfiguration = configuration.pair, let feed, let pair {
            do {
                wireChannel = try await Self.bindWire(pairConfiguration, group: group, context: context, logger: logger)
                // Unless named, a node is known by its wire address: stable across restarts on the same port.
                let configured = pairConfiguration.replication.nodeName
                pair.setName(configured.isEmpty ? "\(pairConfiguration.wireHost):\(wireChannel?.localAddress?.port ?? 0)" : configured)
            } catch {
                await metrics?.stop()
                try? await group.shutdownGracefully()
                persistence?.stop()
                throw error
            }
            pump = group.next().scheduleRepeatedTask(initialDelay: pumpInterval, delay: pumpInterval) { _ in feed.pump() }
            await pair.join()
            pair.startTimers()
        }
        let serverChannel: any Channel
        do {
            serverChannel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            let failure = BindFailure(listener: .memcached, host: configuration.host, port: configuration.port, error: error)
            pair?.stopTimers()
            pair?.replica?.stop()
            pump?.cancel()
            try? await wireChannel?.close()
            await metrics?.stop()
            try? await group.shutdownGracefully()
            persistence?.stop()
            throw failure
        }
        guard let localAddress = serverChannel.localAddress else {
            try? await serverChannel.close()
            await metrics?.stop()
            try? await group.shutdownGracefully()
            throw ServerError.noLocalAddress
        }
        context.boundPort.store(localAddress.port ?? 0, ordering: .relaxed)
        let reclaimer = group.next().scheduleRepeatedTask(initialDelay: reclaimInterval, delay: reclaimInterval) { _ in
            store.reclaimExpired(budgetPerShard: reclaimBudgetPerShard)
        }
        logger.info(
            "listening on \(configuration.host):\(localAddress.port ?? 0)",
            metadata: ["threads": "\(configuration.threads)", "memory_limit": "\(configuration.store.memoryLimit)",
                       "shards": "\(store.configuration.shardCount)"]
        )
        metrics?.markServing()
        return MemcacheServer(
            localAddress: localAddress, store: store, group: group, serverChannel: serverChannel,
            context: context, connections: connections, reclaimer: reclaimer, wireChannel: wireChannel, pump: pump,
            metrics: metrics
        )
    }

    /// How often the change stream is released to replication when no write triggers it
    /// (expiry, eviction, and changes whose predecessor was still being recorded).
    static let pumpInterval = TimeAmount.milliseconds(5)

    private static func bindWire(_ pair: PairConfiguration, group: MultiThreadedEventLoopGroup, context: ServerContext, logger: Logger) async throws -> any Channel {
        let channel: any Channel
        do {
            channel = try await wireBootstrap(group: group, context: context, logger: logger)
                .bind(host: pair.wireHost, port: pair.wirePort).get()
        } catch {
            throw BindFailure(listener: .wire, host: pair.wireHost, port: pair.wirePort, error: error)
        }
        logger.info(
            "wire protocol ready on \(pair.wireHost):\(channel.localAddress?.port ?? 0)",
            metadata: ["role": "\(pair.role)", "peer": "\(pair.peer.map { "\($0.host):\($0.port)" } ?? "none")",
                       "replication": "\(pair.replication.mode.rawValue)"]
        )
        return channel
    }

    private static func wireBootstrap(group: MultiThreadedEventLoopGroup, context: ServerContext, logger: Logger) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 1 << 20, high: 4 << 20))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(WireFrameDecoder()),
                        WireConnectionHandler(node: context, logger: logger)
                    )
                    try context.secure(channel, port: .wire)
                }
            }
    }

    /// How long a stopping primary waits for its backup to acknowledge the rest of the stream.
    static let backupCatchUpTimeout = TimeAmount.seconds(2)

    /// Stops accepting, drains open connections (bounded by the drain timeout),
    /// lets a connected backup catch up (bounded too), and stops the event loops.
    public func shutdown() async {
        // A second call (an embedder's, after a test's) has nothing left to do.
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        context.logger.info("stopping: no longer accepting connections")
        // /health says so while the node drains; the listener itself closes last.
        metrics?.markStopping()
        try? await serverChannel.close()
        reclaimer.cancel()
        context.pair?.stopTimers()
        context.replica?.stop()
        try? await wireChannel?.close()
        context.cancelPendingFlush()
        // Wire clients stop taking data writes first (they are answered
        // `unavailable`, not run), so every write this node acknowledged is
        // in the stream the backup catches up on below.
        for channel in context.wireConnections.withLockedValue({ Array($0.values) }) {
            channel.pipeline.fireUserInboundEventTriggered(DrainRequest())
        }
        let open = connections.withLockedValue { Array($0.values) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(DrainRequest())
        }
        let deadline = NIODeadline.now() + .seconds(context.configuration.drainTimeoutSeconds)
        for channel in open {
            let closed = channel.closeFuture
            let timeout = channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
            try? await closed.get()
            timeout.cancel()
        }
        if let primary = context.primary {
            // No client writes arrive any more: let the backup receive what is
            // still on its way, so that when it takes over it has everything.
            switch await primary.waitForBackupToCatchUp(timeout: Self.backupCatchUpTimeout, on: group.next()) {
            case .noBackup:
                break
            case .caughtUp(let offset):
                context.logger.info("backup has every change", metadata: ["offset": "\(offset)"])
            case .behind(let acknowledged, let end):
                context.logger.warning("backup did not catch up before the stop", metadata: [
                    "acknowledged": "\(acknowledged)", "offset": "\(end)",
                    "waited_ms": "\(Self.backupCatchUpTimeout.nanoseconds / 1_000_000)",
                ])
            }
        }
        pump?.cancel()
        await metrics?.stop()
        try? await group.shutdownGracefully()
        if let persistence = context.persistence {
            // Every acknowledged change reaches the file before the process exits.
            persistence.stop()
            context.logger.info("persistence flushed", metadata: ["file": "\(persistence.dataDirectory)"])
        }
        context.logger.info("stopped", metadata: ["drained_connections": "\(open.count)"])
    }
}

/// Errors of the server layer.
public enum ServerError: Error, CustomStringConvertible {
    /// The listener bound but reports no local address.
    case noLocalAddress
    /// A backup needs a primary to replicate from.
    case backupWithoutPeer

    public var description: String {
        switch self {
        case .noLocalAddress: return "the listening socket has no local address"
        case .backupWithoutPeer: return "a backup needs --peer HOST:PORT, the primary's wire address"
        }
    }
}

/// Runs a node inside a swift-service-lifecycle `ServiceGroup`: serves until
/// graceful shutdown is requested (SIGTERM/SIGINT), then drains and stops.
public struct TandemService: Service {
    public let configuration: ServerConfiguration
    public let logger: Logger

    public init(configuration: ServerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let server = try await MemcacheServer.start(configuration: configuration, logger: logger)
        // Started by systemd as Type=notify: units after this one start now.
        let systemd = SystemdNotifier.fromEnvironment()
        notify(systemd, "READY=1\nSTATUS=serving memcached on \(configuration.host):\(server.port)")
        try? await gracefulShutdown()
        notify(systemd, "STOPPING=1\nSTATUS=stopping: draining connections")
        await server.shutdown()
    }

    private func notify(_ systemd: SystemdNotifier?, _ state: String) {
        guard let systemd else { return }
        do {
            try systemd.notify(state)
        } catch {
            logger.warning("cannot notify systemd", metadata: ["error": "\(error)"])
        }
    }
}
