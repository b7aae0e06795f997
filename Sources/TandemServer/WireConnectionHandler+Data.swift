import MemcacheProtocol
import NIOCore
import Replication
import SessionStore
import WireProtocol

/// The data messages (Protocol.md 1.4.5): an application's reads and writes
/// over the wire protocol, run through the same dispatcher and store calls
/// as the memcached commands they stand for, with the same replication:
/// on a primary a write is answered once the backup acknowledged it (sync
/// mode); on a backup it is forwarded to the primary as the memcached
/// request it stands for (section 2.5), and answered once this node applied
/// it, so a read here after the answer sees it.
///
/// A connection runs its data requests one after the other in the order
/// they arrived: a request that waits (for a value to be read from the log,
/// for the primary to run a forwarded write, for storage to catch up)
/// holds back the ones behind it, so a read after a write on the same
/// connection always sees it. Answers need not leave in that order: a
/// write's answer waits for the backup's acknowledgement while the reads
/// behind it are answered at once; the request id says which is which.
extension WireConnectionHandler {
    /// One data request, waiting for its turn.
    struct DataRequest {
        let message: WireMessage
        let requestID: UInt32
    }

    /// The connection's data requests and what holds them back.
    struct DataPath {
        /// Requests behind the one that waits, in arrival order.
        var queue = CircularBuffer<DataRequest>()
        /// Whether a request is waiting (for a value, the primary or storage).
        var busy = false
        /// Answers written but not yet flushed (flushed once per read burst).
        var unflushed = false
        /// Created on first use, on the connection's event loop.
        var dispatcher: Dispatcher?
        /// The node is stopping: writes are refused as not run.
        var draining = false
    }

    /// Requests held back before the connection stops reading: bounds what
    /// a client that pipelines behind a slow request can make the node hold.
    static let maximumQueuedDataRequests = 1024

    /// A data request arrived: run it now, or queue it behind one that waits.
    func receiveData(_ message: WireMessage, requestID: UInt32, link: Link, context: ChannelHandlerContext) {
        // A version 4 node does not know these messages: answered as it would.
        guard link.version >= WireVersion.dataMessages else {
            reject(.unknownMessage, "\(message.type) needs wire version \(WireVersion.dataMessages); this connection speaks \(link.version)", requestID: requestID, context: context)
            return
        }
        let request = DataRequest(message: message, requestID: requestID)
        guard !data.busy else {
            data.queue.append(request)
            if data.queue.count >= Self.maximumQueuedDataRequests {
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            }
            return
        }
        runData(request, context: context)
    }

    /// Runs requests from the queue until one has to wait, then flushes.
    func continueData(context: ChannelHandlerContext) {
        if case .closed = state { return }
        data.busy = false
        while !data.busy, let next = data.queue.popFirst() {
            runData(next, context: context)
            if case .closed = state { return }
        }
        if !data.busy, data.queue.count < Self.maximumQueuedDataRequests, context.channel.isWritable {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        flushData(context: context)
    }

    func flushData(context: ChannelHandlerContext) {
        guard data.unflushed else { return }
        data.unflushed = false
        context.flush()
    }

    private func dataDispatcher(_ context: ChannelHandlerContext) -> Dispatcher {
        if let dispatcher = data.dispatcher { return dispatcher }
        let dispatcher = node.dispatcher(on: context.eventLoop)
        data.dispatcher = dispatcher
        return dispatcher
    }

    /// Why a request cannot be run, checked before anything is run or sent on:
    /// keys memcached could not address, a value over `-I`, too many keys.
    private func unusable(_ message: WireMessage) -> WireError? {
        func badKey(_ key: ByteBuffer) -> WireError? {
            guard !DataLimits.isAddressable(key.readableBytesView) else { return nil }
            return WireError(.invalidKey, "a key must be 1 to \(DataLimits.maximumKeyLength) bytes without spaces or control bytes; this one is \(key.readableBytes) bytes")
        }
        switch message {
        case .get(let keys):
            guard keys.count <= DataLimits.maximumKeysPerGet else {
                return WireError(.tooLarge, "a get may name at most \(DataLimits.maximumKeysPerGet) keys, not \(keys.count)")
            }
            for key in keys { if let error = badKey(key) { return error } }
            return nil
        case .store(let write):
            if let error = badKey(write.key) { return error }
            let limit = node.configuration.store.maxItemSize
            guard write.value.readableBytes <= limit else {
                return WireError(.tooLarge, "object too large for cache: \(write.value.readableBytes) bytes, the limit (-I) is \(limit)")
            }
            return nil
        case .touch(let key, _), .delete(let key):
            return badKey(key)
        default:
            return WireError(.protocolViolation, "\(message.type) is not a data request")
        }
    }

    private func runData(_ request: DataRequest, context: ChannelHandlerContext) {
        if let error = unusable(request.message) {
            writeData(.error(error), requestID: request.requestID, context: context)
            return
        }
        let isWrite: Bool
        if case .get = request.message { isWrite = false } else { isWrite = true }
        if isWrite, data.draining {
            writeData(.error(WireError(.unavailable, "this node is stopping; the write was not run")), requestID: request.requestID, context: context)
            return
        }
        if isWrite, let replica = node.replica {
            forwardData(request, to: replica, context: context)
            return
        }
        executeData(request, attempt: 1, lastCold: nil, context: context)
    }

    /// Runs a request on this node's store. A value on disk makes it wait for
    /// the value (and, for a `get` of several keys, every other cold one),
    /// then run again, at most `coldReadAttempts` times for the same key
    /// (`lastCold`: the key it waited for last). Another key is progress: a
    /// `get` of more cold keys than RAM holds reads them as it goes.
    private func executeData(_ request: DataRequest, attempt: Int, lastCold: [UInt8]?, context: ChannelHandlerContext) {
        let dispatcher = dataDispatcher(context)
        let answer: WireMessage
        var wrote = false
        do throws(ValueOnDisk) {
            switch request.message {
            case .get(let keys):
                let items = try dispatcher.dataGet(keys, byteBudget: WireFrame.maximumBodySize)
                let reply = items.map { WireMessage.items($0) }
                if let reply, reply.encodedBodySize <= WireFrame.maximumBodySize {
                    answer = reply
                } else {
                    answer = .error(WireError(.tooLarge, "the items found take more than a frame (16 MiB): ask for fewer keys at a time"))
                }
            case .store(let write):
                wrote = true
                switch try dispatcher.dataStore(write) {
                case .success(let result): answer = .writeResult(result)
                case .failure(let error): answer = .error(error)
                }
            case .touch(let key, let ttl):
                wrote = true
                answer = .writeResult(try dispatcher.dataTouch(key, ttlMillis: ttl))
            case .delete(let key):
                wrote = true
                answer = .writeResult(try dispatcher.dataDelete(key))
            default:
                answer = .error(WireError(.protocolViolation, "\(request.message.type) is not a data request"))
            }
        } catch {
            let attempt = error.key == lastCold ? attempt : 1
            guard attempt <= MemcacheConnectionHandler.coldReadAttempts else {
                logger.warning("a value kept leaving memory before its data request could use it", metadata: ["attempts": "\(attempt)"])
                dispatcher.loadedValues.removeAll()
                let wasWaiting = data.busy
                writeData(.error(WireError(.internalError, "cannot read the value from storage")), requestID: request.requestID, context: context)
                if wasWaiting { continueData(context: context) }
                return
            }
            waitForValue(error, of: request, attempt: attempt, context: context)
            return
        }
        dispatcher.loadedValues.removeAll()
        answerData(answer, requestID: request.requestID, wrote: wrote, context: context)
    }

    /// A `get` of several keys also reads every other value of it that is
    /// on disk and not read yet: the values read are kept for the request
    /// whether or not they stay in RAM, so each wait reads what left since.
    private func waitForValue(_ cold: ValueOnDisk, of request: DataRequest, attempt: Int, context: ChannelHandlerContext) {
        let dispatcher = dataDispatcher(context)
        var wanted = [cold]
        if case .get(let keys) = request.message {
            wanted += dispatcher.coldValues(of: keys, byteBudget: WireFrame.maximumBodySize)
                .filter { $0.key != cold.key && !dispatcher.loadedValues.contains($0.key) }
        }
        data.busy = true
        let loads = wanted.map { node.loadValue($0, on: context.eventLoop) }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        EventLoopFuture.whenAllSucceed(loads, on: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            if case .closed = handler.state { return }
            switch result {
            case .success(let values):
                for (value, read) in zip(wanted, values) {
                    if let read { dispatcher.loadedValues.insert(read, for: value.key) }
                }
                // Answers (and goes on with the queue), or waits again.
                handler.executeData(request, attempt: attempt + 1, lastCold: cold.key, context: context)
                return
            case .failure(let error):
                handler.logger.error("cannot read a value from storage", metadata: ["error": "\(error)"])
            }
            dispatcher.loadedValues.removeAll()
            handler.writeData(.error(WireError(.internalError, "cannot read the value from storage")), requestID: request.requestID, context: context)
            handler.continueData(context: context)
        }
    }

    /// Sends an answer; a write's waits until the backup acknowledged it
    /// (sync mode), as a memcached write's reply does, while the requests
    /// behind it run.
    private func answerData(_ answer: WireMessage, requestID: UInt32, wrote: Bool, context: ChannelHandlerContext) {
        let wasWaiting = data.busy
        if wrote, let acknowledged = node.primary?.afterWrites(on: context.eventLoop) {
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            acknowledged.whenComplete { _ in
                let (handler, context) = bound.value
                if case .closed = handler.state { return }
                handler.writeData(answer, requestID: requestID, context: context)
                handler.flushData(context: context)
            }
        } else {
            writeData(answer, requestID: requestID, context: context)
        }
        if wrote, holdForStorage(context: context) { return }
        // A request that waited goes on with the queue behind it; one run
        // straight away returns to the loop that runs the queue.
        if wasWaiting { continueData(context: context) }
    }

    /// Writes an answer without flushing (`flushData` flushes once per burst).
    func writeData(_ message: WireMessage, requestID: UInt32, context: ChannelHandlerContext) {
        if case .closed = state { return }
        var buffer = context.channel.allocator.buffer(capacity: WireFrame.headerSize + message.encodedBodySize)
        do {
            try buffer.writeWireMessage(message, flags: WireFrame.Flags.response, requestID: requestID)
        } catch {
            reject(.internalError, "cannot encode \(message.type): \(error)", requestID: requestID, context: context)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: nil)
        data.unflushed = true
        if !context.channel.isWritable {
            // The client does not read its answers: stop reading its requests.
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            flushData(context: context)
        }
    }

    // MARK: Storage backpressure

    /// After a write, as a memcached connection does: wakes the writer early
    /// when much is pending, and holds the connection's data requests while
    /// the backlog is over its bound. Returns whether they are held.
    private func holdForStorage(context: ChannelHandlerContext) -> Bool {
        guard let persistence = node.persistence else { return false }
        let overdrawn = node.store.isOverdrawn && !persistence.isFailing
        if persistence.wantsEarlyFlush || overdrawn { persistence.wake() }
        guard persistence.writerLags || overdrawn else { return false }
        data.busy = true
        recheckStorage(context: context)
        return true
    }

    private func recheckStorage(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(2)) {
            let (handler, context) = bound.value
            if case .closed = handler.state { return }
            if let persistence = handler.node.persistence,
                persistence.writerLags || (handler.node.store.isOverdrawn && !persistence.isFailing)
            {
                persistence.wake()
                handler.recheckStorage(context: context)
                return
            }
            handler.continueData(context: context)
        }
    }

    // MARK: Writes on a backup

    /// Sends a write to the primary as the memcached request it stands for;
    /// later data requests on this connection wait for its answer.
    private func forwardData(_ request: DataRequest, to replica: ReplicaClient, context: ChannelHandlerContext) {
        var bytes = context.channel.allocator.buffer(capacity: 128)
        Self.writeForwardedRequest(for: request.message, nowMillis: node.store.now(), into: &bytes)
        node.countForwardedWrite()
        data.busy = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        replica.forward(bytes, repeatable: Self.isRepeatable(request.message), on: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            if case .closed = handler.state { return }
            switch result {
            case .success(let reply):
                handler.writeData(Self.answer(toForwarded: reply), requestID: request.requestID, context: context)
            case .failure(ReplicaClient.ForwardError.roleChanged) where handler.node.primary != nil:
                // This node became the primary while the write waited: it runs here.
                handler.executeData(request, attempt: 1, lastCold: nil, context: context)
                return
            case .failure(ReplicaClient.ForwardError.rejected(let error)):
                // The primary refused the forward (it is no longer primary): not run.
                handler.writeData(.error(WireError(.unavailable, "the primary refused the write, which was not run: \(error.message)")), requestID: request.requestID, context: context)
            case .failure(ReplicaClient.ForwardError.notSent):
                // Never left this node: the client may send it again.
                handler.writeData(.error(WireError(.unavailable, "primary unavailable; the write was not run")), requestID: request.requestID, context: context)
            case .failure(let error):
                handler.logger.debug("forwarded data write failed", metadata: ["error": "\(error)"])
                handler.writeData(.error(WireError(.outcomeUnknown, "sent to the primary, no answer: the write may or may not have run (\(error))")), requestID: request.requestID, context: context)
            }
            handler.continueData(context: context)
        }
    }

    /// The memcached request a data write stands for (Protocol.md 1.4.5):
    /// `ms` with `c` (so the reply carries the new stamp) for the four
    /// storage modes, `touch` and `delete` as they are. The TTL becomes the
    /// exptime it means on this node's clock.
    /// Whether running the write twice leaves what running it once does
    /// (`set`, `touch`), as `MemcacheCommand.isRepeatableWrite`.
    static func isRepeatable(_ message: WireMessage) -> Bool {
        switch message {
        case .store(let write): return write.mode == .set
        case .touch: return true
        default: return false
        }
    }

    static func writeForwardedRequest(for message: WireMessage, nowMillis: Int64, into out: inout ByteBuffer) {
        switch message {
        case .store(let write):
            out.writeStaticString("ms ")
            out.writeImmutableBuffer(write.key)
            out.writeStaticString(" ")
            out.writeString(String(write.value.readableBytes))
            out.writeStaticString(" F")
            out.writeString(String(write.flags))
            out.writeStaticString(" T")
            out.writeString(String(Dispatcher.exptime(ttlMillis: write.ttlMillis, nowMillis: nowMillis)))
            out.writeStaticString(" c M")
            switch write.mode {
            case .set, .compareAndSet: out.writeStaticString("S")
            case .add: out.writeStaticString("E")
            case .replace: out.writeStaticString("R")
            }
            if write.mode == .compareAndSet {
                out.writeStaticString(" C")
                out.writeString(String(write.stamp))
            }
            out.writeStaticString("\r\n")
            out.writeImmutableBuffer(write.value)
            out.writeStaticString("\r\n")
        case .touch(let key, let ttl):
            out.writeStaticString("touch ")
            out.writeImmutableBuffer(key)
            out.writeStaticString(" ")
            out.writeString(String(Dispatcher.exptime(ttlMillis: ttl, nowMillis: nowMillis)))
            out.writeStaticString("\r\n")
        case .delete(let key):
            out.writeStaticString("delete ")
            out.writeImmutableBuffer(key)
            out.writeStaticString("\r\n")
        default:
            preconditionFailure("only data writes are forwarded")
        }
    }

    /// The typed answer for the primary's memcached reply to a forwarded
    /// data write: `HD c<stamp>`, `NS`, `EX`, `NF`, `TOUCHED`, `DELETED`,
    /// `NOT_FOUND`, or an error line.
    static func answer(toForwarded reply: ByteBuffer) -> WireMessage {
        let line = String(decoding: reply.readableBytesView.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        let words = line.split(separator: " ")
        switch words.first {
        case "HD":
            let stamp = words.dropFirst().first { $0.hasPrefix("c") }.flatMap { UInt64($0.dropFirst()) } ?? 0
            return .writeResult(WriteResult(.done, stamp: stamp))
        case "TOUCHED", "DELETED":
            return .writeResult(WriteResult(.done))
        case "NS":
            return .writeResult(WriteResult(.notStored))
        case "EX":
            return .writeResult(WriteResult(.exists))
        case "NF", "NOT_FOUND":
            return .writeResult(WriteResult(.notFound))
        case "SERVER_ERROR" where line.contains("too large"):
            return .error(WireError(.tooLarge, "the primary refused: \(line.dropFirst("SERVER_ERROR ".count))"))
        case "SERVER_ERROR" where line.contains("primary unavailable"):
            return .error(WireError(.unavailable, "primary unavailable"))
        default:
            return .error(WireError(.internalError, "the primary answered: \(line)"))
        }
    }
}
