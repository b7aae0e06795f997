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
///
/// The shell of two machines: `ReplicaLink` decides the link's life and
/// conversation, `ForwardedWrites` the forwarded writes'; this class and its
/// channel handler do the I/O and apply the data through `ReplicaStream`.
public final class ReplicaClient: Sendable {
    public typealias LinkState = ReplicaLinkState
    typealias Link = ReplicaLink<any Channel>

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
        var link: Link
        /// The stream's position (`ReplicaStream.position`), as of its last
        /// change: read without waiting for a frame being applied.
        var position: Position
        var fullResyncs: UInt64 = 0
        var partialResyncs: UInt64 = 0
        /// Partial resyncs that adopted the primary's new replication ID
        /// (it continues the history this node followed).
        var partialResyncsAfterPromotion: UInt64 = 0
        /// The clients' writes sent to the primary and held (`ForwardedWrites`).
        var forwards = ForwardedWrites<Forward, any Channel>(lastRequestID: Link.reconcileRequestID - 1)
        /// What the last reconciliation with the primary did.
        var reconcileSummary: ReconcileSummary?
        /// Stopped for a promotion: writes still park until it is decided.
        var parking = false

        /// What happens to a new write (`ForwardedWrites.Acceptance`).
        var acceptance: ForwardedWrites<Forward, any Channel>.Acceptance {
            guard link.isStopped else { return .following }
            return parking ? .holding : .refusing
        }

        /// The link to the primary when writes can go on it (handshake done).
        var usableLink: (any Channel)? { link.usableLink }
        /// The highest stamp the primary sent (changes, snapshot items, the
        /// clock in its pings): where its clock stood at the last contact.
        var peerStamp: UInt64 = 0
        /// When a snapshot's progress was last logged.
        var snapshotReported = NIODeadline.now()
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
        self.shared = Mutex(Shared(link: Link(configuration: configuration), position: position))
        self.stream = Mutex(ReplicaStream(store: store, position: position, exact: positionIsExact, backlogCapacity: configuration.backlogSize))
        applied.reset(to: position.offset)
    }

    /// The position to persist with the backup's items. While a snapshot is
    /// being received the data matches no position, so it reads as none.
    public var position: Position { shared.withLock { $0.position } }

    public var linkState: LinkState { shared.withLock { $0.link.linkState } }

    public func start() {
        perform(shared.withLock { $0.link.start() })
    }

    /// Stops replicating. Writes parked while the link was down fail with
    /// `parkedFailure` (`.roleChanged` when this node was promoted: they are
    /// then run here); writes already sent fail as `primaryUnavailable`
    /// (their outcome is unknown: they may have run on the primary).
    /// With `parkedFailure` nil, writes keep parking until `failParked(_:)`.
    public func stop(parkedFailure: ForwardError? = .notSent) {
        // Waits for a frame being applied: after this nothing changes the position.
        stream.withLock { $0.stop() }
        let actions = shared.withLock { shared in
            shared.parking = parkedFailure == nil
            return shared.link.stop()
        }
        perform(actions)
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
        let heard = shared.withLock { $0.link.lastHeard } ?? started
        return (NIODeadline.now() - heard).nanoseconds / 1_000_000
    }

    /// The highest stamp heard from the primary: its clock at the last contact.
    public var peerStamp: UInt64 { shared.withLock { $0.peerStamp } }

    func heardStamp(_ stamp: UInt64) {
        shared.withLock { $0.peerStamp = max($0.peerStamp, stamp) }
    }

    /// The primary's epoch, as its last `helloOK` said.
    public var primaryEpoch: UInt64 { shared.withLock { $0.link.primary?.epoch ?? 0 } }

    /// What the last reconciliation with the primary did.
    public var reconcileSummary: ReconcileSummary? { shared.withLock { $0.reconcileSummary } }

    /// Connects at once if the link is down and waiting for its next attempt:
    /// the failover timer wants a fresh try before it gives up on the primary.
    public func probe() {
        perform(shared.withLock { $0.link.probe() })
    }

    // MARK: Connection

    /// Opens the connection of `attempt`; the handler reports what happens on it.
    private func connect(_ attempt: UInt64) {
        let handler = ReplicaConnectionHandler(client: self, attempt: attempt)
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
                    channel.closeFuture.whenComplete { _ in self.closed(attempt) }
                case .failure(let error):
                    logger.debug("cannot reach the primary", metadata: ["peer": "\(peerHost):\(peerPort)", "error": "\(error)"])
                    closed(attempt)
                }
            }
    }

    private func closed(_ attempt: UInt64) {
        perform(shared.withLock { $0.link.closed(attempt) })
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

    private func retryDue(_ attempt: UInt64) {
        perform(shared.withLock { $0.link.retryDue(attempt) })
    }

    // MARK: Events from the connection handler (on its event loop)

    func connected(_ attempt: UInt64, channel: any Channel) {
        let epoch = self.epoch()
        perform(shared.withLock { $0.link.connected(attempt, link: channel, epoch: epoch, now: .now()) }, attempt: attempt)
    }

    /// A frame from the primary; returns the stream offset an `ack` is now owed for, if any.
    func received(_ frame: WireFrame, on attempt: UInt64) -> UInt64? {
        let message: WireMessage
        do {
            message = try frame.message()
        } catch {
            let what = frame.messageType.map { "\($0)" } ?? "frame type \(frame.type)"
            return perform(shared.withLock { $0.link.failed(attempt, reason: "undecodable \(what): \(error)") }, attempt: attempt)
        }
        return perform(shared.withLock { $0.link.received(message, in: frame, on: attempt, now: .now()) }, attempt: attempt)
    }

    func tick(_ attempt: UInt64) {
        let clock = store.now()
        perform(shared.withLock { $0.link.tick(attempt, now: .now(), clockMillis: clock) }, attempt: attempt)
    }

    func acknowledge(_ attempt: UInt64, offset: UInt64) {
        perform(shared.withLock { $0.link.acknowledge(attempt, offset: offset, now: .now()) }, attempt: attempt)
    }

    /// Something on the connection failed (TLS, a decoder); `answered`: the
    /// primary answered at all, so it is alive and must not be failed over.
    func failed(_ attempt: UInt64, reason: String, answered: Bool = false) {
        perform(shared.withLock { shared in
            if answered { shared.link.heard(now: .now()) }
            return shared.link.failed(attempt, reason: reason)
        }, attempt: attempt)
    }

    /// Does what `ReplicaLink` decided, for `attempt`'s connection; returns
    /// the stream offset an `ack` is owed for, if any.
    @discardableResult
    private func perform(_ actions: [Link.Action], attempt: UInt64? = nil) -> UInt64? {
        var owed: UInt64?
        for action in actions {
            switch action {
            case .connect(let attempt):
                connect(attempt)
            case .retry(let attempt, let delay):
                group.next().scheduleTask(in: delay) { self.retryDue(attempt) }
            case .send(let message, let requestID, let flags, let channel):
                send(message, requestID: requestID, flags: flags, on: channel)
            case .close(let channel, let reason):
                if let reason { logger.warning("closing the replication link", metadata: ["reason": "\(reason)"]) }
                channel.close(promise: nil)
            case .ready(let primary, let channel):
                // Writes held while the link was down go on it now.
                perform(shared.withLock { $0.forwards.linkUp(channel) })
                let position = self.position
                logger.info("connected to the primary", metadata: [
                    "peer": "\(peerHost):\(peerPort)", "primary": "\(primary.nodeName)",
                    "replication_id": "\(position.replicationID)", "offset": "\(position.offset)",
                ])
            case .reconcile(let channel):
                send(.reconcile(replicateRequest()), requestID: Link.reconcileRequestID, on: channel)
            case .sendVersions(let watermark, let channel):
                Task { await Self.sendVersions(newerThan: watermark, of: self, on: channel) }
            case .reconciled(let summary):
                guard let summary else { continue }
                shared.withLock { $0.reconcileSummary = summary }
                logger.info("reconciled with the primary", metadata: [
                    "sent": "\(summary.received)", "applied": "\(summary.applied)", "conflicts": "\(summary.conflicts)",
                ])
            case .replicate(let channel):
                send(.replicate(replicateRequest()), on: channel)
            case .startFullResync(let resync):
                // Refused only once this node stopped following: its data stays as it is.
                fullResyncStarted(resync)
            case .applySnapshot(let items, let received, let resync):
                applySnapshot(items, received: received, of: resync)
            case .finishFullResync(let resync, let items, let took):
                fullResyncFinished(resync, items: items, took: took)
                owed = resync.offset
            case .partialResync(let replicationID, let offset):
                guard !partialResync(replicationID: replicationID, offset: offset), let attempt else { continue }
                let reason = "the primary offered a partial resync from a position this backup does not have"
                perform(shared.withLock { $0.link.failed(attempt, reason: reason) })
            case .apply(let changes, let body):
                owed = apply(changes, body: body)
            case .heardStamp(let stamp):
                heardStamp(stamp)
            case .forwardReplied(let requestID, let result):
                completeForward(requestID: requestID, result: result.map { ($0.offset, $0.reply) }.mapError { ForwardError.rejected($0) })
            case .lost(let wasReady):
                if wasReady { logger.warning("replication link to the primary is down; reconnecting", metadata: ["peer": "\(peerHost):\(peerPort)"]) }
                failForwards()
            }
        }
        return owed
    }

    private func send(_ message: WireMessage, requestID: UInt32 = 0, flags: UInt16 = 0, on channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: 64)
        guard (try? buffer.writeWireMessage(message, flags: flags, requestID: requestID)) != nil else { return }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// `reconcile` and `replicate` carry where the data stands, and the epoch.
    private func replicateRequest() -> Replicate {
        let position = self.position
        return Replicate(replicationID: position.replicationID, offset: position.offset, epoch: epoch())
    }

    private func fullResyncStarted(_ resync: FullResync) {
        let position = stream.withLock { stream -> Position? in
            guard stream.startFullResync() else { return nil }
            return stream.position
        }
        guard let position else { return }
        shared.withLock { shared in
            // Until the snapshot is complete the local data matches no position.
            shared.position = position
            shared.fullResyncs += 1
            shared.snapshotReported = .now()
        }
        applied.reset(to: 0)
        logger.info("full resync: receiving a snapshot", metadata: [
            "replication_id": "\(resync.replicationID)", "offset": "\(resync.offset)",
            "items": "\(resync.estimatedItems)", "bytes": "\(resync.estimatedBytes)",
        ])
    }

    private func fullResyncFinished(_ resync: FullResync, items: UInt64, took: TimeAmount) {
        let position = stream.withLock { stream in
            stream.finishFullResync(replicationID: resync.replicationID, offset: resync.offset)
            return stream.position
        }
        shared.withLock { $0.position = position }
        applied.reset(to: position.offset)
        let seconds = Double(took.nanoseconds) / 1e9
        logger.info("full resync done", metadata: ["items": "\(items)", "seconds": "\(seconds)", "offset": "\(resync.offset)"])
    }

    /// The primary resumes the stream after `offset`. With another ID than
    /// this node's, the primary continues the history this node followed (it
    /// was promoted from it, Protocol.md 2.2): the offsets go on, and this
    /// node's data is now a position in the new history.
    private func partialResync(replicationID: ReplicationID, offset: UInt64) -> Bool {
        let taken = stream.withLock { stream -> (ReplicaStream.PartialResync, Position)? in
            guard let taken = stream.partialResync(replicationID: replicationID, offset: offset) else { return nil }
            return (taken, stream.position)
        }
        guard let (taken, position) = taken else { return false }
        shared.withLock { shared in
            shared.position = position
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
    private func apply(_ changes: [ReplicatedChange], body: ByteBuffer) -> UInt64 {
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

    /// Applies snapshot items (the position stays none until the snapshot
    /// ends), and logs the progress about once a second.
    private func applySnapshot(_ items: [ReplicatedItem], received: UInt64, of resync: FullResync) {
        let highest = stream.withLock { stream in
            stream.applySnapshot(items)
            return stream.highestStamp
        }
        let report = shared.withLock { shared -> Bool in
            shared.peerStamp = max(shared.peerStamp, highest)
            guard NIODeadline.now() - shared.snapshotReported >= .seconds(1) else { return false }
            shared.snapshotReported = .now()
            return true
        }
        guard report else { return }
        let percent = resync.estimatedItems > 0 ? min(100, received * 100 / resync.estimatedItems) : 100
        logger.info("full resync progress", metadata: ["items": "\(received)", "of": "\(resync.estimatedItems)", "percent": "\(percent)"])
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
        let sinceContact = shared.link.lastHeard.map { (NIODeadline.now() - $0).nanoseconds / 1_000_000 }
        return [
            ("role", "backup"),
            ("replication_id", shared.position.replicationID.description),
            ("replication_offset", "\(shared.position.offset)"),
            ("link_state", shared.link.linkState.rawValue),
            ("peer", "\(peerHost):\(peerPort)"),
            ("peer_name", shared.link.primary?.nodeName ?? "none"),
            ("peer_last_contact_ms", sinceContact.map { "\(max(0, $0))" } ?? "-1"),
            ("peer_epoch", "\(shared.link.primary?.epoch ?? 0)"),
            ("full_resyncs", "\(shared.fullResyncs)"),
            ("partial_resyncs", "\(shared.partialResyncs)"),
            ("partial_resyncs_after_promotion", "\(shared.partialResyncsAfterPromotion)"),
        ]
    }
}

/// The backup's replication connection: the shell of one attempt of
/// `ReplicaLink` on its channel. It reports the connection's events to the
/// client, acknowledges once per burst of frames, and beats the heartbeat.
final class ReplicaConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched only on the channel's event loop.
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    private let client: ReplicaClient
    private let attempt: UInt64
    private var ackOwed: UInt64?
    private var heartbeat: RepeatedTask?

    init(client: ReplicaClient, attempt: UInt64) {
        self.client = client
        self.attempt = attempt
    }

    func channelActive(context: ChannelHandlerContext) {
        client.connected(attempt, channel: context.channel)
        let interval = client.configuration.heartbeatInterval
        heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [client, attempt] _ in
            client.tick(attempt)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        heartbeat?.cancel()
        heartbeat = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let offset = client.received(unwrapInboundIn(data), on: attempt) { ackOwed = offset }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // One acknowledgement per read burst, however many frames it held.
        if let offset = ackOwed {
            ackOwed = nil
            client.acknowledge(attempt, offset: offset)
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let failure = TLSHandshakeFailure(error) {
            // As with a wrong secret: a primary that refuses this node's
            // certificate is alive, and must not be failed over.
            client.failed(attempt, reason: "TLS with the primary: \(failure)", answered: failure.peerAnswered)
            return
        }
        client.failed(attempt, reason: "\(error)")
    }
}

extension ReplicaClient {
    /// Sends every item and tombstone stamped above `watermark`, in chunks of
    /// about 1 MiB, each written before the next is built; then `reconcileEnd`.
    static func sendVersions(newerThan watermark: UInt64, of client: ReplicaClient, on channel: any Channel) async {
        let store = client.store
        var chunk: [ReplicatedChange] = []
        var chunkBytes = 0
        var sent: UInt64 = 0
        if store.flushStamp > watermark {
            chunk.append(ReconcileMerge.version(ofFlush: store.flushStamp))
            chunkBytes += 24
        }
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
            try end.writeWireMessage(.reconcileEnd(count: sent), requestID: Link.reconcileRequestID)
            try await channel.writeAndFlush(end)
        } catch {
            client.logger.warning("reconciliation with the primary failed; retrying with the next link", metadata: ["error": "\(error)"])
            channel.close(promise: nil)
        }
    }

}
