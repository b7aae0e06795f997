import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `--metrics-port`: a small HTTP/1.1 listener for Prometheus (`GET /metrics`)
/// and load balancers or orchestrators (`GET /health`, and `GET /live` for
/// liveness probes).
///
/// It runs on an event loop of its own, so a scrape (which reads every
/// counter and takes the store's shard locks briefly, as `stats` does) or a
/// misbehaving HTTP client never holds up a memcached connection, and it is
/// fenced so that nothing it receives can take the node down: one request per
/// connection (answered with `Connection: close`), no request bodies, small
/// header and request-size limits, an idle timeout, and a cap on open
/// connections.
final class MetricsServer: Sendable {
    /// Where the node is in its life, for /health.
    enum Phase: UInt8 {
        /// Recovering or comparing data with the peer; the memcached port is not open yet.
        case starting
        /// The memcached port accepts connections.
        case serving
        /// Shutting down: draining connections, no longer accepting.
        case stopping
    }

    /// Connections past this many are closed at once: a scraper needs one.
    static let maxConnections = 32
    /// A connection that has not sent a whole request by then is closed.
    static let idleTimeout = TimeAmount.seconds(10)
    /// A request (line and headers; bodies are refused) larger than this is refused.
    static let maxRequestBytes = 16 * 1024

    let localAddress: SocketAddress
    private let channel: any Channel
    private let group: MultiThreadedEventLoopGroup
    private let state: MetricsState

    var port: Int { localAddress.port ?? 0 }

    private init(localAddress: SocketAddress, channel: any Channel, group: MultiThreadedEventLoopGroup, state: MetricsState) {
        self.localAddress = localAddress
        self.channel = channel
        self.group = group
        self.state = state
    }

    /// Binds `host:port` (0 picks a free port) and logs `metrics on HOST:PORT`.
    static func start(host: String, port: Int, context: ServerContext, logger: Logger) async throws -> MetricsServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let state = MetricsState(context: context)
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 4)
                .childChannelInitializer { channel in
                    guard state.admit() else {
                        // Closed before anything is read: the node is not a place to pile up sockets.
                        return channel.close()
                    }
                    channel.closeFuture.whenComplete { _ in state.release() }
                    return channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        try pipeline.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                        try pipeline.addHandler(RequestSizeLimit(limit: maxRequestBytes))
                        var limits = NIOHTTPDecoderLimitConfiguration()
                        limits.maxHeaderFieldSize = 8 * 1024
                        limits.maxHeaderListSize = maxRequestBytes
                        limits.maxHeaderFieldCount = 100
                        // Protocol errors (a malformed request, headers over the limits) get a 400 and a close.
                        try pipeline.configureHTTPServerPipeline(
                            withPipeliningAssistance: false, withErrorHandling: true,
                            withEncoderConfiguration: .init(), withDecoderLimitConfiguration: limits
                        )
                        try pipeline.addHandler(MetricsHTTPHandler(state: state, logger: logger))
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            try? await group.shutdownGracefully()
            throw BindFailure(listener: .metrics, host: host, port: port, error: error)
        }
        guard let localAddress = channel.localAddress else {
            try? await channel.close()
            try? await group.shutdownGracefully()
            throw ServerError.noLocalAddress
        }
        logger.info("metrics on \(host):\(localAddress.port ?? 0)", metadata: ["paths": "/metrics /health /live"])
        return MetricsServer(localAddress: localAddress, channel: channel, group: group, state: state)
    }

    /// The memcached port is open: /health may now report the node as able to serve.
    func markServing() {
        state.phase.store(Phase.serving.rawValue, ordering: .relaxed)
    }

    /// Shutdown has begun: /health answers 503 while the node drains.
    func markStopping() {
        state.phase.store(Phase.stopping.rawValue, ordering: .relaxed)
    }

    /// Closes the listener and its event loop (open requests are cut short).
    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// What the HTTP handlers share: the node, its phase, and the connection count.
final class MetricsState: Sendable {
    let context: ServerContext
    let phase = Atomic<UInt8>(MetricsServer.Phase.starting.rawValue)
    private let open = Atomic<Int>(0)

    init(context: ServerContext) {
        self.context = context
    }

    var currentPhase: MetricsServer.Phase {
        MetricsServer.Phase(rawValue: phase.load(ordering: .relaxed)) ?? .stopping
    }

    /// Takes a connection slot; false when all are taken.
    func admit() -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        guard now <= MetricsServer.maxConnections else {
            open.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func release() {
        open.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// Closes a connection that sends more than `limit` bytes: requests here are
/// a line and a few headers, and nothing past them is ever read.
final class RequestSizeLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: Int
    private var received = 0
    private var refused = false

    init(limit: Int) {
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        received += unwrapInboundIn(data).readableBytes
        guard received <= limit else {
            refused = true
            // Written below the HTTP handlers: the request may be cut anywhere.
            var response = context.channel.allocator.buffer(capacity: 128)
            response.writeString("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            let channel = context.channel
            context.writeAndFlush(NIOAny(response)).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
    }
}

/// Answers one request per connection: `GET /metrics`, `GET /health`,
/// `GET /live` (`HEAD` too); other paths 404, other methods 405, bodies 413.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case awaitingHead
        case awaitingEnd(HTTPRequestHead)
        /// Answered (or refused): whatever else the connection sends is ignored until it closes.
        case answered
    }

    private let state: MetricsState
    private let logger: Logger
    private var request: State = .awaitingHead

    init(state: MetricsState, logger: Logger) {
        self.state = state
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard case .awaitingHead = request else { return }
            if Self.hasBody(head) {
                // Answered at once: nothing here takes a body. The rest of it is read
                // and dropped (up to the size limit), so closing does not reset the
                // connection before the client has read the answer.
                respond(context: context, head: head, with: .text(.payloadTooLarge, "request bodies are not accepted\n"), lingering: true)
                return
            }
            request = .awaitingEnd(head)
        case .body:
            // Only after a head that announced a body, which was refused already.
            return
        case .end:
            guard case .awaitingEnd(let head) = request else { return }
            respond(context: context, head: head, with: route(head))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Parse errors were answered with a 400 by NIO's handler; whatever it is, the connection ends here.
        logger.debug("metrics connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// A response, before it is written.
    enum Response {
        case text(HTTPResponseStatus, String, contentType: String = "text/plain; charset=utf-8", extraHeaders: [(String, String)] = [])
        case bytes(HTTPResponseStatus, [UInt8], contentType: String)
    }

    static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    private func route(_ head: HTTPRequestHead) -> Response {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        let readable = head.method == .GET || head.method == .HEAD
        switch path {
        case "/metrics":
            guard readable else { return .methodNotAllowed }
            let verdict = NodeHealth.evaluate(state.context, phase: state.currentPhase)
            return .bytes(.ok, NodeMetrics(context: state.context).exposition(health: verdict), contentType: Self.metricsContentType)
        case "/health":
            guard readable else { return .methodNotAllowed }
            let verdict = NodeHealth.evaluate(state.context, phase: state.currentPhase)
            return .text(verdict.canServe ? .ok : .serviceUnavailable, verdict.line + "\n")
        case "/live":
            // Liveness, for orchestrators that restart processes: the process
            // answers. /health may say 503 for reasons a restart would make
            // worse (a failing storage).
            guard readable else { return .methodNotAllowed }
            return .text(.ok, "alive\n")
        default:
            return .text(.notFound, "not found: try /metrics, /health or /live\n")
        }
    }

    /// Writes `response` and closes the connection, or with `lingering` only its
    /// output (the peer's end of file or the idle timeout closes the rest).
    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, with response: Response, lingering: Bool = false) {
        request = .answered
        var body = context.channel.allocator.buffer(capacity: 256)
        let status: HTTPResponseStatus
        var headers = HTTPHeaders()
        switch response {
        case .text(let code, let text, let contentType, let extra):
            status = code
            body.writeString(text)
            headers.add(name: "Content-Type", value: contentType)
            for (name, value) in extra { headers.add(name: name, value: value) }
        case .bytes(let code, let bytes, let contentType):
            status = code
            body.writeBytes(bytes)
            headers.add(name: "Content-Type", value: contentType)
        }
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-store")
        let version = head.version.major == 1 && head.version.minor == 0 ? HTTPVersion.http1_0 : .http1_1
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if lingering {
                channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
            } else {
                channel.close(promise: nil)
            }
        }
    }

    /// Whether the request announces a body (a length above 0, or chunks).
    private static func hasBody(_ head: HTTPRequestHead) -> Bool {
        if !head.headers["Transfer-Encoding"].isEmpty { return true }
        return head.headers["Content-Length"].contains { $0.trimmingASCIISpaces != "0" }
    }
}

extension MetricsHTTPHandler.Response {
    static var methodNotAllowed: Self {
        .text(.methodNotAllowed, "method not allowed: use GET\n", extraHeaders: [("Allow", "GET, HEAD")])
    }
}

extension String {
    fileprivate var trimmingASCIISpaces: Substring {
        var text = Substring(self)
        while text.first == " " || text.first == "\t" { text.removeFirst() }
        while text.last == " " || text.last == "\t" { text.removeLast() }
        return text
    }
}
