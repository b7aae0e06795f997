import Logging
import MemcacheProtocol
import NIOCore
import Replication
import WireProtocol

/// One connection to the wire port: the handshake, then requests from a
/// client (`tandemctl`, `TandemClient`) or, from the other node, replication
/// and forwarded writes.
final class WireConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    /// Where the connection is in its life.
    enum State {
        /// Nothing received yet: the first frame must be `hello`.
        case awaitingHello
        /// `helloOK` sent with a challenge: only `auth` may come next.
        case awaitingAuth(role: ConnectionRole, name: String, clientNonce: [UInt8], serverNonce: [UInt8])
        /// Handshake done: requests are served.
        case ready(role: ConnectionRole, name: String)
        /// The backup's replication connection, run by its session.
        case replicating(ReplicaSession)
        /// Closing after a protocol error.
        case closed
    }

    private let node: ServerContext
    private let logger: Logger
    private var state: State = .awaitingHello

    init(node: ServerContext, logger: Logger) {
        self.node = node
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let message: WireMessage
        do {
            message = try frame.message()
        } catch {
            reject(error.wireErrorCode ?? .malformed, "\(error)", requestID: frame.requestID, context: context)
            return
        }
        switch state {
        case .awaitingHello:
            guard case .hello(let hello) = message, hello.magic == Hello.magic else {
                reject(.protocolViolation, "the first frame must be hello", requestID: frame.requestID, context: context)
                return
            }
            guard hello.minimumVersion <= WireVersion.maximum, hello.maximumVersion >= WireVersion.minimum,
                hello.minimumVersion <= hello.maximumVersion
            else {
                reject(.unsupportedVersion, "this node speaks versions \(WireVersion.minimum)...\(WireVersion.maximum)", requestID: frame.requestID, context: context)
                return
            }
            let version = min(hello.maximumVersion, WireVersion.maximum)
            let secret = node.configuration.pair?.secret
            if secret != nil, hello.nonce.count != WireSecret.clientNonceLength {
                reject(.malformed, "hello.nonce must be \(WireSecret.clientNonceLength) bytes", requestID: frame.requestID, context: context)
                return
            }
            // A fresh nonce for every connection, so a proof recorded on one answers no other.
            let serverNonce = secret == nil ? [] : WireSecret.randomNonce(count: WireSecret.serverNonceLength)
            // Nodes are not promoted or demoted yet, so every node is in epoch 0.
            send(.helloOK(HelloOK(
                version: version, nodeName: node.nodeName, nodeRole: node.role, epoch: 0,
                authentication: secret == nil ? .none : .hmacSHA256, nonce: serverNonce
            )), requestID: frame.requestID, context: context)
            if secret == nil {
                state = .ready(role: hello.role, name: hello.nodeName)
            } else {
                state = .awaitingAuth(role: hello.role, name: hello.nodeName, clientNonce: hello.nonce, serverNonce: serverNonce)
            }

        case .awaitingAuth(let role, let name, let clientNonce, let serverNonce):
            guard case .auth(let proof) = message else {
                reject(.authenticationRequired, "this node requires authentication: send auth after helloOK", requestID: frame.requestID, context: context)
                return
            }
            guard proof.count == WireSecret.proofLength else {
                reject(.malformed, "auth.proof must be \(WireSecret.proofLength) bytes", requestID: frame.requestID, context: context)
                return
            }
            // The state is entered only with a secret configured, and the configuration does not change.
            guard let secret = node.configuration.pair?.secret,
                secret.isValidClientProof(proof, clientNonce: clientNonce, serverNonce: serverNonce, role: role)
            else {
                reject(.authenticationFailed, "wrong proof: the shared secret differs", requestID: frame.requestID, context: context)
                return
            }
            send(.authOK(proof: secret.serverProof(clientNonce: clientNonce, serverNonce: serverNonce)), requestID: frame.requestID, context: context)
            state = .ready(role: role, name: name)

        case .ready(let role, let name):
            serve(message, frame: frame, role: role, name: name, context: context)

        case .replicating(let session):
            // The backup forwards its clients' writes over its replication connection.
            if case .forward(let request) = message {
                runForwarded(request, requestID: frame.requestID, context: context)
            } else {
                session.received(message, requestID: frame.requestID)
            }

        case .closed:
            break
        }
    }

    private func serve(_ message: WireMessage, frame: WireFrame, role: ConnectionRole, name: String, context: ChannelHandlerContext) {
        switch message {
        case .ping(let timestamp):
            send(.pong(timestampMillis: timestamp), requestID: frame.requestID, context: context)
        case .statusRequest, .statsRequest:
            send(.properties(node.properties().map { Property($0.0, $0.1) }), requestID: frame.requestID, context: context)
        case .replicate(let request):
            guard role == .peer, let primary = node.primary else {
                reject(.notPrimary, "this node is a \(node.role); replicate from the primary", requestID: frame.requestID, context: context)
                return
            }
            state = .replicating(ReplicaSession.start(on: context.channel, primary: primary, request: request, backupName: name))
        case .forward(let request):
            guard node.primary != nil else {
                reject(.notPrimary, "this node is a \(node.role); forward to the primary", requestID: frame.requestID, context: context)
                return
            }
            runForwarded(request, requestID: frame.requestID, context: context)
        default:
            reject(.protocolViolation, "unexpected \(message.type)", requestID: frame.requestID, context: context)
        }
    }

    /// Runs a memcached request the backup received, as if a client had sent it here.
    private func runForwarded(_ request: ByteBuffer, requestID: UInt32, context: ChannelHandlerContext) {
        var input = request
        let dispatcher = node.dispatcher(on: context.eventLoop)
        var reply = context.channel.allocator.buffer(capacity: 256)
        var wrote = false
        do {
            if input.getInteger(at: input.readerIndex, as: UInt8.self) == BinaryDecoder.requestMagic {
                var decoder = BinaryDecoder(limits: node.decoderLimits)
                while let command = try decoder.next(&input) {
                    if command.isWrite { wrote = true }
                    _ = dispatcher.execute(command, into: &reply)
                }
            } else {
                var decoder = MemcacheDecoder(limits: node.decoderLimits)
                while let command = try decoder.next(&input) {
                    if command.isWrite { wrote = true }
                    _ = dispatcher.execute(command, into: &reply)
                }
            }
        } catch {
            reject(.malformed, "forwarded request: \(error)", requestID: requestID, context: context)
            return
        }
        node.countForwardedWrite()
        let answer = reply
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let finish: @Sendable () -> Void = { [node] in
            let (handler, context) = loopBound.value
            handler.send(.forwardReply(offset: node.store.lastSequence, reply: answer), requestID: requestID, context: context)
        }
        if wrote, let wait = node.primary?.afterWrites(on: context.eventLoop) {
            wait.whenComplete { _ in finish() }
        } else {
            finish()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .replicating(let session) = state { session.writabilityChanged() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .replicating(let session) = state { session.closed() }
        state = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let code = (error as? WireProtocolError)?.wireErrorCode ?? .malformed
        reject(code, "\(error)", requestID: 0, context: context)
    }

    /// Answers with an error and closes: the stream cannot be trusted any more.
    private func reject(_ code: WireErrorCode, _ message: String, requestID: UInt32, context: ChannelHandlerContext) {
        if case .closed = state { return }
        if case .replicating(let session) = state { session.closed() }
        state = .closed
        logger.info("closing wire connection", metadata: [
            "reason": "\(message)", "code": "\(code)", "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")",
        ])
        var buffer = context.channel.allocator.buffer(capacity: 64 + message.utf8.count)
        if (try? buffer.writeWireMessage(.error(WireError(code, message)), flags: requestID == 0 ? 0 : WireFrame.Flags.response, requestID: requestID)) != nil {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    private func send(_ message: WireMessage, requestID: UInt32, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try buffer.writeWireMessage(message, flags: requestID == 0 ? 0 : WireFrame.Flags.response, requestID: requestID)
        } catch {
            reject(.internalError, "cannot encode \(message.type): \(error)", requestID: requestID, context: context)
            return
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }
}
