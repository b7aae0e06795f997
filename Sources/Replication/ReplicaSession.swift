import Logging
import NIOCore
import SessionStore
import WireProtocol

/// The primary's end of one backup's replication connection: decides between
/// a partial and a full resync, streams the snapshot and then the backlog,
/// takes acknowledgements, and keeps the link alive.
///
/// Everything but `notify()` and `close(reason:)` runs on the channel's event loop.
public final class ReplicaSession: @unchecked Sendable {
    // @unchecked: `state`, `lastSent`, `lastReceived` and `heartbeat` are
    // only touched on `channel.eventLoop`; the other members are immutable.

    /// Where the session is.
    enum State {
        /// Sending the snapshot; the stream resumes at `resumeAt` once it is done.
        case snapshotting(resumeAt: UInt64)
        /// Sending the stream; `next` is the first offset not yet sent.
        case streaming(next: UInt64)
        /// The connection is closed or closing.
        case closed
    }

    let channel: any Channel
    let primary: PrimaryReplication
    let backupName: String
    private let logger: Logger
    private var state: State = .closed
    private var lastSent = NIODeadline.now()
    private var lastReceived = NIODeadline.now()
    private var heartbeat: RepeatedTask?
    /// The lowest offset the backup may acknowledge next: where its resync
    /// started, then its last acknowledgement. Acknowledgements never go back.
    private var acknowledgedFloor: UInt64 = 0

    /// Items per snapshot chunk are cut at about this many bytes.
    static let snapshotChunkBytes = 1 << 20

    init(channel: any Channel, primary: PrimaryReplication, backupName: String) {
        self.channel = channel
        self.primary = primary
        self.backupName = backupName
        var logger = primary.logger
        logger[metadataKey: "backup"] = "\(backupName.isEmpty ? "\(channel.remoteAddress.map { "\($0)" } ?? "?")" : backupName)"
        self.logger = logger
    }

    /// Starts replication for a `replicate` request (on the event loop).
    /// `continuingHistories`: the backup's wire version (3 on) adopts this
    /// node's replication ID when it resumes from the previous history.
    public static func start(
        on channel: any Channel, primary: PrimaryReplication, request: Replicate, backupName: String, continuingHistories: Bool
    ) -> ReplicaSession {
        let session = ReplicaSession(channel: channel, primary: primary, backupName: backupName)
        primary.attach(session, backupName: backupName)
        session.begin(request, continuingHistories: continuingHistories)
        return session
    }

    private func begin(_ request: Replicate, continuingHistories: Bool) {
        channel.eventLoop.assertInEventLoop()
        startHeartbeat()
        primary.feed.pump()
        let resumption = primary.resumption(for: request, continuingHistories: continuingHistories)
        primary.countResync(resumption)
        let reason: String
        switch resumption {
        case .partial, .partialAfterPromotion:
            let next = request.offset &+ 1
            logger.info("partial resync", metadata: [
                "from_offset": "\(next)", "to_offset": "\(primary.offset)",
                "history": "\(resumption == .partial ? "current" : "previous, continued since the promotion")",
            ])
            // Always this node's ID: a backup coming from the previous history adopts it.
            send(.partialResync(replicationID: primary.replicationID, offset: request.offset))
            state = .streaming(next: next)
            acknowledgedFloor = request.offset
            // The backup's request states what it has applied: that is an
            // acknowledgement, and may be all it needs (nothing new to send).
            primary.acknowledged(request.offset)
            pushPending()
            return
        case .full(let why):
            reason = why
        }
        let offset = primary.offset
        let statistics = primary.store.statistics()
        logger.info("full resync", metadata: [
            "reason": "\(reason)",
            "items": "\(statistics.currentItems)", "offset": "\(offset)",
        ])
        send(.fullResync(FullResync(
            replicationID: primary.replicationID, offset: offset,
            estimatedItems: UInt64(statistics.currentItems), estimatedBytes: UInt64(statistics.bytes)
        )))
        state = .snapshotting(resumeAt: offset + 1)
        acknowledgedFloor = offset
        let session = self
        Task { await session.streamSnapshot(resumeAt: offset + 1) }
    }

    /// Walks the store shard by shard in short lock holds and sends it in
    /// chunks, each written before the next is built: no second copy of the
    /// data, and a slow backup slows the walk rather than filling memory.
    private func streamSnapshot(resumeAt: UInt64) async {
        let store = primary.store
        let started = ContinuousClock.now
        var lastReport = started
        var sent: UInt64 = 0
        var bytes = 0
        var buffer = ByteBuffer()
        var chunk = buffer.beginSnapshotChunkFrame()
        var count: UInt32 = 0
        do {
            for shard in 0..<store.shardCount {
                var cursor: Int? = 0
                while let from = cursor {
                    let page = store.items(inShard: shard, from: from, limit: 256)
                    cursor = page.next
                    // Values not in RAM are read from the log, the page's reads overlapping.
                    let coldValues = try await store.coldValues(of: page.items)
                    for (item, coldValue) in zip(page.items, coldValues) {
                        // A cold item deleted since the page was taken is gone.
                        guard let coldValue else { continue }
                        bytes += item.storage.withUnsafeBytes { all in
                            coldValue.withUnsafeBytes { coldValue in
                                buffer.writeSnapshotItem(
                                    key: UnsafeRawBufferPointer(rebasing: all[..<item.keyLength]),
                                    value: item.isCold ? coldValue : UnsafeRawBufferPointer(rebasing: all[item.keyLength...]),
                                    flags: item.flags, deadlineMillis: item.deadline.millis, cas: item.cas
                                )
                            }
                        }
                        count += 1
                        if buffer.readableBytes >= Self.snapshotChunkBytes {
                            try buffer.finishWireFrame(chunk, count: count)
                            try await channel.writeAndFlush(buffer)
                            sent += UInt64(count)
                            buffer = ByteBuffer()
                            chunk = buffer.beginSnapshotChunkFrame()
                            count = 0
                            guard primary.backlog.covers(resumeAt) else {
                                throw SessionError.backlogOverflow(resumeAt)
                            }
                            if ContinuousClock.now - lastReport >= .seconds(1) {
                                lastReport = ContinuousClock.now
                                logger.info("full resync progress", metadata: ["items_sent": "\(sent)", "bytes_sent": "\(bytes)"])
                            }
                        }
                    }
                }
            }
            try buffer.finishWireFrame(chunk, count: count)
            sent += UInt64(count)
            try buffer.writeWireMessage(.snapshotEnd(items: sent))
            try await channel.writeAndFlush(buffer)
            let elapsed = started.duration(to: .now)
            logger.info("full resync snapshot sent", metadata: [
                "items": "\(sent)", "bytes": "\(bytes)", "seconds": "\(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)",
            ])
            channel.eventLoop.execute {
                guard case .snapshotting = self.state else { return }
                self.state = .streaming(next: resumeAt)
                self.pushPending()
            }
        } catch {
            close(reason: "full resync failed: \(error)")
        }
    }

    /// Why a session ends on its own.
    enum SessionError: Error, CustomStringConvertible {
        case backlogOverflow(UInt64)

        var description: String {
            switch self {
            case .backlogOverflow(let offset):
                return "the backlog no longer holds offset \(offset); the backup must resync (raise --backlog-size if this repeats)"
            }
        }
    }

    // MARK: Streaming

    /// New changes were released (any thread).
    public func notify() {
        channel.eventLoop.execute { self.pushPending() }
    }

    /// Sends every backlog frame from the next unsent offset, while the channel takes them.
    func pushPending() {
        guard case .streaming(let next) = state, channel.isWritable else { return }
        guard let (frames, end) = primary.backlog.frames(from: next) else {
            close(reason: SessionError.backlogOverflow(next).description)
            return
        }
        guard !frames.isEmpty else { return }
        for frame in frames { channel.write(frame, promise: nil) }
        channel.flush()
        lastSent = .now()
        state = .streaming(next: end + 1)
    }

    /// The channel can take more again.
    public func writabilityChanged() {
        pushPending()
    }

    // MARK: Incoming

    /// A frame from the backup (on the event loop).
    public func received(_ message: WireMessage, requestID: UInt32) {
        lastReceived = .now()
        switch message {
        case .ack(let offset):
            acknowledge(offset)
        case .ping(let timestamp):
            send(.pong(timestampMillis: timestamp), flags: WireFrame.Flags.response, requestID: requestID)
        case .pong:
            break
        default:
            violation("unexpected \(message.type) on a replication connection")
        }
    }

    /// The last offset sent on this link: the snapshot's position while it
    /// is sent (the backup acknowledges it after `snapshotEnd`, which may
    /// arrive before this side moves on to the stream), then the stream's.
    private var sentThrough: UInt64? {
        switch state {
        case .snapshotting(let resumeAt): return resumeAt - 1
        case .streaming(let next): return next - 1
        case .closed: return nil
        }
    }

    /// Takes an acknowledgement, unless it claims what was never sent or goes
    /// back: either would make writes count as replicated that are not (or
    /// shows a backup that lost track of the stream), so the link is closed.
    private func acknowledge(_ offset: UInt64) {
        guard let sentThrough else { return }
        guard offset <= sentThrough else {
            violation("ack of offset \(offset) beyond the last offset sent, \(sentThrough)")
            return
        }
        guard offset >= acknowledgedFloor else {
            violation("ack of offset \(offset) goes back from \(acknowledgedFloor)")
            return
        }
        acknowledgedFloor = offset
        primary.acknowledged(offset)
    }

    /// The backup broke the protocol: tell it why (unsolicited `error`
    /// `protocolViolation`), log it, and close the link (on the event loop).
    private func violation(_ reason: String) {
        guard sentThrough != nil else { return }
        logger.warning("closing replication connection: protocol violation", metadata: ["reason": "\(reason)"])
        state = .closed
        var buffer = channel.allocator.buffer(capacity: 64 + reason.utf8.count)
        guard (try? buffer.writeWireMessage(.error(WireError(.protocolViolation, reason)))) != nil else {
            channel.close(promise: nil)
            return
        }
        let channel = self.channel
        channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
    }

    /// The connection closed (on the event loop).
    public func closed() {
        if case .closed = state {} else { logger.info("replication connection closed") }
        state = .closed
        heartbeat?.cancel()
        heartbeat = nil
        primary.detach(self)
    }

    /// Closes the connection (any thread).
    public func close(reason: String) {
        logger.warning("closing replication connection", metadata: ["reason": "\(reason)"])
        channel.close(promise: nil)
    }

    // MARK: Heartbeats

    private func startHeartbeat() {
        let interval = primary.configuration.heartbeatInterval
        let timeout = primary.configuration.linkTimeout
        heartbeat = channel.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            guard let self else { return }
            let now = NIODeadline.now()
            if now - self.lastReceived > timeout {
                self.close(reason: "no message from the backup for \(timeout.nanoseconds / 1_000_000) ms")
                return
            }
            if now - self.lastSent >= interval {
                // The stamp clock, not the wall clock: a backup promoted later orders its
                // writes after everything this node may have stamped meanwhile.
                self.send(.ping(timestampMillis: HybridTimestamp.millis(self.primary.store.currentStamp())))
            }
        }
    }

    private func send(_ message: WireMessage, flags: UInt16 = 0, requestID: UInt32 = 0) {
        var buffer = channel.allocator.buffer(capacity: 64)
        do {
            try buffer.writeWireMessage(message, flags: flags, requestID: requestID)
        } catch {
            close(reason: "cannot encode \(message.type): \(error)")
            return
        }
        lastSent = .now()
        channel.writeAndFlush(buffer, promise: nil)
    }
}
