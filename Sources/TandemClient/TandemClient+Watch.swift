import NIOConcurrencyHelpers
import NIOCore
import WireProtocol

extension TandemClient {
    /// Streams the node's changes to keys that start with `prefix` (empty:
    /// every key) as they are released, from now on, until the connection
    /// closes (Protocol.md 1.4, `watch`).
    ///
    /// ```swift
    /// for try await event in client.watch(prefix: Array("sess:".utf8)) {
    ///     print(event.kind, String(decoding: event.key, as: UTF8.self))
    /// }
    /// ```
    ///
    /// Events: `upsert` (a write, `size` is the value's), `delete` (a client's
    /// delete), `remove` (expired or evicted: an expiry shows once the node
    /// reclaims the item, on access or within about 250 ms of its deadline),
    /// `flushAll` (every watcher sees it), and `dropped`: `size` events are
    /// missing here because the node, or this client, held as many as it
    /// would for a reader that fell behind.
    ///
    /// From then on the connection serves nothing else but `ping`; the node
    /// stops streaming only when it closes. So ending the iteration early
    /// (`break`, or cancelling the task) closes this client. The stream ends
    /// with `TandemClientError.server` if the node refuses (`unavailable`:
    /// it records no change stream; the client stays usable then) and with
    /// `.connectionClosed` when the connection goes.
    ///
    /// - Parameter bufferLimit: events held for a consumer slower than the
    ///   stream; past it, events are counted and reported as one `dropped`.
    public func watch(prefix: [UInt8] = [], bufferLimit: Int = 10_000) -> AsyncThrowingStream<WatchEvent, any Error> {
        let (events, continuation) = AsyncThrowingStream.makeStream(of: WatchEvent.self, bufferingPolicy: .bufferingOldest(max(1, bufferLimit)))
        handler.openStream(.watch(prefix: prefix), on: channel, continuation: continuation)
        return events
    }
}

/// Where the frames answering a streaming request go (`ClientHandler.Pending.streams`).
struct ResponseStream: Sendable {
    /// Called on the event loop with each frame carrying the request's id.
    let receive: @Sendable (WireFrame) -> Void
    /// The connection closed: no more frames.
    let finish: @Sendable (TandemClientError) -> Void
}

extension ClientHandler {
    /// Sends `request` and feeds every `watchEvent` answering it into `continuation`,
    /// until an error answer, the connection's end, or the consumer's.
    func openStream(_ request: WireMessage, on channel: any Channel, continuation: AsyncThrowingStream<WatchEvent, any Error>.Continuation) {
        // Events the consumer had no room for since the last one it got.
        let lost = NIOLockedValueBox<UInt64>(0)
        let id: UInt32? = pending.withLockedValue { state in
            guard !state.closed else { return nil }
            let id = state.nextID
            state.nextID = state.nextID &+ 1 == 0 ? 1 : state.nextID &+ 1
            return id
        }
        guard let id else {
            continuation.finish(throwing: TandemClientError.connectionClosed)
            return
        }
        // Set before the stream can end, so that no ending goes unseen.
        continuation.onTermination = { [pending] termination in
            let wasOpen = pending.withLockedValue { $0.streams.removeValue(forKey: id) } != nil
            switch termination {
            case .cancelled:
                // The consumer is gone: only closing the connection stops the node's stream.
                if wasOpen { channel.close(promise: nil) }
            case .finished:
                break
            @unknown default:
                break
            }
        }
        let stream = ResponseStream(
            receive: { [pending] frame in
                let ending: TandemClientError
                do {
                    switch try frame.message() {
                    case .watchEvent(let event):
                        lost.withLockedValue { Self.deliver(event, to: continuation, lost: &$0) }
                        return
                    case .error(let error):
                        ending = .server(error)
                    case let other:
                        ending = .unexpectedReply("\(other.type) to \(request.type)")
                    }
                } catch {
                    ending = .unexpectedReply("a malformed answer to \(request.type): \(error)")
                }
                _ = pending.withLockedValue { $0.streams.removeValue(forKey: id) }
                continuation.finish(throwing: ending)
            },
            finish: { continuation.finish(throwing: $0) }
        )
        let registered = pending.withLockedValue { state in
            guard !state.closed else { return false }
            state.streams[id] = stream
            return true
        }
        guard registered else {
            continuation.finish(throwing: TandemClientError.connectionClosed)
            return
        }
        var buffer = channel.allocator.buffer(capacity: 64)
        do {
            try buffer.writeWireMessage(request, requestID: id)
        } catch {
            _ = pending.withLockedValue { $0.streams.removeValue(forKey: id) }
            continuation.finish(throwing: TandemClientError.unexpectedReply("cannot encode \(request.type): \(error)"))
            return
        }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Hands `event` to the consumer; when its buffer is full, counts instead,
    /// and reports the count as one `dropped` event before the next it takes.
    private static func deliver(_ event: WatchEvent, to continuation: AsyncThrowingStream<WatchEvent, any Error>.Continuation, lost: inout UInt64) {
        var event = event
        if lost > 0 {
            if event.kind == .dropped {
                // The node dropped some too, right here: one gap, one count.
                event.size = UInt32(clamping: UInt64(event.size) + lost)
                lost = 0
            } else {
                let marker = WatchEvent(kind: .dropped, key: [], size: UInt32(clamping: lost), deadlineMillis: 0, timeMillis: event.timeMillis)
                switch continuation.yield(marker) {
                case .enqueued:
                    lost = 0
                case .dropped, .terminated:
                    lost += 1
                    return
                @unknown default:
                    lost += 1
                    return
                }
            }
        }
        switch continuation.yield(event) {
        case .enqueued, .terminated:
            break
        case .dropped:
            lost += event.kind == .dropped ? UInt64(event.size) : 1
        @unknown default:
            break
        }
    }
}
