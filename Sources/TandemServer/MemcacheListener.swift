import Logging
import MemcacheProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

/// The memcached listener (`--port`): accepts memcached clients, gives each
/// connection a dispatcher over the node's store, sweeps expired items nobody
/// reads, and at a stop lets every connection write the replies it owes.
///
/// The node starts it last: its port serves nothing before the node's role is
/// settled and every recovered item is in memory.
final class MemcacheListener: NodePart {
    let name = "memcached listener"

    private let context: ServerContext
    private let group: MultiThreadedEventLoopGroup
    /// Tells /health (when the node has a metrics port) that the node serves, then that it stops.
    private let announce: @Sendable (MetricsServer.Phase) -> Void
    private let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    /// What a started listener holds.
    private struct Running {
        let channel: any Channel
        let reclaimer: RepeatedTask
    }

    private let running = Mutex<Running?>(nil)

    /// How often expired items nobody reads are swept, and how many slots per shard a sweep examines.
    static let reclaimInterval = TimeAmount.milliseconds(250)
    static let reclaimBudgetPerShard = 2048

    init(context: ServerContext, group: MultiThreadedEventLoopGroup, announce: @escaping @Sendable (MetricsServer.Phase) -> Void) {
        self.context = context
        self.group = group
        self.announce = announce
    }

    /// The address bound, once started (with the real port when 0 was asked for).
    var localAddress: SocketAddress? { running.withLock { $0?.channel.localAddress } }

    func start() async throws {
        let configuration = context.configuration
        let channel: any Channel
        do {
            channel = try await bootstrap().bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw BindFailure(listener: .memcached, host: configuration.host, port: configuration.port, error: error)
        }
        guard let localAddress = channel.localAddress else {
            try? await channel.close()
            throw ServerError.noLocalAddress
        }
        context.boundPort.store(localAddress.port ?? 0, ordering: .relaxed)
        let store = context.store
        let reclaimer = group.next().scheduleRepeatedTask(initialDelay: Self.reclaimInterval, delay: Self.reclaimInterval) { _ in
            store.reclaimExpired(budgetPerShard: Self.reclaimBudgetPerShard)
        }
        running.withLock { $0 = Running(channel: channel, reclaimer: reclaimer) }
        context.logger.info(
            "listening on \(configuration.host):\(localAddress.port ?? 0)",
            metadata: ["threads": "\(configuration.threads)", "memory_limit": "\(configuration.store.memoryLimit)",
                       "shards": "\(store.configuration.shardCount)"]
        )
        announce(.serving)
    }

    /// Stops accepting, then drains the open connections: each writes the
    /// replies it owes and closes, or is closed at the drain timeout.
    func stop() async {
        guard let running = running.withLock({ $0.take() }) else { return }
        context.logger.info("stopping: no longer accepting connections")
        // /health says so while the node drains.
        announce(.stopping)
        try? await running.channel.close()
        running.reclaimer.cancel()
        context.cancelPendingFlush()
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
        context.logger.info("memcached connections drained", metadata: ["drained_connections": "\(open.count)"])
    }

    private func bootstrap() -> ServerBootstrap {
        // Every event loop of the node has its counters (`ServerContext`).
        let (context, connections, countersByLoop) = (self.context, self.connections, self.context.countersByLoop)
        let limits = MemcacheDecoderLimits(maxItemSize: context.configuration.store.maxItemSize)
        let logger = context.logger
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // The end of a client's input does not close the connection at
            // once: its requests are answered first (`MemcacheConnectionHandler`).
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            .childChannelInitializer { channel in
                let counters = countersByLoop[ObjectIdentifier(channel.eventLoop)] ?? CommandCounters()
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
    }
}
