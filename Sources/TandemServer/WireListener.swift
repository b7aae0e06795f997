import Logging
import NIOCore
import NIOPosix
import Synchronization
import WireProtocol

/// The wire listener (`--wire-port`): Tandem's own protocol, for the peer's
/// replication and questions and for tandemctl.
///
/// The node starts it before the pair settles its role: the two nodes
/// compare their data over the wire before either memcached port serves.
/// Stopping closes the listening socket only: open wire connections (a
/// backup catching up with a stopping primary) end with the event loops.
final class WireListener: NodePart {
    let name = "wire listener"

    private let configuration: PairConfiguration
    private let context: ServerContext
    private let group: MultiThreadedEventLoopGroup
    private let channel = Mutex<(any Channel)?>(nil)
    /// The port bound, kept after the stop (tests restart a node on it).
    private let boundPort = Atomic<Int>(0)

    init(configuration: PairConfiguration, context: ServerContext, group: MultiThreadedEventLoopGroup) {
        self.configuration = configuration
        self.context = context
        self.group = group
    }

    /// The port bound, once started (the real one when 0 was asked for).
    var port: Int? {
        let port = boundPort.load(ordering: .relaxed)
        return port == 0 ? nil : port
    }

    func start() async throws {
        let bound: any Channel
        do {
            bound = try await bootstrap().bind(host: configuration.wireHost, port: configuration.wirePort).get()
        } catch {
            throw BindFailure(listener: .wire, host: configuration.wireHost, port: configuration.wirePort, error: error)
        }
        channel.withLock { $0 = bound }
        let port = bound.localAddress?.port ?? 0
        boundPort.store(port, ordering: .relaxed)
        context.logger.info(
            "wire protocol ready on \(configuration.wireHost):\(port)",
            metadata: ["role": "\(configuration.role)", "peer": "\(configuration.peer.map { "\($0.host):\($0.port)" } ?? "none")",
                       "replication": "\(configuration.replication.mode.rawValue)"]
        )
        // Unless named, a node is known by its wire address: stable across restarts on the same port.
        let configured = configuration.replication.nodeName
        context.pair?.setName(configured.isEmpty ? "\(configuration.wireHost):\(port)" : configured)
    }

    func stop() async {
        guard let bound = channel.withLock({ $0.take() }) else { return }
        try? await bound.close()
    }

    private func bootstrap() -> ServerBootstrap {
        let (context, logger) = (self.context, self.context.logger)
        return ServerBootstrap(group: group)
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
}
