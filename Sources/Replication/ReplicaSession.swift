import Logging
import NIOCore
import SessionStore
import Synchronization
import WireProtocol

/// The primary's end of one backup's replication connection: the I/O of a
/// `BackupStream` (which decides between a partial and a full resync, which
/// frames go next and which acknowledgements count): streams the snapshot
/// and then the backlog, and keeps the link alive.
///
/// Everything but `notify()` and `close(reason:)` runs on the channel's event loop.
public final class ReplicaSession: BackupConnection, @unchecked Sendable {
    // @unchecked: `stream`, `lastSent`, `lastReceived` and `heartbeat` are
    // only touched on `channel.eventLoop`; the other members are immutable.

    let channel: any Channel
    let primary: PrimaryReplication
    let backupName: String
    private let logger: Logger
    /// The stream's rules and where it is (closed until `begin`).
    private var stream: BackupStream
    private var lastSent = NIODeadline.now()
    private var lastReceived = NIODeadline.now()
    private var heartbeat: RepeatedTask?
    /// Whether a `pushPending` asked for by `notify` has yet to run: the
    /// writes of many connections in one pass of their loops go out in one
    /// task and one flush.
    private let pushScheduled = Atomic<Bool>(false)

    /// Items per snapshot chunk are cut at about this many bytes.
    static let snapshotChunkBytes = 1 << 20

    init(channel: any Channel, primary: PrimaryReplication, backupName: String) {
        self.channel = channel
        self.primary = primary
        self.backupName = backupName
        self.stream = BackupStream(primary: primary)
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
        session.begin(request, backupName: backupName, continuingHistories: continuingHistories)
        return session
    }

    private func begin(_ request: Replicate, backupName: String, continuingHistories: Bool) {
        channel.eventLoop.assertInEventLoop()
        startHeartbeat()
        switch stream.open(for: request, on: self, backupName: backupName, continuingHistories: continuingHistories) {
        case .partial(let replicationID, let offset, let resumption):
            // It may be all the backup needs (nothing new to send); outside
            // the stream's change, as in `acknowledge`.
            primary.acknowledged(offset)
            logger.info("partial resync", metadata: [
                "from_offset": "\(offset &+ 1)", "to_offset": "\(primary.offset)",
                "history": "\(resumption == .partial ? "current" : "previous, continued since the promotion")",
            ])
            send(.partialResync(replicationID: replicationID, offset: offset))
            pushPending()
        case .full(let resync, let reason):
            logger.info("full resync", metadata: [
                "reason": "\(reason)",
                "items": "\(resync.estimatedItems)", "offset": "\(resync.offset)",
            ])
            send(.fullResync(resync))
            let session = self
            Task { await session.streamSnapshot(after: resync.offset) }
        }
    }

    /// Walks the store shard by shard in short lock holds and sends it in
    /// chunks, each written before the next is built: no second copy of the
    /// data, and a slow backup slows the walk rather than filling memory.
    private func streamSnapshot(after offset: UInt64) async {
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
                            guard BackupStream.snapshotCanResume(after: offset, on: primary) else {
                                throw SessionError.backlogOverflow(offset + 1)
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
                self.stream.snapshotSent()
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
        guard !pushScheduled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        channel.eventLoop.execute {
            // Cleared first: changes released from here on need another push.
            self.pushScheduled.store(false, ordering: .releasing)
            self.pushPending()
        }
    }

    /// Sends every backlog frame from the next unsent offset, while the channel takes them.
    func pushPending() {
        guard channel.isWritable else { return }
        switch stream.pending() {
        case .nothing:
            return
        case .overflow(let next):
            close(reason: SessionError.backlogOverflow(next).description)
        case .frames(let frames):
            for frame in frames { channel.write(frame, promise: nil) }
            channel.flush()
            lastSent = .now()
        }
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

    /// Takes an acknowledgement, unless it claims what was never sent or goes
    /// back (`BackupStream.acknowledge`): then the link is closed.
    private func acknowledge(_ offset: UInt64) {
        switch stream.acknowledge(offset) {
        case .accepted(let offset):
            // Outside the stream's change: answering the writes that waited
            // for this may close this connection, and `closed()` reads the stream.
            primary.acknowledged(offset)
        case .violation(let reason):
            violation(reason)
        case .ignored:
            break
        }
    }

    /// The backup broke the protocol: tell it why (unsolicited `error`
    /// `protocolViolation`), log it, and close the link (on the event loop).
    private func violation(_ reason: String) {
        guard stream.sentThrough != nil else { return }
        logger.warning("closing replication connection: protocol violation", metadata: ["reason": "\(reason)"])
        stream.close()
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
        if stream.state != .closed { logger.info("replication connection closed") }
        heartbeat?.cancel()
        heartbeat = nil
        stream.closed()
        // After the stream's change, as for an acknowledgement: answering the
        // writes that waited for this backup may close the channel again, and
        // so call this once more (detaching twice does nothing).
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
