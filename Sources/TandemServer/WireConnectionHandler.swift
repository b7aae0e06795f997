import Logging
import MemcacheProtocol
import NIOCore
import Replication
import SessionStore
import WireProtocol

/// One connection to the wire port: the handshake, then requests from a
/// client (`tandemctl`, `TandemClient`) or, from the other node, replication
/// and forwarded writes.
final class WireConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    /// Who is at the other end, as its `hello` said (and, with a secret, proved).
    typealias Link = WireHandshakeAcceptor.Peer

    /// Where the connection is in its life.
    enum State {
        /// `hello`, then `auth` with a secret: the acceptor decides the answers.
        case handshaking(WireHandshakeAcceptor)
        /// Handshake done: requests are served.
        case ready(Link)
        /// A node about to follow this primary sends its versions for merging.
        case reconciling(Link, merge: ReconcileMerge)
        /// The backup's replication connection, run by its session.
        case replicating(ReplicaSession)
        /// Streaming changes for a `watch` (Protocol.md 1.4): only `ping` is served besides.
        case watching(Watcher)
        /// Closing after a protocol error.
        case closed

        /// Whether a frame with the `RESPONSE` flag may arrive now. A node asks
        /// nothing of its clients, so every frame they send is a request; only
        /// a backup answers the primary's heartbeats (`pong`) on its link.
        func acceptsResponse(_ frame: WireFrame) -> Bool {
            switch self {
            case .replicating: return frame.messageType == .pong
            case .handshaking, .ready, .reconciling, .watching, .closed: return false
            }
        }
    }

    let node: ServerContext
    let logger: Logger
    // Internal, not private: the requests in the WireConnectionHandler+… files use them.
    var state: State
    /// The connection's data requests (Protocol.md 1.4.5).
    var data = DataPath()

    init(node: ServerContext, logger: Logger) {
        self.node = node
        self.logger = logger
        self.state = .handshaking(WireHandshakeAcceptor(secret: node.configuration.pair?.secret))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if case .closed = state { return }
        guard !frame.isResponse || state.acceptsResponse(frame) else {
            // An answer where a request belongs: the peer has lost track of the
            // conversation, and nothing it sends can be trusted to mean what it says.
            let type = frame.messageType.map { "\($0)" } ?? "type \(WireMessageType.hex(frame.type))"
            reject(.protocolViolation, "a \(type) frame with the RESPONSE flag (request id \(frame.requestID)) where a request is expected", requestID: nil, context: context)
            return
        }
        let message: WireMessage
        do {
            message = try frame.message()
        } catch {
            reject(error.wireErrorCode ?? .malformed, "\(error)", requestID: frame.requestID, context: context)
            return
        }
        switch state {
        case .handshaking(var acceptor):
            let node = self.node
            let step = acceptor.received(
                message, node: WireHandshakeAcceptor.Node(name: node.nodeName, role: node.role, epoch: node.pair?.epoch ?? 0)
            )
            switch step {
            case .refuse(let code, let reason):
                reject(code, reason, requestID: frame.requestID, context: context)
            case .answer(let answer, let accepted):
                state = accepted.map { .ready($0) } ?? .handshaking(acceptor)
                send(answer, requestID: frame.requestID, context: context)
                // Without a secret a peer's hello counts at once; with one, only once it proved it knows the secret.
                if let accepted { peerSaidHello(accepted) }
            }

        case .ready(let link):
            serve(message, frame: frame, link: link, context: context)

        case .reconciling(let link, var merge):
            switch message {
            case .reconcileChunk(let changes):
                merge.merge(changes, into: node.store, from: link.name, logger: logger)
                state = .reconciling(link, merge: merge)
            case .reconcileEnd(let count):
                guard count == merge.received else {
                    reject(.protocolViolation, "reconcileEnd announced \(count) versions but \(merge.received) arrived", requestID: frame.requestID, context: context)
                    return
                }
                node.pair?.countReconciliation(applied: merge.applied, conflicts: merge.conflicts)
                logger.info("reconciled with \(link.name)", metadata: [
                    "received": "\(merge.received)", "applied": "\(merge.applied)", "conflicts": "\(merge.conflicts)",
                ])
                state = .ready(link)
                send(.reconcileDone(merge.summary), requestID: frame.requestID, context: context)
            default:
                serve(message, frame: frame, link: link, context: context)
            }

        case .replicating(let session):
            // The backup forwards its clients' writes over its replication connection.
            if case .forward(let request) = message {
                runForwarded(request, requestID: frame.requestID, context: context)
            } else {
                session.received(message, requestID: frame.requestID)
            }

        case .watching:
            guard case .ping(let timestamp) = message else {
                reject(.protocolViolation, "this connection is watching: only ping may be sent on it", requestID: frame.requestID, context: context)
                return
            }
            send(.pong(timestampMillis: timestamp), requestID: frame.requestID, context: context)

        case .closed:
            break
        }
    }

    /// A hello from the other node of the pair was accepted (and, with a
    /// secret, proved): its epoch may make this node step down. Only a node
    /// with a `--peer` has a pair to step down in; on any other the hello of
    /// a connection claiming the peer role changes nothing.
    private func peerSaidHello(_ link: Link) {
        guard link.role == .peer, node.configuration.pair?.peer != nil else { return }
        node.pair?.peerSaidHello(epoch: link.epoch, name: link.name)
    }

    private func serve(_ message: WireMessage, frame: WireFrame, link: Link, context: ChannelHandlerContext) {
        let name = link.name
        switch message {
        case .ping(let timestamp):
            send(.pong(timestampMillis: timestamp), requestID: frame.requestID, context: context)
        case .statusRequest, .statsRequest:
            send(.properties(node.properties().map { Property($0.0, $0.1) }), requestID: frame.requestID, context: context)
        case .replicate(let request):
            guard link.role == .peer else {
                reject(.protocolViolation, Self.peerOnly("replicate"), requestID: frame.requestID, context: context)
                return
            }
            guard let primary = node.primary else {
                reject(.notPrimary, notPrimaryMessage("replicate"), requestID: frame.requestID, context: context)
                return
            }
            state = .replicating(ReplicaSession.start(
                on: context.channel, primary: primary, request: request, backupName: name,
                continuingHistories: link.version >= WireVersion.continuedHistory
            ))
        case .forward(let request):
            guard node.primary != nil else {
                reject(.notPrimary, notPrimaryMessage("forward"), requestID: frame.requestID, context: context)
                return
            }
            runForwarded(request, requestID: frame.requestID, context: context)
        case .reconcile(let position):
            guard link.role == .peer else {
                reject(.protocolViolation, Self.peerOnly("reconcile"), requestID: frame.requestID, context: context)
                return
            }
            guard let primary = node.primary else {
                reject(.notPrimary, notPrimaryMessage("reconcile"), requestID: frame.requestID, context: context)
                return
            }
            let watermark = primary.reconcileWatermark(for: position)
            if watermark != .max {
                logger.info("reconciling with \(name)", metadata: [
                    "its_replication_id": "\(position.replicationID)", "its_offset": "\(position.offset)",
                    "watermark": "\(watermark)",
                ])
                state = .reconciling(link, merge: ReconcileMerge(watermark: watermark))
            }
            send(.reconcileFrom(watermark: watermark), requestID: frame.requestID, context: context)
        case .pairStatus:
            servePairStatus(link: link, requestID: frame.requestID, context: context)
        case .promote(let reason):
            changeRole(requestID: frame.requestID, context: context) { pair in
                try await pair.becomePrimary(reason: "requested by \(name): \(reason)", automatic: false)
            }
        case .demote(let reason):
            changeRole(requestID: frame.requestID, context: context) { pair in
                try await pair.demote(reason: "requested by \(name): \(reason)")
            }
        case .scan(let request):
            serveScan(request, requestID: frame.requestID, context: context)
        case .inspect(let key):
            serveInspect(key, requestID: frame.requestID, context: context)
        case .deleteKeys(let keys):
            serveDelete(keys, requestID: frame.requestID, context: context)
        case .importItems(let records):
            serveImport(records, version: link.version, requestID: frame.requestID, context: context)
        case .backup(let path):
            Self.backUp(to: path, persistence: node.persistence, eventLoop: context.eventLoop, logger: logger) { [self] answer in
                send(answer, requestID: frame.requestID, context: context)
            }
        case .get, .store, .touch, .delete:
            receiveData(message, requestID: frame.requestID, link: link, context: context)
        case .watch(let prefix):
            // The watcher unsubscribes itself when the connection closes.
            guard let watcher = Watcher.start(prefix: prefix, requestID: frame.requestID, channel: context.channel, node: node) else {
                refuse(.unavailable, Watcher.noFeedMessage, requestID: frame.requestID, context: context)
                return
            }
            state = .watching(watcher)
        default:
            reject(.protocolViolation, "unexpected \(message.type): not a request a node serves", requestID: frame.requestID, context: context)
        }
    }

    /// Tells the other node of the pair where this node and its data stand,
    /// from the role machine's own state (`PairRole.status()`), typed: the
    /// nodes do not read each other's status properties.
    private func servePairStatus(link: Link, requestID: UInt32, context: ChannelHandlerContext) {
        // A version 3 node does not know the message: answered as it would.
        guard link.version >= WireVersion.pairStatus else {
            reject(.unknownMessage, "pairStatus needs wire version \(WireVersion.pairStatus); this connection speaks \(link.version)", requestID: requestID, context: context)
            return
        }
        guard link.role == .peer else {
            reject(.protocolViolation, Self.peerOnly("pairStatus"), requestID: requestID, context: context)
            return
        }
        guard let pair = node.pair else {
            refuse(.unavailable, "a node without a pair has no pair status", requestID: requestID, context: context)
            return
        }
        send(.pairStatusReply(pair.status()), requestID: requestID, context: context)
    }

    /// Why a message of the replication link is refused on a client's connection.
    static func peerOnly(_ what: String) -> String {
        "\(what) is for the other node of a pair: send it on a connection whose hello said role 2 (peer), not 1 (client)"
    }

    /// Runs a role change and answers with the role and epoch it led to.
    private func changeRole(requestID: UInt32, context: ChannelHandlerContext, _ change: @escaping @Sendable (PairRole) async throws -> UInt64) {
        guard let pair = node.pair else {
            refuse(.unavailable, "a standalone node has no pair to change roles in", requestID: requestID, context: context)
            return
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        Task {
            let result: Result<UInt64, any Error>
            do {
                result = .success(try await change(pair))
            } catch {
                result = .failure(error)
            }
            eventLoop.execute {
                let (handler, context) = bound.value
                switch result {
                case .success(let epoch):
                    handler.send(.roleChanged(role: pair.nodeRole, epoch: epoch), requestID: requestID, context: context)
                case .failure(let error):
                    // The request was valid, the change was not possible.
                    handler.refuse(.unavailable, "\(error)", requestID: requestID, context: context)
                }
            }
        }
    }

    /// A forwarded command, ready to run, and how it is refused if its value
    /// cannot be read.
    private struct ForwardedCommand {
        let isWrite: Bool
        let run: MemcacheConnectionHandler.Command
        let fail: (inout ByteBuffer) -> Void
    }

    /// Runs a memcached request the backup received, as if a client had sent it here.
    private func runForwarded(_ request: ByteBuffer, requestID: UInt32, context: ChannelHandlerContext) {
        var input = request
        let dispatcher = node.dispatcher(on: context.eventLoop)
        var commands: [ForwardedCommand] = []
        do {
            if input.getInteger(at: input.readerIndex, as: UInt8.self) == BinaryDecoder.requestMagic {
                var decoder = BinaryDecoder(limits: node.decoderLimits)
                while let command = try decoder.next(&input) {
                    commands.append(ForwardedCommand(
                        isWrite: command.isWrite, run: { out throws(ValueOnDisk) in try dispatcher.execute(command, into: &out) },
                        fail: { out in dispatcher.replyValueUnreadable(to: command, into: &out) }
                    ))
                }
            } else {
                var decoder = MemcacheDecoder(limits: node.decoderLimits)
                while let command = try decoder.next(&input) {
                    commands.append(ForwardedCommand(
                        isWrite: command.isWrite, run: { out throws(ValueOnDisk) in try dispatcher.execute(command, into: &out) },
                        fail: { out in dispatcher.replyValueUnreadable(to: command, into: &out) }
                    ))
                }
            }
        } catch {
            reject(.malformed, "forwarded request: \(error)", requestID: requestID, context: context)
            return
        }
        node.countForwardedWrite()
        runForwarded(commands, from: 0, reply: context.channel.allocator.buffer(capacity: 256), wrote: false, attempt: 1, requestID: requestID, context: context)
    }

    /// Runs the forwarded commands from `index` on; one that needs a value not
    /// in RAM waits for it to be read (bounded attempts) and the rest follow.
    private func runForwarded(
        _ commands: [ForwardedCommand], from index: Int, reply: ByteBuffer, wrote: Bool, attempt: Int, requestID: UInt32, context: ChannelHandlerContext
    ) {
        var reply = reply
        var wrote = wrote
        var index = index
        while index < commands.count {
            let command = commands[index]
            let mark = reply.writerIndex
            do throws(ValueOnDisk) {
                _ = try command.run(&reply)
            } catch {
                reply.moveWriterIndex(to: mark)
                guard attempt < MemcacheConnectionHandler.coldReadAttempts else {
                    command.fail(&reply)
                    index += 1
                    continue
                }
                let bound = NIOLoopBound((self, context, commands, reply, wrote), eventLoop: context.eventLoop)
                let index = index
                node.loadValue(error, on: context.eventLoop).whenComplete { result in
                    var (handler, context, commands, reply, wrote) = bound.value
                    guard case .failure = result else {
                        handler.runForwarded(commands, from: index, reply: reply, wrote: wrote, attempt: attempt + 1, requestID: requestID, context: context)
                        return
                    }
                    commands[index].fail(&reply)
                    if commands[index].isWrite { wrote = true }
                    handler.runForwarded(commands, from: index + 1, reply: reply, wrote: wrote, attempt: 1, requestID: requestID, context: context)
                }
                return
            }
            if command.isWrite { wrote = true }
            index += 1
        }
        let answer = reply
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let finish: @Sendable () -> Void = { [node] in
            let (handler, context) = loopBound.value
            // A stream offset, which on a promoted node is not its store's sequence number.
            let sequence = node.store.lastSequence
            let offset = node.primary?.offset(ofSequence: sequence) ?? sequence
            handler.send(.forwardReply(offset: offset, reply: answer), requestID: requestID, context: context)
        }
        if wrote, let wait = node.primary?.afterWrites(on: context.eventLoop) {
            wait.whenComplete { _ in finish() }
        } else {
            finish()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushData(context: context)
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .replicating(let session) = state { session.writabilityChanged() }
        if case .ready = state, context.channel.isWritable, !data.busy, data.queue.count < Self.maximumQueuedDataRequests {
            // Reading stopped while the client did not read its answers.
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        context.fireChannelWritabilityChanged()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        node.wireConnections.withLockedValue { $0[ObjectIdentifier(channel)] = channel }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        let id = ObjectIdentifier(context.channel)
        node.wireConnections.withLockedValue { _ = $0.removeValue(forKey: id) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainRequest {
            data.draining = true
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Closed first: the session answers writes whose callbacks may reach this handler again.
        let was = state
        state = .closed
        if case .replicating(let session) = was { session.closed() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .closed = state { return }
        // The frame decoder's errors: the header was not (fully) read, so no request is answered.
        guard let code = (error as? WireProtocolError).map({ $0.wireErrorCode }) ?? .malformed else {
            // A truncated frame: the peer closed its end, there is nobody to tell.
            forget(reason: "\(error)", code: nil, context: context)
            context.close(promise: nil)
            return
        }
        reject(code, "\(error)", requestID: nil, context: context)
    }

    /// An error answer that leaves the connection open: the request was well
    /// formed, it just cannot be served (unlike `reject`, which closes).
    func refuse(_ code: WireErrorCode, _ message: String, requestID: UInt32, context: ChannelHandlerContext) {
        send(.error(WireError(code, message)), requestID: requestID, context: context)
    }

    /// Sends `error` and closes: the stream cannot be trusted any more. With a
    /// `requestID` the error answers that request (its id, `RESPONSE` set);
    /// without, it is unsolicited (id 0, no flag): a framing error, or a frame
    /// that was not a request (Protocol.md 1.5).
    func reject(_ code: WireErrorCode, _ message: String, requestID: UInt32?, context: ChannelHandlerContext) {
        if case .closed = state { return }
        forget(reason: message, code: code, context: context)
        var buffer = context.channel.allocator.buffer(capacity: 64 + message.utf8.count)
        let flags = requestID == nil ? 0 : WireFrame.Flags.response
        guard (try? buffer.writeWireMessage(.error(WireError(code, message)), flags: flags, requestID: requestID ?? 0)) != nil else {
            context.close(promise: nil)
            return
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Ends the connection's state and logs why; the caller closes the channel.
    private func forget(reason: String, code: WireErrorCode?, context: ChannelHandlerContext) {
        let was = state
        state = .closed
        if case .replicating(let session) = was { session.closed() }
        logger.info("closing wire connection", metadata: [
            "reason": "\(reason)", "code": "\(code.map { "\($0)" } ?? "none")", "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")",
        ])
    }

    /// Sends an answer to the request `requestID`: that id, and the `RESPONSE`
    /// flag whatever the id (a request may use 0).
    func send(_ message: WireMessage, requestID: UInt32, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try buffer.writeWireMessage(message, flags: WireFrame.Flags.response, requestID: requestID)
        } catch {
            reject(.internalError, "cannot encode \(message.type): \(error)", requestID: requestID, context: context)
            return
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }
}
