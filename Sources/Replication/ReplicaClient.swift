import Logging
import NIOCore
import NIOPosix
import SessionStore
import Synchronization
import WireProtocol

/// A backup's side of replication: a connection to the primary that resyncs,
/// applies the change stream to the local store (and so to its SQLite),
/// acknowledges it, forwards the memcached writes the backup receives, and
/// reconnects with back-off when the link drops.
public final class ReplicaClient: Sendable {
    /// The connection's phases, as `stats` shows them (`link_state`).
    public enum LinkState: String, Sendable {
        case connecting
        case handshaking
        case resyncing
        case streaming
        case down
        case stopped
    }

    /// Where the backup's data stands in the primary's history.
    public struct Position: Sendable, Equatable {
        public var replicationID: ReplicationID
        public var offset: UInt64

        public init(replicationID: ReplicationID, offset: UInt64) {
            self.replicationID = replicationID
            self.offset = offset
        }
    }

    struct Shared {
        var linkState: LinkState = .down
        var position: Position
        /// The channel once the handshake is done.
        var channel: (any Channel)?
        var stopped = false
        var attempts = 0
        var fullResyncs: UInt64 = 0
        var partialResyncs: UInt64 = 0
        var primaryName = ""
        var lastContact: Int64 = 0
        var nextRequestID: UInt32 = 1
        var pendingForwards: [UInt32: EventLoopPromise<(UInt64, ByteBuffer)>] = [:]
    }

    public let configuration: ReplicationConfiguration
    public let peerHost: String
    public let peerPort: Int
    let store: SessionStore
    let group: any EventLoopGroup
    let logger: Logger
    /// The stream positions applied; forwarded replies wait here.
    public let applied = OffsetWaiters()
    private let shared: Mutex<Shared>

    /// Back-off between connection attempts: doubles from the first to the last.
    static let reconnectDelays: (first: TimeAmount, last: TimeAmount) = (.milliseconds(50), .seconds(2))
    /// How long a forwarded write may take before the client is told the primary is unavailable.
    static let forwardTimeout = TimeAmount.seconds(3)

    public init(
        peerHost: String, peerPort: Int, store: SessionStore, position: Position, configuration: ReplicationConfiguration,
        group: any EventLoopGroup, logger: Logger
    ) {
        self.peerHost = peerHost
        self.peerPort = peerPort
        self.store = store
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.shared = Mutex(Shared(position: position))
        applied.reset(to: position.offset)
    }

    /// The position to persist with the backup's items. While a snapshot is
    /// being received the data matches no position, so it reads as none.
    public var position: Position { shared.withLock { $0.position } }

    public var linkState: LinkState { shared.withLock { $0.linkState } }

    public func start() {
        connect()
    }

    public func stop() {
        let channel = shared.withLock { shared -> (any Channel)? in
            shared.stopped = true
            shared.linkState = .stopped
            return shared.channel
        }
        channel?.close(promise: nil)
        failForwards()
    }

    // MARK: Connection

    private func connect() {
        guard shared.withLock({ state -> Bool in
            guard !state.stopped else { return false }
            state.linkState = .connecting
            return true
        }) else { return }
        let handler = ReplicaConnectionHandler(client: self)
        ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(configuration.linkTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(WireFrameDecoder()), handler
                    )
                }
            }
            .connect(host: peerHost, port: peerPort)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    shared.withLock { $0.linkState = .handshaking }
                    channel.closeFuture.whenComplete { _ in self.disconnected() }
                case .failure(let error):
                    logger.debug("cannot reach the primary", metadata: ["peer": "\(peerHost):\(peerPort)", "error": "\(error)"])
                    disconnected()
                }
            }
    }

    private func disconnected() {
        let (delay, wasUp) = shared.withLock { shared -> (TimeAmount?, Bool) in
            let wasUp = shared.channel != nil
            shared.channel = nil
            guard !shared.stopped else { return (nil, wasUp) }
            shared.linkState = .down
            shared.attempts += 1
            let exponent = min(shared.attempts - 1, 10)
            let delay = min(Self.reconnectDelays.first.nanoseconds << exponent, Self.reconnectDelays.last.nanoseconds)
            return (.nanoseconds(delay), wasUp)
        }
        if wasUp { logger.warning("replication link to the primary is down; reconnecting", metadata: ["peer": "\(peerHost):\(peerPort)"]) }
        failForwards()
        guard let delay else { return }
        group.next().scheduleTask(in: delay) { self.connect() }
    }

    private func failForwards() {
        let pending = shared.withLock { shared -> [EventLoopPromise<(UInt64, ByteBuffer)>] in
            let pending = Array(shared.pendingForwards.values)
            shared.pendingForwards = [:]
            return pending
        }
        for promise in pending { promise.fail(ForwardError.primaryUnavailable) }
    }

    // MARK: Events from the connection handler (on its event loop)

    func handshakeDone(channel: any Channel, primaryName: String) {
        let position = shared.withLock { shared -> Position in
            shared.channel = channel
            shared.linkState = .resyncing
            shared.attempts = 0
            shared.primaryName = primaryName
            return shared.position
        }
        logger.info("connected to the primary", metadata: [
            "peer": "\(peerHost):\(peerPort)", "primary": "\(primaryName)",
            "replication_id": "\(position.replicationID)", "offset": "\(position.offset)",
        ])
    }

    func contact() {
        let now = store.now()
        shared.withLock { $0.lastContact = now }
    }

    func fullResyncStarted(_ resync: FullResync) {
        shared.withLock { shared in
            // Until the snapshot is complete the local data matches no position.
            shared.position = Position(replicationID: .none, offset: 0)
            shared.fullResyncs += 1
        }
        applied.reset(to: 0)
        store.flushAll()
        logger.info("full resync: receiving a snapshot", metadata: [
            "replication_id": "\(resync.replicationID)", "offset": "\(resync.offset)",
            "items": "\(resync.estimatedItems)", "bytes": "\(resync.estimatedBytes)",
        ])
    }

    func fullResyncFinished(replicationID: ReplicationID, offset: UInt64, items: UInt64, seconds: Double) {
        shared.withLock { shared in
            shared.position = Position(replicationID: replicationID, offset: offset)
            shared.linkState = .streaming
        }
        applied.reset(to: offset)
        logger.info("full resync done", metadata: ["items": "\(items)", "seconds": "\(seconds)", "offset": "\(offset)"])
    }

    func partialResync(replicationID: ReplicationID, offset: UInt64) -> Bool {
        let accepted = shared.withLock { shared -> Bool in
            guard shared.position.replicationID == replicationID, shared.position.offset == offset else { return false }
            shared.linkState = .streaming
            shared.partialResyncs += 1
            return true
        }
        if accepted { logger.info("partial resync", metadata: ["from_offset": "\(offset + 1)"]) }
        return accepted
    }

    /// Applies a frame of changes; returns the new applied offset.
    func apply(_ changes: [ReplicatedChange]) -> UInt64 {
        var offset = shared.withLock { $0.position.offset }
        for change in changes where change.offset > offset {
            switch change.kind {
            case .upsert:
                change.key.withUnsafeReadableBytes { key in
                    change.value.withUnsafeReadableBytes { value in
                        _ = store.applyUpsert(key, value: value, flags: change.flags, deadline: Deadline(millis: change.deadlineMillis), cas: change.cas)
                    }
                }
            case .remove:
                change.key.withUnsafeReadableBytes { _ = store.applyRemove($0) }
            case .flushAll:
                store.flushAll()
            }
            offset = change.offset
        }
        shared.withLock { $0.position.offset = offset }
        applied.reach(offset)
        return offset
    }

    /// Applies snapshot items (the position stays none until the snapshot ends).
    func applySnapshot(_ items: [ReplicatedItem]) {
        for item in items {
            item.key.withUnsafeReadableBytes { key in
                item.value.withUnsafeReadableBytes { value in
                    _ = store.applyUpsert(key, value: value, flags: item.flags, deadline: Deadline(millis: item.deadlineMillis), cas: item.cas)
                }
            }
        }
    }

    func completeForward(requestID: UInt32, result: Result<(UInt64, ByteBuffer), any Error>) {
        let promise = shared.withLock { $0.pendingForwards.removeValue(forKey: requestID) }
        promise?.completeWith(result)
    }

    // MARK: Forwarding

    /// Why a forwarded write got no answer from the primary.
    public enum ForwardError: Error, CustomStringConvertible {
        case primaryUnavailable
        case rejected(WireError)

        public var description: String {
            switch self {
            case .primaryUnavailable: return "primary unavailable"
            case .rejected(let error): return "primary refused: \(error.message)"
            }
        }
    }

    /// Sends one memcached request to the primary and returns its reply once
    /// this backup has applied the stream up to the write.
    public func forward(_ request: ByteBuffer, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: (UInt64, ByteBuffer).self)
        let target = shared.withLock { shared -> ((any Channel), UInt32)? in
            guard let channel = shared.channel, shared.linkState == .streaming || shared.linkState == .resyncing else {
                return nil
            }
            let id = shared.nextRequestID
            shared.nextRequestID = shared.nextRequestID &+ 1 == 0 ? 1 : shared.nextRequestID &+ 1
            shared.pendingForwards[id] = promise
            return (channel, id)
        }
        guard let (channel, requestID) = target else {
            promise.fail(ForwardError.primaryUnavailable)
            return promise.futureResult.map { $0.1 }
        }
        var frame = channel.allocator.buffer(capacity: request.readableBytes + 32)
        do {
            try frame.writeWireMessage(.forward(request: request), requestID: requestID)
        } catch {
            completeForward(requestID: requestID, result: .failure(error))
            return promise.futureResult.map { $0.1 }
        }
        channel.writeAndFlush(frame, promise: nil)
        let timeout = eventLoop.scheduleTask(in: Self.forwardTimeout) {
            self.completeForward(requestID: requestID, result: .failure(ForwardError.primaryUnavailable))
        }
        let applied = self.applied
        return promise.futureResult.flatMap { offset, reply in
            timeout.cancel()
            // Answer only once a read on this backup sees the write.
            return applied.wait(for: offset, on: eventLoop, timeout: Self.forwardTimeout).map { reply }
        }
    }

    // MARK: Statistics

    public func statistics() -> [(String, String)] {
        let shared = self.shared.withLock { $0 }
        let now = store.now()
        return [
            ("role", "backup"),
            ("replication_id", shared.position.replicationID.description),
            ("replication_offset", "\(shared.position.offset)"),
            ("link_state", shared.linkState.rawValue),
            ("peer", "\(peerHost):\(peerPort)"),
            ("peer_name", shared.primaryName.isEmpty ? "none" : shared.primaryName),
            ("peer_last_contact_ms", shared.lastContact == 0 ? "-1" : "\(max(0, now - shared.lastContact))"),
            ("full_resyncs", "\(shared.fullResyncs)"),
            ("partial_resyncs", "\(shared.partialResyncs)"),
        ]
    }
}

/// The backup's replication connection: runs the handshake and the resync,
/// hands changes to the client, acknowledges, and keeps the link alive.
final class ReplicaConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched only on the channel's event loop.
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    /// Where the connection is.
    enum State {
        /// `hello` sent, waiting for `helloOK`.
        case awaitingHelloOK
        /// `auth` sent, waiting for the primary's `authOK` and its proof.
        case awaitingAuthOK(HelloOK)
        /// `replicate` sent, waiting for `fullResync` or `partialResync`.
        case awaitingResync
        /// Receiving a snapshot; progress is logged about once a second.
        case receivingSnapshot(FullResync, items: UInt64, started: ContinuousClock.Instant, reported: ContinuousClock.Instant)
        /// Receiving the change stream.
        case streaming
    }

    private let client: ReplicaClient
    private var state: State = .awaitingHelloOK
    private var lastSent = NIODeadline.now()
    private var lastReceived = NIODeadline.now()
    private var ackOwed: UInt64?
    private var heartbeat: RepeatedTask?
    /// The nonce of this connection's `hello`, bound into both proofs.
    private var nonce: [UInt8] = []

    init(client: ReplicaClient) {
        self.client = client
    }

    func channelActive(context: ChannelHandlerContext) {
        nonce = WireSecret.randomNonce(count: WireSecret.clientNonceLength)
        send(.hello(Hello(
            minimumVersion: WireVersion.minimum, maximumVersion: WireVersion.maximum, role: .peer,
            nodeName: client.configuration.nodeName, nonce: nonce
        )), context: context)
        let interval = client.configuration.heartbeatInterval
        let timeout = client.configuration.linkTimeout
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = bound.value
            let now = NIODeadline.now()
            if now - handler.lastReceived > timeout {
                handler.client.logger.warning("no message from the primary; closing the link", metadata: ["timeout_ms": "\(timeout.nanoseconds / 1_000_000)"])
                context.close(promise: nil)
            } else if now - handler.lastSent >= interval {
                handler.send(.ping(timestampMillis: handler.client.store.now()), context: context)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        heartbeat?.cancel()
        heartbeat = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastReceived = .now()
        client.contact()
        let message: WireMessage
        do {
            message = try frame.message()
        } catch {
            fail("undecodable \(frame.messageType.map { "\($0)" } ?? "frame type \(frame.type)"): \(error)", context: context)
            return
        }
        switch (state, message) {
        case (.awaitingHelloOK, .helloOK(let ok)):
            guard ok.nodeRole == .primary else {
                fail("the peer is a \(ok.nodeRole), not a primary", context: context)
                return
            }
            switch (ok.authentication, client.configuration.secret) {
            case (.none, nil):
                startReplicating(after: ok, context: context)
            case (.none, .some):
                // Replicating from a node that cannot prove it knows the secret
                // would let anyone who can pose as the primary feed this node data.
                fail("the primary does not require authentication but this node has a secret: start the primary with the same --secret-file", context: context)
            case (.hmacSHA256, nil):
                fail("the primary requires authentication; start this node with --secret-file", context: context)
            case (.hmacSHA256, let secret?):
                guard ok.nonce.count == WireSecret.serverNonceLength else {
                    fail("the primary's nonce is \(ok.nonce.count) bytes, not \(WireSecret.serverNonceLength)", context: context)
                    return
                }
                send(.auth(proof: secret.clientProof(clientNonce: nonce, serverNonce: ok.nonce, role: .peer)), context: context)
                state = .awaitingAuthOK(ok)
            }

        case (.awaitingAuthOK(let ok), .authOK(let proof)):
            guard let secret = client.configuration.secret,
                secret.isValidServerProof(proof, clientNonce: nonce, serverNonce: ok.nonce)
            else {
                fail("the primary's proof is wrong: is the secret the same on both nodes?", context: context)
                return
            }
            startReplicating(after: ok, context: context)

        case (.awaitingAuthOK, .error(let error)) where error.code == .authenticationFailed:
            fail("the primary refused this node's proof: is the secret the same on both nodes?", context: context)

        case (.awaitingResync, .fullResync(let resync)):
            client.fullResyncStarted(resync)
            state = .receivingSnapshot(resync, items: 0, started: .now, reported: .now)

        case (.awaitingResync, .partialResync(let id, let offset)):
            guard client.partialResync(replicationID: id, offset: offset) else {
                fail("the primary offered a partial resync from a position this backup does not have", context: context)
                return
            }
            state = .streaming

        case (.receivingSnapshot(let resync, let items, let started, var reported), .snapshotChunk(let chunk)):
            client.applySnapshot(chunk)
            let received = items + UInt64(chunk.count)
            if reported.duration(to: .now) >= .seconds(1) {
                reported = .now
                let percent = resync.estimatedItems > 0 ? min(100, received * 100 / resync.estimatedItems) : 100
                client.logger.info("full resync progress", metadata: [
                    "items": "\(received)", "of": "\(resync.estimatedItems)", "percent": "\(percent)",
                ])
            }
            state = .receivingSnapshot(resync, items: received, started: started, reported: reported)

        case (.receivingSnapshot(let resync, let items, let started, _), .snapshotEnd(let sent)):
            guard sent == items else {
                fail("the snapshot announced \(sent) items but \(items) arrived", context: context)
                return
            }
            let elapsed = started.duration(to: .now)
            client.fullResyncFinished(
                replicationID: resync.replicationID, offset: resync.offset, items: items,
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            )
            ackOwed = resync.offset
            state = .streaming

        case (.streaming, .changes(let changes)):
            ackOwed = client.apply(changes)

        case (_, .forwardReply(let offset, let reply)) where frame.isResponse:
            client.completeForward(requestID: frame.requestID, result: .success((offset, reply)))

        case (_, .error(let error)) where frame.isResponse && frame.requestID != 0:
            client.completeForward(requestID: frame.requestID, result: .failure(ReplicaClient.ForwardError.rejected(error)))

        case (_, .ping(let timestamp)):
            send(.pong(timestampMillis: timestamp), flags: WireFrame.Flags.response, requestID: frame.requestID, context: context)

        case (_, .pong):
            break

        case (_, .error(let error)):
            fail("the primary closed the link: \(error)", context: context)

        default:
            fail("unexpected \(message.type) while \(state)", context: context)
        }
    }

    /// The handshake (and authentication, if any) is done: ask for the stream.
    private func startReplicating(after ok: HelloOK, context: ChannelHandlerContext) {
        client.handshakeDone(channel: context.channel, primaryName: ok.nodeName)
        let position = client.position
        send(.replicate(Replicate(replicationID: position.replicationID, offset: position.offset, epoch: ok.epoch)), context: context)
        state = .awaitingResync
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // One acknowledgement per read burst, however many frames it held.
        if let offset = ackOwed {
            ackOwed = nil
            send(.ack(offset: offset), context: context)
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail("\(error)", context: context)
    }

    private func fail(_ reason: String, context: ChannelHandlerContext) {
        client.logger.warning("closing the replication link", metadata: ["reason": "\(reason)"])
        context.close(promise: nil)
    }

    private func send(_ message: WireMessage, flags: UInt16 = 0, requestID: UInt32 = 0, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        guard (try? buffer.writeWireMessage(message, flags: flags, requestID: requestID)) != nil else { return }
        lastSent = .now()
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }
}
