import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemTLS
import WireProtocol

/// A connection to a Tandem node's wire port, for administration tools
/// (`tandemctl`) and Swift applications: status and role changes, scans and
/// imports, and (`TandemClient+Data`) an application's typed reads and
/// writes, pipelined. For both nodes of a pair, or several pairs, with
/// failover and retries, use `TandemPairClient`.
///
/// ```swift
/// let client = try await TandemClient.connect(host: "127.0.0.1", port: 11311)
/// for (name, value) in try await client.status() {
///     print(name, value)
/// }
/// try await client.close()
/// ```
public final class TandemClient: Sendable {
    /// What the node said about itself in the handshake.
    public let server: HelloOK
    // Internal, not private: the requests in the TandemClient+… files use them.
    let channel: any Channel
    let handler: ClientHandler
    /// How long a data request may wait for its answer once sent.
    let requestTimeout: TimeAmount
    /// Bounds the data requests in flight on this connection (backpressure).
    let slots: InFlightSlots

    private init(channel: any Channel, handler: ClientHandler, server: HelloOK, requestTimeout: TimeAmount, maxInFlight: Int) {
        self.channel = channel
        self.handler = handler
        self.server = server
        self.requestTimeout = requestTimeout
        self.slots = InFlightSlots(max(1, maxInFlight))
    }

    /// Whether the connection is still open (a closed one fails every request).
    public var isOpen: Bool { channel.isActive }

    /// Connects and runs the handshake.
    ///
    /// With a `secret`, the client proves it knows the node's shared secret
    /// and checks the node's proof that it knows it too (Protocol.md 1.3); a
    /// node that does not ask for the secret is refused, as it cannot prove
    /// it is the node the secret belongs to.
    ///
    /// With `tls`, the connection runs inside TLS (the node's wire port must
    /// use it too); the handshake happens before `hello`, and its failures
    /// are thrown as `TandemClientError.tls`.
    ///
    /// `timeout` bounds the connection and the handshake; `requestTimeout`
    /// (by default `timeout`) each data request's wait for its answer. At
    /// most `maxInFlight` data requests are in flight on the connection at
    /// once; more wait for a slot.
    public static func connect(
        host: String, port: Int, name: String = "tandem-client", secret: WireSecret? = nil,
        tls: ClientTLS? = nil,
        timeout: TimeAmount = .seconds(5), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        role: ConnectionRole = .client, epoch: UInt64 = 0, maxInFlight: Int = 128, requestTimeout: TimeAmount? = nil
    ) async throws -> TandemClient {
        let handler = ClientHandler()
        let channel: any Channel
        do {
            // Without TLS, a node that speaks it is told from one that hangs up.
            channel = try await ClientTLS.connect(host: host, port: port, tls: tls, timeout: timeout, group: group) { channel in
                try channel.pipeline.syncOperations.addHandlers(ByteToMessageHandler(WireFrameDecoder()), handler)
                return channel
            }
        } catch {
            throw TandemClientError.unreachable(host: host, port: port, reason: "\(error)")
        }
        do {
            return try await handshake(
                channel: channel, handler: handler, name: name, secret: secret, timeout: timeout, role: role, epoch: epoch,
                maxInFlight: maxInFlight, requestTimeout: requestTimeout ?? timeout
            )
        } catch let failure as TLSHandshakeFailure {
            throw TandemClientError.tls(host: host, port: port, failure: failure, usingTLS: tls != nil)
        } catch TandemClientError.connectionClosed where tls == nil {
            // A TLS port that closes on plaintext without a word looks like this.
            throw TandemClientError.closedBeforeHandshake(host: host, port: port)
        } catch TandemClientError.notSent where tls == nil {
            // A TLS port that closes on plaintext without a word looks like this.
            throw TandemClientError.closedBeforeHandshake(host: host, port: port)
        }
    }

    /// `hello`, `helloOK` and, with a secret, the authentication (`WireHandshake`).
    private static func handshake(
        channel: any Channel, handler: ClientHandler, name: String, secret: WireSecret?, timeout: TimeAmount,
        role: ConnectionRole, epoch: UInt64, maxInFlight: Int, requestTimeout: TimeAmount
    ) async throws -> TandemClient {
        let handshake = WireHandshake(role: role, nodeName: name, epoch: epoch, secret: secret)
        do {
            let ok = try await handshake.run { message in
                do {
                    return try await handler.request(message, on: channel, timeout: timeout)
                } catch TandemClientError.server(let error) {
                    return .error(error)
                }
            }
            return TandemClient(channel: channel, handler: handler, server: ok, requestTimeout: requestTimeout, maxInFlight: maxInFlight)
        } catch let error as WireHandshakeError {
            try? await channel.close()
            throw TandemClientError(error)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// The node's status: role, epoch, replication position, peer and lag, persistence, items, …
    public func status() async throws -> [(name: String, value: String)] {
        try await properties(.statusRequest)
    }

    /// Every counter the node keeps.
    public func stats() async throws -> [(name: String, value: String)] {
        try await properties(.statsRequest)
    }

    /// Round-trip time to the node.
    public func ping() async throws -> Duration {
        let started = ContinuousClock.now
        let reply = try await handler.request(.ping(timestampMillis: 0), on: channel, timeout: .seconds(5))
        guard case .pong = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to ping") }
        return started.duration(to: .now)
    }

    /// Asks the node to become the primary; returns its epoch then.
    public func promote(reason: String) async throws -> UInt64 {
        try await roleChange(.promote(reason: reason))
    }

    /// Asks a primary to hand over to its peer and become its backup; returns its epoch then.
    public func demote(reason: String) async throws -> UInt64 {
        try await roleChange(.demote(reason: reason))
    }

    private func roleChange(_ request: WireMessage) async throws -> UInt64 {
        let reply = try await handler.request(request, on: channel, timeout: .seconds(10))
        guard case .roleChanged(_, let epoch) = reply else {
            throw TandemClientError.unexpectedReply("\(reply.type) to \(request.type)")
        }
        return epoch
    }

    public func close() async throws {
        try await channel.close()
    }

    /// Sends one request and returns the node's answer; an `error` answer is
    /// thrown as `TandemClientError.server`. For the requests of other files.
    func request(_ message: WireMessage, timeout: TimeAmount) async throws -> WireMessage {
        try await handler.request(message, on: channel, timeout: timeout)
    }

    private func properties(_ request: WireMessage) async throws -> [(name: String, value: String)] {
        let reply = try await handler.request(request, on: channel, timeout: .seconds(10))
        guard case .properties(let properties) = reply else {
            throw TandemClientError.unexpectedReply("\(reply.type) to \(request.type)")
        }
        return properties.map { ($0.name, $0.value) }
    }
}

/// Why a client call failed.
public enum TandemClientError: Error, CustomStringConvertible, Sendable {
    /// No connection could be made.
    case unreachable(host: String, port: Int, reason: String)
    /// The node requires authentication (a shared secret) and none was given.
    case authenticationRequired
    /// The node and this client do not share the secret given (either side's proof was wrong).
    case authenticationFailed(reason: String)
    /// The node answered with an error.
    case server(WireError)
    /// The node answered something that does not fit the request.
    case unexpectedReply(String)
    /// No answer in time.
    case timedOut
    /// The connection closed before the answer came.
    case connectionClosed
    /// The TLS handshake failed (`usingTLS`), or the node answered a
    /// plaintext connection in TLS; `failure.cause` says which side refused what.
    case tls(host: String, port: Int, failure: TLSHandshakeFailure, usingTLS: Bool)
    /// A plaintext connection was closed before the node said `helloOK`.
    case closedBeforeHandshake(host: String, port: Int)
    /// The request was never sent: the connection was already closed. The
    /// node did not run it, so it may be sent again on another connection.
    case notSent(reason: String)
    /// The node speaks an older version of the protocol than this request needs.
    case unsupported(nodeVersion: UInt16, needed: UInt16)

    public var description: String {
        switch self {
        case .unreachable(let host, let port, let reason): return "cannot reach \(host):\(port): \(reason)"
        case .authenticationRequired: return "the node requires authentication; give its shared secret"
        case .authenticationFailed(let reason): return "authentication failed: \(reason)"
        case .server(let error): return "the node answered: \(error.message) (\(error.code))"
        case .unexpectedReply(let what): return "unexpected reply: \(what)"
        case .timedOut: return "the node did not answer in time"
        case .connectionClosed: return "the node closed the connection"
        case .tls(let host, let port, let failure, _): return "TLS with \(host):\(port): \(failure)"
        case .closedBeforeHandshake(let host, let port): return "\(host):\(port) closed the connection before the handshake"
        case .notSent(let reason): return "the request was not sent: \(reason)"
        case .unsupported(let version, let needed): return "the node speaks wire version \(version); this request needs \(needed) (upgrade the node)"
        }
    }

    /// A failed handshake, in the words of a tool's user.
    init(_ error: WireHandshakeError) {
        switch error {
        case .secretRequired: self = .authenticationRequired
        case .nodeWithoutSecret: self = .authenticationFailed(reason: "the node does not require authentication, so it cannot prove it knows the secret")
        case .badNonce(let count): self = .unexpectedReply("a \(count)-byte nonce in helloOK")
        case .proofRefused: self = .authenticationFailed(reason: "the node refused the secret; it is not the node's")
        case .wrongNodeProof: self = .authenticationFailed(reason: "the node's proof is wrong; it does not know the secret")
        case .refused(let error): self = .server(error)
        case .unexpectedReply(let type, let request): self = .unexpectedReply("\(type) to \(request)")
        }
    }
}

/// Matches responses to requests by request id.
final class ClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    struct Pending {
        var nextID: UInt32 = 1
        var promises: [UInt32: EventLoopPromise<WireMessage>] = [:]
        /// Requests answered by any number of frames (`watch`), until the connection closes.
        var streams: [UInt32: ResponseStream] = [:]
        var closed = false
        /// Why the connection closed, when TLS says: what requests fail with.
        var tlsFailure: TLSHandshakeFailure?
        /// An `error` that answered no request (id 0, no RESPONSE flag): the
        /// node's reason for closing the connection (Protocol.md 1.5), which
        /// requests still waiting then fail with instead of a bare close.
        var closingError: WireError?
    }

    let pending = NIOLockedValueBox(Pending())

    func request(_ message: WireMessage, on channel: any Channel, timeout: TimeAmount) async throws -> WireMessage {
        let promise = channel.eventLoop.makePromise(of: WireMessage.self)
        let id: UInt32? = pending.withLockedValue { state in
            guard !state.closed else { return nil }
            let id = state.nextID
            state.nextID = state.nextID &+ 1 == 0 ? 1 : state.nextID &+ 1
            state.promises[id] = promise
            return id
        }
        guard let id else {
            // Every promise must be completed, even one never sent.
            promise.fail(TandemClientError.notSent(reason: "the connection is closed"))
            throw TandemClientError.notSent(reason: "the connection is closed")
        }
        var buffer = channel.allocator.buffer(capacity: 64)
        do {
            try buffer.writeWireMessage(message, requestID: id)
        } catch {
            pending.withLockedValue { $0.promises.removeValue(forKey: id) }?.fail(error)
            throw error
        }
        // A write that fails never reached the socket: the node never saw it.
        // When TLS failed (TLS reports why before it drops the writes it
        // held for its handshake), that is the reason to give.
        channel.writeAndFlush(buffer).whenFailure { [pending] error in
            let (promise, tlsFailure) = pending.withLockedValue { ($0.promises.removeValue(forKey: id), $0.tlsFailure) }
            guard let promise else { return }
            if let failure = tlsFailure ?? TLSHandshakeFailure(error) {
                promise.fail(failure)
            } else {
                promise.fail(TandemClientError.notSent(reason: "\(error)"))
            }
        }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { [pending] in
            pending.withLockedValue { $0.promises.removeValue(forKey: id) }?.fail(TandemClientError.timedOut)
        }
        defer { timer.cancel() }
        return try await promise.futureResult.get()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let (promise, stream) = pending.withLockedValue { ($0.promises.removeValue(forKey: frame.requestID), $0.streams[frame.requestID]) }
        if let stream { return stream.receive(frame) }
        guard let promise else {
            // Unsolicited frames (pings) are not for a request; an unsolicited
            // error says why the node is about to close the connection.
            if frame.flags & WireFrame.Flags.response == 0, case .error(let error)? = try? frame.message() {
                pending.withLockedValue { state in
                    if state.closingError == nil { state.closingError = error }
                }
            }
            return
        }
        do {
            let message = try frame.message()
            if case .error(let error) = message {
                promise.fail(TandemClientError.server(error))
            } else {
                promise.succeed(message)
            }
        } catch {
            promise.fail(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let (promises, streams, tlsFailure, closingError) = pending.withLockedValue { state in
            state.closed = true
            let all = (Array(state.promises.values), Array(state.streams.values), state.tlsFailure, state.closingError)
            state.promises = [:]
            state.streams = [:]
            return all
        }
        let closed = closingError.map { TandemClientError.server($0) } ?? TandemClientError.connectionClosed
        let error: any Error = tlsFailure ?? closed
        for promise in promises { promise.fail(error) }
        for stream in streams { stream.finish(closed) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let failure = TLSHandshakeFailure(error) {
            pending.withLockedValue { state in
                if state.tlsFailure == nil { state.tlsFailure = failure }
            }
        }
        context.close(promise: nil)
    }
}
