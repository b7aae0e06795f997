import NIOCore
import SessionStore
import Synchronization
import WireProtocol

/// One `watch` request (Protocol.md 1.4): streams the node's released changes
/// to keys with a prefix to one wire connection, as `watchEvent` responses.
///
/// The change feed calls `receive(_:)` under its lock, on whatever thread
/// released the batch (a writer, the pump), so that call only copies the few
/// fields an event needs into a bounded queue and asks the channel's event
/// loop to drain it. The queue moves into the channel only while the channel
/// is writable. A watcher that reads slower than the node writes therefore
/// never slows a write and never holds more than the channel's write buffer
/// plus `capacity` events: past that, events are counted, not kept, and the
/// watcher gets one `dropped` event with the count where the gap is.
///
/// The subscription ends when the connection closes, however it closes.
final class Watcher: Sendable {
    /// Events held for the channel at most; past it they are counted as dropped.
    static let capacity = 10_000
    /// Events encoded into one buffer per write: enough to amortise the
    /// write, few enough to look at writability often.
    static let eventsPerWrite = 256
    /// How long to wait before looking again when the channel is unwritable
    /// and no write of ours is pending to tell when it drained.
    static let retryDelay = TimeAmount.milliseconds(10)

    static let noFeedMessage = "this node records no change stream to watch"

    private struct Queue {
        var events = CircularBuffer<WatchEvent>(initialCapacity: 64)
        /// Events dropped since the last one queued: sent as one `dropped` event.
        var dropped: UInt64 = 0
        /// A drain is scheduled on the event loop, or waits for the channel to become writable.
        var drainPending = false
        /// The connection closed: nothing more is queued or sent.
        var stopped = false
        /// The feed subscription, once made.
        var token: Int?
    }

    private let prefix: [UInt8]
    private let requestID: UInt32
    private let channel: any Channel
    private let feed: ChangeFeed
    private let node: ServerContext
    private let queue = Mutex(Queue())

    private init(prefix: [UInt8], requestID: UInt32, channel: any Channel, feed: ChangeFeed, node: ServerContext) {
        self.prefix = prefix
        self.requestID = requestID
        self.channel = channel
        self.feed = feed
        self.node = node
    }

    /// Subscribes to the node's change feed on behalf of `channel`; `nil` when
    /// the node has no feed. Changes released from now on are streamed.
    static func start(prefix: [UInt8], requestID: UInt32, channel: any Channel, node: ServerContext) -> Watcher? {
        // Every node with a wire port has a pair, and every pair has the feed.
        guard let feed = node.pair?.feed else { return nil }
        let watcher = Watcher(prefix: prefix, requestID: requestID, channel: channel, feed: feed, node: node)
        let token = feed.subscribe(push: { [watcher] changes in watcher.receive(changes) })
        watcher.queue.withLock { $0.token = token }
        node.watchers.wrappingAdd(1, ordering: .relaxed)
        // Not tied to the handler's state: a connection closed after a
        // protocol error (which resets that state) unsubscribes as well.
        channel.closeFuture.whenComplete { _ in watcher.stop() }
        return watcher
    }

    /// Ends the subscription and forgets what is queued. Idempotent.
    func stop() {
        let token: Int? = queue.withLock { queue in
            guard !queue.stopped else { return nil }
            queue.stopped = true
            queue.events.removeAll()
            defer { queue.token = nil }
            return queue.token
        }
        guard let token else { return }
        feed.unsubscribe(token)
        node.watchers.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Called by the feed, under its lock: must not block.
    private func receive(_ changes: [Change]) {
        let now = node.store.now()
        let scheduleDrain: Bool = queue.withLock { queue in
            guard !queue.stopped else { return false }
            for change in changes {
                guard let event = event(for: change, at: now) else { continue }
                // The `dropped` event that must precede this one needs a place too.
                let needed = queue.dropped > 0 ? 2 : 1
                guard queue.events.count + needed <= Self.capacity else {
                    queue.dropped += 1
                    continue
                }
                if queue.dropped > 0 {
                    queue.events.append(Self.droppedEvent(queue.dropped, at: now))
                    queue.dropped = 0
                }
                queue.events.append(event)
            }
            guard !queue.drainPending, !queue.events.isEmpty else { return false }
            queue.drainPending = true
            return true
        }
        if scheduleDrain {
            channel.eventLoop.execute { self.drain() }
        }
    }

    /// The event for `change`, or `nil` when its key lacks the prefix
    /// (`flush_all` concerns every key, so every watcher sees it).
    private func event(for change: Change, at now: Int64) -> WatchEvent? {
        let kind: WatchEvent.Kind
        switch change.kind {
        case .flushAll:
            return WatchEvent(kind: .flushAll, key: [], size: 0, deadlineMillis: 0, timeMillis: now)
        case .upsert: kind = .upsert
        case .remove: kind = .remove
        case .delete: kind = .delete
        }
        let prefix = self.prefix
        guard change.withKeyBytes({ $0.starts(with: prefix) }) else { return nil }
        return WatchEvent(
            kind: kind, key: change.key,
            // A remove or delete carries no value worth sizing; the deadline tells an expiry from an eviction.
            size: kind == .upsert ? UInt32(clamping: change.valueCount) : 0,
            deadlineMillis: kind == .delete ? 0 : change.deadline.millis,
            timeMillis: now
        )
    }

    private static func droppedEvent(_ count: UInt64, at now: Int64) -> WatchEvent {
        WatchEvent(kind: .dropped, key: [], size: UInt32(clamping: count), deadlineMillis: 0, timeMillis: now)
    }

    /// On the event loop: moves queued events into the channel while it is writable.
    private func drain() {
        channel.eventLoop.preconditionInEventLoop()
        // A closed channel fails every write at once: stop here, `stop()` follows from the close.
        guard channel.isActive else { return }
        var lastWrite: EventLoopFuture<Void>?
        while channel.isWritable {
            let batch: [WatchEvent] = queue.withLock { queue in
                var batch: [WatchEvent] = []
                guard !queue.stopped else { return batch }
                let count = min(queue.events.count, Self.eventsPerWrite)
                batch.reserveCapacity(count + 1)
                for _ in 0..<count { batch.append(queue.events.removeFirst()) }
                // Everything before the gap is out: say how much went missing.
                if queue.events.isEmpty, queue.dropped > 0 {
                    batch.append(Self.droppedEvent(queue.dropped, at: node.store.now()))
                    queue.dropped = 0
                }
                if batch.isEmpty { queue.drainPending = false }
                return batch
            }
            guard !batch.isEmpty else { return }
            var buffer = channel.allocator.buffer(capacity: batch.count * (WireFrame.headerSize + WireEncodedSize.watchEvent + 32))
            for event in batch {
                // A key is at most a few hundred bytes: an event always fits a frame.
                _ = try? buffer.writeWireMessage(.watchEvent(event), flags: WireFrame.Flags.response, requestID: requestID)
            }
            lastWrite = channel.writeAndFlush(buffer)
        }
        // The socket has not taken what was written. Go on once it has: events
        // meanwhile wait in the queue (bounded) or are counted as dropped.
        if let lastWrite {
            lastWrite.whenComplete { _ in self.drain() }
        } else {
            channel.eventLoop.scheduleTask(in: Self.retryDelay) { self.drain() }
        }
    }
}
