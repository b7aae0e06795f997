import Logging
import NIOCore
import NIOPosix
import SessionStore
import Synchronization
import TandemTLS
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
        /// The stream's position (`ReplicaStream.position`), as of its last
        /// change: read without waiting for a frame being applied.
        var position: Position
        /// The channel once the handshake is done.
        var channel: (any Channel)?
        var stopped = false
        var attempts = 0
        var fullResyncs: UInt64 = 0
        var partialResyncs: UInt64 = 0
        /// Partial resyncs that adopted the primary's new replication ID
        /// (it continues the history this node followed).
        var partialResyncsAfterPromotion: UInt64 = 0
        var primaryName = ""
        /// The clients' writes sent to the primary and held (`ForwardedWrites`).
        var forwards = ForwardedWrites<Forward, any Channel>(lastRequestID: ReplicaConnectionHandler.reconcileRequestID - 1)
        /// When anything was last heard from the primary (monotonic); nil: never.
        var lastHeard: NIODeadline?
        /// The primary's epoch, from its `helloOK`.
        var primaryEpoch: UInt64 = 0
        /// What the last reconciliation with the primary did.
        var reconcileSummary: ReconcileSummary?
        /// Stopped for a promotion: writes still park until it is decided.
        var parking = false

        /// What happens to a new write (`ForwardedWrites.Acceptance`).
        var acceptance: ForwardedWrites<Forward, any Channel>.Acceptance {
            guard stopped else { return .following }
            return parking ? .holding : .refusing
        }

        /// The link to the primary when writes can go on it (handshake done).
        var usableLink: (any Channel)? {
            guard !stopped, linkState == .streaming || linkState == .resyncing else { return nil }
            return channel
        }
        /// The highest stamp the primary sent (changes, snapshot items, the
        /// clock in its pings): where its clock stood at the last contact.
        var peerStamp: UInt64 = 0
    }

    /// A client's write to send to the primary: the memcached request and
    /// the promise its answer completes.
    struct Forward {
        var request: ByteBuffer
        var promise: EventLoopPromise<(UInt64, ByteBuffer)>
    }

    public let configuration: ReplicationConfiguration
    public let peerHost: String
    public let peerPort: Int
    let store: SessionStore
    /// When this client was made: the failover timer counts from here until the primary is first heard.
    private let started = NIODeadline.now()
    let group: any EventLoopGroup
    let logger: Logger
    /// The stream positions applied; forwarded replies wait here.
    public let applied = OffsetWaiters()
    private let shared: Mutex<Shared>
    /// What the primary's messages do to the data, the position and the
    /// backlog of the stream as received. Held through each frame's
    /// application, so that once `stop` took it no change is applied and the
    /// position read after it is exactly where the data stands.
    private let stream: Mutex<ReplicaStream>

    /// Back-off between connection attempts: doubles from the first to the last.
    /// Short enough that a backup notices a returning primary well within a failover timeout.
    static let reconnectDelays: (first: TimeAmount, last: TimeAmount) = (.milliseconds(50), .milliseconds(500))
    /// How long a forwarded write may take before the client is told the primary is unavailable.
    static let forwardTimeout = TimeAmount.seconds(3)
    /// How long a write that arrived while the link was down waits for it
    /// (or for this node's promotion): under msm's 1,000 ms operation timeout.
    static let parkTimeout = TimeAmount.milliseconds(900)

    /// This node's epoch, sent in `hello` and `replicate`.
    let epoch: @Sendable () -> UInt64

    public init(
        peerHost: String, peerPort: Int, store: SessionStore, position: Position, configuration: ReplicationConfiguration,
        group: any EventLoopGroup, logger: Logger, epoch: @escaping @Sendable () -> UInt64 = { 0 }, positionIsExact: Bool = false
    ) {
        self.peerHost = peerHost
        self.peerPort = peerPort
        self.store = store
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.epoch = epoch
        self.shared = Mutex(Shared(position: position))
        self.stream = Mutex(ReplicaStream(store: store, position: position, exact: positionIsExact, backlogCapacity: configuration.backlogSize))
        applied.reset(to: position.offset)
    }

    /// The position to persist with the backup's items. While a snapshot is
    /// being received the data matches no position, so it reads as none.
    public var position: Position { shared.withLock { $0.position } }

    public var linkState: LinkState { shared.withLock { $0.linkState } }

    public func start() {
        connect()
    }

    /// Stops replicating. Writes parked while the link was down fail with
    /// `parkedFailure` (`.roleChanged` when this node was promoted: they are
    /// then run here); writes already sent fail as `primaryUnavailable`
    /// (their outcome is unknown: they may have run on the primary).
    /// With `parkedFailure` nil, writes keep parking until `failParked(_:)`.
    public func stop(parkedFailure: ForwardError? = .notSent) {
        // Waits for a frame being applied: after this nothing changes the position.
        stream.withLock { $0.stop() }
        let channel = shared.withLock { shared -> (any Channel)? in
            shared.stopped = true
            shared.linkState = .stopped
            shared.parking = parkedFailure == nil
            return shared.channel
        }
        channel?.close(promise: nil)
        failForwards()
        if let parkedFailure { failParked(parkedFailure) }
    }

    /// Fails every parked write with `error` and parks no more.
    public func failParked(_ error: ForwardError) {
        let ended = shared.withLock { shared in
            shared.parking = false
            return shared.forwards.endHeld()
        }
        for (forward, ending) in ended {
            // Not run here: one that may have run on the primary says so.
            if case .notSent = error { forward.promise.fail(ForwardError(ending)) } else { forward.promise.fail(error) }
        }
    }

    /// After `stop`: what this node's data hands over to the primary it
    /// becomes (where it stands in the history it followed, exactly or not,
    /// and that history's frames as received up to there).
    public func handOver() -> Handover {
        stream.withLock { $0.handOver() }
    }

    /// Whether the data is exactly the history up to `position`
    /// (`ReplicaStream.exact`).
    public var positionIsExact: Bool { stream.withLock { $0.exact } }

    /// Milliseconds since anything was heard from the primary.
    public var silenceMillis: Int64 {
        // A client that never heard its primary counts from its own start.
        let heard = shared.withLock { $0.lastHeard } ?? started
        return (NIODeadline.now() - heard).nanoseconds / 1_000_000
    }

    /// The highest stamp heard from the primary: its clock at the last contact.
    public var peerStamp: UInt64 { shared.withLock { $0.peerStamp } }

    func heardStamp(_ stamp: UInt64) {
        shared.withLock { $0.peerStamp = max($0.peerStamp, stamp) }
    }

    /// The primary's epoch, as its last `helloOK` said.
    public var primaryEpoch: UInt64 { shared.withLock { $0.primaryEpoch } }

    /// What the last reconciliation with the primary did.
    public var reconcileSummary: ReconcileSummary? { shared.withLock { $0.reconcileSummary } }

    /// Connects at once if the link is down and waiting for its next attempt:
    /// the failover timer wants a fresh try before it gives up on the primary.
    public func probe() {
        let retry = shared.withLock { shared -> Bool in
            guard !shared.stopped, shared.linkState == .down else { return false }
            shared.attempts = 0
            return true
        }
        if retry { connect() }
    }

    // MARK: Connection

    private func connect() {
        guard shared.withLock({ state -> Bool in
            guard !state.stopped else { return false }
            state.linkState = .connecting
            return true
        }) else { return }
        let handler = ReplicaConnectionHandler(client: self)
        let tls = configuration.tls?.peerClient
        ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(configuration.linkTimeout)
            .channelInitializer { [peerHost] channel in
                channel.eventLoop.makeCompletedFuture {
                    // Without TLS: a primary that speaks TLS would otherwise look like one that hangs up.
                    try ClientTLS.prepare(channel, host: peerHost, tls: tls)
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

    /// The link is gone (or this node stopped following) with writes sent
    /// and not answered: `ForwardedWrites.linkLost` holds again the ones
    /// that may run twice and fails the others.
    private func failForwards() {
        let actions = shared.withLock { shared in shared.forwards.linkLost(acceptance: shared.acceptance) }
        perform(actions)
    }

    /// Does what `ForwardedWrites` decided for each write.
    private func perform(_ actions: [ForwardedWrites<Forward, any Channel>.Action]) {
        for action in actions { perform(action) }
    }

    private func perform(_ action: ForwardedWrites<Forward, any Channel>.Action) {
        switch action {
        case .send(let forward, let requestID, let channel):
            send(forward, requestID: requestID, on: channel)
        case .hold(let forward, let hold):
            // At most `parkTimeout`: then the write fails (with whether it may
            // have run). A write sent meanwhile makes this a no-op.
            forward.promise.futureResult.eventLoop.scheduleTask(in: Self.parkTimeout) { [weak self] () -> Void in
                self?.holdRanOut(hold)
            }
        case .fail(let forward, let ending):
            forward.promise.fail(ForwardError(ending))
        }
    }

    private func holdRanOut(_ hold: UInt64) {
        guard let (forward, ending) = shared.withLock({ $0.forwards.holdRanOut(hold) }) else { return }
        forward.promise.fail(ForwardError(ending))
    }

    // MARK: Events from the connection handler (on its event loop)

    func handshakeDone(channel: any Channel, primaryName: String, primaryEpoch: UInt64) {
        let (position, held) = shared.withLock { shared in
            shared.channel = channel
            shared.linkState = .resyncing
            shared.attempts = 0
            shared.primaryName = primaryName
            shared.primaryEpoch = primaryEpoch
            return (shared.position, shared.forwards.linkUp(channel))
        }
        perform(held)
        logger.info("connected to the primary", metadata: [
            "peer": "\(peerHost):\(peerPort)", "primary": "\(primaryName)",
            "replication_id": "\(position.replicationID)", "offset": "\(position.offset)",
        ])
    }

    func contact() {
        shared.withLock { $0.lastHeard = .now() }
    }

    func reconciled(_ summary: ReconcileSummary?) {
        guard let summary else { return }
        shared.withLock { $0.reconcileSummary = summary }
    }

    func fullResyncStarted(_ resync: FullResync) {
        let position = stream.withLock { stream -> Position? in
            guard stream.startFullResync() else { return nil }
            return stream.position
        }
        // Stopped: the node no longer follows, and its data stays as it is.
        guard let position else { return }
        shared.withLock { shared in
            // Until the snapshot is complete the local data matches no position.
            shared.position = position
            shared.fullResyncs += 1
        }
        applied.reset(to: 0)
        logger.info("full resync: receiving a snapshot", metadata: [
            "replication_id": "\(resync.replicationID)", "offset": "\(resync.offset)",
            "items": "\(resync.estimatedItems)", "bytes": "\(resync.estimatedBytes)",
        ])
    }

    func fullResyncFinished(replicationID: ReplicationID, offset: UInt64, items: UInt64, seconds: Double) {
        let position = stream.withLock { stream in
            stream.finishFullResync(replicationID: replicationID, offset: offset)
            return stream.position
        }
        shared.withLock { shared in
            shared.position = position
            shared.linkState = .streaming
        }
        applied.reset(to: position.offset)
        logger.info("full resync done", metadata: ["items": "\(items)", "seconds": "\(seconds)", "offset": "\(offset)"])
    }

    /// The primary resumes the stream after `offset`. With another ID than
    /// this node's, the primary continues the history this node followed (it
    /// was promoted from it, Protocol.md 2.2): the offsets go on, and this
    /// node's data is now a position in the new history.
    func partialResync(replicationID: ReplicationID, offset: UInt64) -> Bool {
        let taken = stream.withLock { stream -> (ReplicaStream.PartialResync, Position)? in
            guard let taken = stream.partialResync(replicationID: replicationID, offset: offset) else { return nil }
            return (taken, stream.position)
        }
        guard let (taken, position) = taken else { return false }
        shared.withLock { shared in
            shared.position = position
            shared.linkState = .streaming
            shared.partialResyncs += 1
            if case .adopted = taken { shared.partialResyncsAfterPromotion += 1 }
        }
        switch taken {
        case .adopted(let previous):
            logger.info("partial resync: the primary continues the history this node followed", metadata: [
                "from_offset": "\(offset + 1)", "previous_replication_id": "\(previous)", "replication_id": "\(replicationID)",
            ])
        case .sameHistory:
            logger.info("partial resync", metadata: ["from_offset": "\(offset + 1)"])
        }
        return true
    }

    /// Applies a frame of changes (`body`: the frame's, kept in the
    /// backlog); returns the new applied offset. Nothing is applied once
    /// `stop` was called.
    func apply(_ changes: [ReplicatedChange], body: ByteBuffer) -> UInt64 {
        let (offset, highest) = stream.withLock { stream in
            (stream.apply(changes, body: body), stream.highestStamp)
        }
        shared.withLock {
            $0.position.offset = offset
            $0.peerStamp = max($0.peerStamp, highest)
        }
        applied.reach(offset)
        return offset
    }

    /// Applies snapshot items (the position stays none until the snapshot ends).
    func applySnapshot(_ items: [ReplicatedItem]) {
        let highest = stream.withLock { stream in
            stream.applySnapshot(items)
            return stream.highestStamp
        }
        heardStamp(highest)
    }

    func completeForward(requestID: UInt32, result: Result<(UInt64, ByteBuffer), any Error>) {
        let forward = shared.withLock { $0.forwards.replied(requestID) }
        forward?.promise.completeWith(result)
    }

    // MARK: Forwarding

    /// Why a forwarded write got no answer from the primary.
    public enum ForwardError: Error, CustomStringConvertible {
        /// Sent to the primary, which did not answer: the write may have run there.
        case primaryUnavailable
        /// Never sent: no primary was reachable while the write waited (it did not run).
        case notSent
        case rejected(WireError)
        /// This node became the primary before the write could be sent: run it here.
        case roleChanged

        init(_ ending: ForwardedWrites<Forward, any Channel>.Ending) {
            switch ending {
            case .notSent: self = .notSent
            case .mayHaveRun: self = .primaryUnavailable
            }
        }

        public var description: String {
            switch self {
            case .primaryUnavailable: return "primary unavailable"
            case .notSent: return "primary unavailable; the write was not sent"
            case .rejected(let error): return "primary refused: \(error.message)"
            case .roleChanged: return "this node is now the primary"
            }
        }
    }

    /// Sends one memcached request to the primary and returns its reply once
    /// this backup has applied the stream up to the write.
    /// `repeatable`: running the write twice leaves what running it once
    /// does (`set`, `touch`), so one whose answer the link's loss took is
    /// held and sent again rather than failed (see `failForwards`).
    public func forward(_ request: ByteBuffer, repeatable: Bool = false, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: (UInt64, ByteBuffer).self)
        let action = shared.withLock { shared in
            shared.forwards.submit(
                Forward(request: request, promise: promise), repeatable: repeatable, acceptance: shared.acceptance, link: shared.usableLink
            )
        }
        perform(action)
        let applied = self.applied
        return promise.futureResult.flatMap { offset, reply in
            // Answer only once a read on this backup sees the write.
            applied.wait(for: offset, on: eventLoop, timeout: Self.forwardTimeout).map { reply }
        }
    }

    private func send(_ forward: Forward, requestID: UInt32, on channel: any Channel) {
        let (request, promise) = (forward.request, forward.promise)
        var frame = channel.allocator.buffer(capacity: request.readableBytes + 32)
        do {
            try frame.writeWireMessage(.forward(request: request), requestID: requestID)
        } catch {
            completeForward(requestID: requestID, result: .failure(error))
            return
        }
        // A frame the channel could not write never reached the primary (a
        // part of one is not a request there): the write did not run, and it
        // waits for the link like one that arrived while it was down.
        let written = channel.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { _ in
            self.unsent(requestID: requestID, failedOn: channel)
        }
        channel.writeAndFlush(frame, promise: written)
        let timeout = promise.futureResult.eventLoop.scheduleTask(in: Self.forwardTimeout) {
            self.completeForward(requestID: requestID, result: .failure(ForwardError.primaryUnavailable))
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
    }

    /// The forward `requestID` was never written to `failed` (it closed
    /// first): held again, as not run, unless this node stopped following.
    private func unsent(requestID: UInt32, failedOn failed: any Channel) {
        let action = shared.withLock { shared in
            // A new link may already be up: then it goes on that one.
            let newLink = shared.usableLink.flatMap { $0 === failed ? nil : $0 }
            return shared.forwards.notWritten(requestID, acceptance: shared.acceptance, newLink: newLink)
        }
        if let action { perform(action) }
    }

    // MARK: Statistics

    public func statistics() -> [(String, String)] {
        let shared = self.shared.withLock { $0 }
        let sinceContact = shared.lastHeard.map { (NIODeadline.now() - $0).nanoseconds / 1_000_000 }
        return [
            ("role", "backup"),
            ("replication_id", shared.position.replicationID.description),
            ("replication_offset", "\(shared.position.offset)"),
            ("link_state", shared.linkState.rawValue),
            ("peer", "\(peerHost):\(peerPort)"),
            ("peer_name", shared.primaryName.isEmpty ? "none" : shared.primaryName),
            ("peer_last_contact_ms", sinceContact.map { "\(max(0, $0))" } ?? "-1"),
            ("peer_epoch", "\(shared.primaryEpoch)"),
            ("full_resyncs", "\(shared.fullResyncs)"),
            ("partial_resyncs", "\(shared.partialResyncs)"),
            ("partial_resyncs_after_promotion", "\(shared.partialResyncsAfterPromotion)"),
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
        /// `reconcile` sent, waiting for the watermark.
        case awaitingReconcileFrom
        /// Sending the versions above the watermark, then waiting for `reconcileDone`.
        case reconciling
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
    /// This connection's `hello` and the checks of the primary's answers.
    private var handshake: WireHandshake?

    init(client: ReplicaClient) {
        self.client = client
    }

    func channelActive(context: ChannelHandlerContext) {
        let handshake = WireHandshake(role: .peer, nodeName: client.configuration.nodeName, epoch: client.epoch(), secret: client.configuration.secret)
        self.handshake = handshake
        send(.hello(handshake.hello), context: context)
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
        // Only an authenticated primary's messages keep the failover timer at bay.
        switch state {
        case .awaitingHelloOK, .awaitingAuthOK: break
        default: client.contact()
        }
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
            // The primary is alive, even if this node cannot authenticate to it
            // (a wrong secret): that must not start a failover.
            client.contact()
            do {
                switch try handshake?.next(after: ok) {
                case .ready?, nil:
                    startReplicating(after: ok, context: context)
                case .authenticate(let auth)?:
                    send(auth, context: context)
                    state = .awaitingAuthOK(ok)
                }
            } catch {
                fail(Self.describe(error), context: context)
            }

        case (.awaitingAuthOK(let ok), .authOK(let proof)):
            do {
                try handshake?.check(authOK: proof, after: ok)
            } catch {
                fail(Self.describe(error), context: context)
                return
            }
            startReplicating(after: ok, context: context)

        case (.awaitingAuthOK, .error(let error)) where error.code == .authenticationFailed:
            fail(Self.describe(.proofRefused), context: context)

        case (.awaitingReconcileFrom, .reconcileFrom(let watermark)):
            guard watermark != .max else {
                client.reconciled(nil)
                sendReplicate(context: context)
                return
            }
            state = .reconciling
            let channel = context.channel
            let client = self.client
            Task { await Self.sendVersions(newerThan: watermark, of: client, on: channel) }

        case (.reconciling, .reconcileDone(let summary)):
            client.reconciled(summary)
            client.logger.info("reconciled with the primary", metadata: [
                "sent": "\(summary.received)", "applied": "\(summary.applied)", "conflicts": "\(summary.conflicts)",
            ])
            sendReplicate(context: context)

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
            ackOwed = client.apply(changes, body: frame.body)

        case (_, .forwardReply(let offset, let reply)) where frame.isResponse:
            client.completeForward(requestID: frame.requestID, result: .success((offset, reply)))

        case (_, .error(let error)) where frame.requestID == Self.reconcileRequestID:
            fail("the primary refused reconciliation: \(error)", context: context)

        case (_, .error(let error)) where frame.isResponse && frame.requestID != 0:
            client.completeForward(requestID: frame.requestID, result: .failure(ReplicaClient.ForwardError.rejected(error)))

        case (_, .ping(let timestamp)):
            // The primary's pings carry its stamp clock (milliseconds).
            client.heardStamp(HybridTimestamp.floor(millis: timestamp))
            send(.pong(timestampMillis: timestamp), flags: WireFrame.Flags.response, requestID: frame.requestID, context: context)

        case (_, .pong):
            break

        case (_, .error(let error)):
            fail("the primary closed the link: \(error)", context: context)

        default:
            fail("unexpected \(message.type) while \(state)", context: context)
        }
    }

    /// A failed handshake, in the words of this node's log: what to fix on which node.
    static func describe(_ error: WireHandshakeError) -> String {
        switch error {
        case .nodeWithoutSecret:
            // Replicating from a node that cannot prove it knows the secret
            // would let anyone who can pose as the primary feed this node data.
            return "the primary does not require authentication but this node has a secret: start the primary with the same --secret-file"
        case .secretRequired:
            return "the primary requires authentication; start this node with --secret-file"
        case .badNonce(let count):
            return "the primary's nonce is \(count) bytes, not \(WireSecret.serverNonceLength)"
        case .wrongNodeProof:
            return "the primary's proof is wrong: is the secret the same on both nodes?"
        case .proofRefused:
            return "the primary refused this node's proof: is the secret the same on both nodes?"
        case .refused(let error):
            return "the primary closed the link: \(error)"
        case .unexpectedReply(let type, let request):
            return "unexpected \(type) in answer to \(request)"
        }
    }

    /// The request id of `reconcile` and `reconcileEnd`, apart from the forwards' ids.
    static let reconcileRequestID = UInt32.max

    private func sendReplicate(context: ChannelHandlerContext) {
        let position = client.position
        send(.replicate(Replicate(replicationID: position.replicationID, offset: position.offset, epoch: client.epoch())), context: context)
        state = .awaitingResync
    }

    /// Sends every item and tombstone stamped above `watermark`, in chunks of
    /// about 1 MiB, each written before the next is built; then `reconcileEnd`.
    static func sendVersions(newerThan watermark: UInt64, of client: ReplicaClient, on channel: any Channel) async {
        let store = client.store
        var chunk: [ReplicatedChange] = []
        var chunkBytes = 0
        var sent: UInt64 = 0
        func flush() async throws {
            guard !chunk.isEmpty else { return }
            var buffer = channel.allocator.buffer(capacity: chunkBytes + 64)
            try buffer.writeWireMessage(.reconcileChunk(chunk))
            try await channel.writeAndFlush(buffer)
            sent += UInt64(chunk.count)
            chunk.removeAll(keepingCapacity: true)
            chunkBytes = 0
        }
        do {
            for shard in 0..<store.shardCount {
                var cursor: Int? = 0
                while let from = cursor {
                    let page = store.versions(inShard: shard, newerThan: watermark, from: from, limit: 256)
                    cursor = page.next
                    let coldValues = try await store.coldValues(of: page.items)
                    for (item, coldValue) in zip(page.items, coldValues) {
                        // Gone since the page was taken: its delete is a tombstone now.
                        guard let coldValue else { continue }
                        let version = ReconcileMerge.version(of: item, coldValue: coldValue)
                        chunk.append(version)
                        chunkBytes += version.key.readableBytes + version.value.readableBytes + 40
                        if chunkBytes >= 1 << 20 { try await flush() }
                    }
                }
                for tombstone in store.tombstones(inShard: shard, newerThan: watermark) {
                    chunk.append(ReconcileMerge.version(ofDelete: tombstone.key, stamp: tombstone.stamp))
                    chunkBytes += tombstone.key.count + 24
                    if chunkBytes >= 1 << 20 { try await flush() }
                }
            }
            try await flush()
            var end = channel.allocator.buffer(capacity: 32)
            try end.writeWireMessage(.reconcileEnd(count: sent), requestID: reconcileRequestID)
            try await channel.writeAndFlush(end)
        } catch {
            client.logger.warning("reconciliation with the primary failed; retrying with the next link", metadata: ["error": "\(error)"])
            channel.close(promise: nil)
        }
    }

    /// The handshake (and authentication, if any) is done: merge what this
    /// node may hold that the primary lacks, then ask for the stream.
    private func startReplicating(after ok: HelloOK, context: ChannelHandlerContext) {
        client.contact()
        client.handshakeDone(channel: context.channel, primaryName: ok.nodeName, primaryEpoch: ok.epoch)
        // Every new link reconciles before it resyncs, not just the first: the
        // primary at the other end may have restarted with older data than this
        // node holds. When this node's data is a prefix of the primary's
        // history, that costs one round trip.
        let position = client.position
        send(.reconcile(Replicate(replicationID: position.replicationID, offset: position.offset, epoch: client.epoch())), requestID: Self.reconcileRequestID, context: context)
        state = .awaitingReconcileFrom
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
        if let failure = TLSHandshakeFailure(error) {
            // As with a wrong secret: a primary that refuses this node's
            // certificate is alive, and must not be failed over.
            if failure.peerAnswered { client.contact() }
            fail("TLS with the primary: \(failure)", context: context)
            return
        }
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
