import Logging
import MemcacheProtocol
import NIOCore
import Replication
import SessionStore

/// Asks a connection to finish: write the replies to the commands it has
/// executed, flush, close. Input not yet executed (a partial command, or
/// commands held back by backpressure) is not answered.
struct DrainRequest: Sendable {}

/// The memcached hot path: a plain inbound handler on the event loop that
/// decodes, executes against the store and appends each reply to one
/// outbound buffer, flushed once per read burst (`channelReadComplete`).
final class MemcacheConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Where the connection is in its life.
    private enum State {
        /// Reading and answering commands.
        case open
        /// Reading is paused because the peer does not read our replies fast enough.
        case paused
        /// Reading is paused because persistence has fallen behind and this connection writes.
        case waitingForStorage
        /// On a primary in sync mode: this burst's replies are held until the
        /// backup acknowledged its writes.
        case waitingForReplication
        /// On a backup: a write was forwarded to the primary; later commands wait for its reply.
        case waitingForPrimary
        /// A command needs a value that is not in RAM: it runs again once a
        /// reader thread has read it from the log; later commands wait, so
        /// replies keep their order.
        case waitingForValue
        /// `quit`, a fatal protocol error or a drain: replies are being flushed, then the socket closes.
        case closing

        /// A short wait during which input is read and kept, not run: up to
        /// `inboundWhileWaiting` of it, then reading stops.
        var holdsInput: Bool {
            switch self {
            case .waitingForReplication, .waitingForPrimary, .waitingForValue: return true
            case .open, .paused, .waitingForStorage, .closing: return false
            }
        }
    }

    /// Replies are handed to the channel once this many bytes are pending,
    /// so a long pipeline does not build one huge buffer.
    private static let outboundWriteThreshold = 64 * 1024
    /// Consumed input is compacted away once this much has accumulated.
    private static let inboundCompactThreshold = 64 * 1024
    /// Input taken in while the connection waits (for a value, the backup or
    /// the primary), before reading stops.
    private static let inboundWhileWaiting = 1 << 20
    /// A retrieval naming more keys is answered in parts of this many
    /// (`RetrievalCommand.parts`), each sent before the next is built, so
    /// the reply a connection holds is bounded by the values of one part.
    static let keysPerRetrievalPart = 32

    private var decoder: MemcacheDecoder
    /// Set once the first byte of the connection was the binary protocol's magic (0x80).
    private var binaryDecoder: BinaryDecoder?
    /// Whether the connection's protocol (text or binary) has been decided.
    private var protocolDecided = false
    /// With SASL on: whether this connection has authenticated.
    private var authenticated = false
    private let dispatcher: Dispatcher
    private let counters: CommandCounters
    private let logger: Logger
    private var state: State = .open
    /// Whether this handler turned the channel's `autoRead` off.
    private var readingStopped = false
    /// The peer shut its side (the listener allows half-closed connections):
    /// what it sent is still run and answered, then the connection closes.
    private var inputEnded = false
    /// Bytes read but not yet decoded (a partial command).
    private var inbound: ByteBuffer?
    /// The parts of a long retrieval not answered yet; run before any
    /// command decoded after it.
    private var pendingParts: ArraySlice<RetrievalCommand> = []
    /// Replies not yet handed to the channel.
    private var outbound: ByteBuffer
    /// Replies handed to the channel but not yet flushed.
    private var unflushed = false
    /// While closing: whether the peer sent anything since the last look.
    private var inputWhileClosing = false
    /// Inside `processInbound`: events that fire synchronously during a flush
    /// must not start a second, nested processing loop.
    private var processing = false
    /// Request latency (`RequestLatency`): when the commands being answered
    /// were read (stamped by a read while nothing is held or unflushed),
    /// how many were answered since the last flush, and whether one wrote.
    private var burstStart = RequestLatency.now()
    private var burstAnswered = 0
    private var burstWrote = false

    init(decoder: MemcacheDecoder, dispatcher: Dispatcher, counters: CommandCounters, logger: Logger) {
        self.decoder = decoder
        self.dispatcher = dispatcher
        self.counters = counters
        self.logger = logger
        self.outbound = ByteBuffer()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        outbound = context.channel.allocator.buffer(capacity: 4096)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        counters.increment(.bytesRead, by: UInt64(incoming.readableBytes))
        // Input that arrives while closing (after quit, a fatal error or a drain) is dropped.
        if case .closing = state {
            inputWhileClosing = true
            return
        }
        if burstAnswered == 0, case .open = state { burstStart = RequestLatency.now() }
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = incoming
        } else {
            inbound!.writeBuffer(&incoming)
        }
        // A read from the log, the backup's acknowledgement and the primary's
        // reply each take well under a millisecond: reading goes on meanwhile
        // (no two system calls per wait to stop and restart it), unless the
        // peer sends a lot.
        if state.holdsInput, inbound!.readableBytes > Self.inboundWhileWaiting {
            stopReading(context: context)
        }
        processInbound(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        switch state {
        case .waitingForReplication, .waitingForValue:
            // Replies held for the backup's acknowledgement are sent when it
            // comes; those before a command waiting for a value, once it has
            // run (they may be replies to writes, which the hold covers).
            return
        case .open, .paused, .waitingForStorage, .waitingForPrimary, .closing:
            flushOutbound(context: context)
            finishIfInputEnded(context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard case .paused = state, context.channel.isWritable else { return }
        state = .open
        resumeReading(context: context)
        // A flush inside processInbound can make the channel writable again at
        // once; the loop that is running then simply carries on.
        guard !processing else { return }
        processInbound(context: context)
        flushOutbound(context: context)
        finishIfInputEnded(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainRequest {
            closeAfterReplies(context: context)
        } else if case ChannelEvent.inputClosed? = event as? ChannelEvent {
            // A client that sends its requests and then shuts its side gets
            // every reply, as memcached gives it: also those held for the
            // backup, a forwarded write's or a value read from disk, which
            // come after the end of input has been read.
            inputEnded = true
            finishIfInputEnded(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Processing

    private func processInbound(context: ChannelHandlerContext) {
        guard case .open = state, inbound != nil || !pendingParts.isEmpty, !processing else { return }
        processing = true
        var wrote = false
        defer {
            processing = false
            if wrote {
                holdForReplication(context: context)
                applyStorageBackpressure(context: context)
            }
        }
        let replica = dispatcher.context.replica
        let holdsReplies = dispatcher.context.primary != nil
        if !protocolDecided, let first = inbound!.getInteger(at: inbound!.readerIndex, as: UInt8.self) {
            // memcached tells the protocols apart by the first byte, on the same port.
            protocolDecided = true
            if first == BinaryDecoder.requestMagic {
                binaryDecoder = BinaryDecoder(limits: decoder.limits)
            } else if dispatcher.context.configuration.saslUsers != nil {
                // With SASL, the text protocol (which cannot authenticate) is refused, as memcached does.
                outbound.writeClientError("unauthenticated: this server requires SASL over the binary protocol")
                closeAfterReplies(context: context)
                return
            }
        }
        while true {
            if binaryDecoder != nil {
                let step = processBinary(context: context, wrote: &wrote, holdsReplies: holdsReplies)
                guard step else { return }
                break
            }
            var command: MemcacheCommand?
            if let part = pendingParts.popFirst() {
                command = .retrieve(part)
            } else {
                guard inbound != nil else { break }
                do {
                    command = try decoder.next(&inbound!)
                } catch {
                    logger.debug("closing connection", metadata: ["reason": "\(error)", "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                    closeAfterReplies(context: context)
                    return
                }
                // A long retrieval run here goes part by part; a backup forwards
                // a gat whole (the primary answers it in parts).
                // (Each key takes at least two bytes of the line: a shorter one cannot need parts.)
                if case .retrieve(let retrieval)? = command, retrieval.keys.bytes.readableBytes > 2 * Self.keysPerRetrievalPart,
                    !(retrieval.touchExptime != nil && replica != nil)
                {
                    let parts = retrieval.parts(ofAtMost: Self.keysPerRetrievalPart)
                    command = .retrieve(parts[0])
                    pendingParts = parts.dropFirst()
                }
            }
            guard let command else { break }
            if command.isWrite {
                if let replica {
                    forward(command, to: replica, context: context)
                    // A forward that failed at once (no primary) has already put its reply in place.
                    if case .waitingForPrimary = state { break }
                    continue
                }
                wrote = true
                burstWrote = true
            }
            guard let disposition = run(
                command, context: context,
                execute: { dispatcher, command, out throws(ValueOnDisk) in try dispatcher.execute(command, into: &out) },
                unreadable: { dispatcher, command, out in dispatcher.replyValueUnreadable(to: command, into: &out) },
                alsoCold: { dispatcher, command in dispatcher.coldValues(of: command) }
            ) else { break }
            if case .close = disposition {
                closeAfterReplies(context: context)
                return
            }
            if outbound.readableBytes >= Self.outboundWriteThreshold {
                // Replies after a write may have to wait for the backup: stop here
                // and let the hold decide, rather than send them early.
                if wrote && holdsReplies { break }
                writeOutbound(context: context)
                if !context.channel.isWritable {
                    // Stop reading until the peer reads what we sent; the
                    // commands still buffered are answered when it does.
                    state = .paused
                    stopReading(context: context)
                    flushOutbound(context: context)
                    guard case .open = state else { break }
                }
            }
        }
        guard inbound != nil else { return }
        if inbound!.readableBytes == 0 {
            inbound = nil
        } else if inbound!.readerIndex >= Self.inboundCompactThreshold {
            inbound!.discardReadBytes()
        }
    }

    /// The binary protocol's loop: the same shape as the text loop. Returns
    /// false when the connection is closing (nothing more to do here).
    private func processBinary(context: ChannelHandlerContext, wrote: inout Bool, holdsReplies: Bool) -> Bool {
        let replica = dispatcher.context.replica
        while true {
            let command: BinaryCommand?
            do {
                command = try binaryDecoder!.next(&inbound!)
            } catch {
                logger.debug("closing connection", metadata: ["reason": "\(error)", "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                closeAfterReplies(context: context)
                return false
            }
            guard let command else { return true }
            if case .proceed? = dispatcher.authenticate(command, authenticated: &authenticated, into: &outbound) { continue }
            if command.isWrite {
                if let replica, case .request(let request) = command {
                    var raw = context.channel.allocator.buffer(capacity: 256)
                    raw.writeBinaryRequest(request)
                    let dispatcher = self.dispatcher
                    forward(raw: raw, refusedSet: false, noreply: false, repeatable: command.isRepeatableWrite, to: replica, context: context) { outbound in
                        // Only a promotion while the write waited brings it here:
                        // a value to read would make it wait again; it is refused.
                        do throws(ValueOnDisk) { _ = try dispatcher.execute(command, into: &outbound) } catch {
                            dispatcher.replyValueUnreadable(to: command, into: &outbound)
                        }
                    }
                    if case .waitingForPrimary = state { return true }
                    continue
                }
                wrote = true
                burstWrote = true
            }
            guard let disposition = run(
                command, context: context,
                execute: { dispatcher, command, out throws(ValueOnDisk) in try dispatcher.execute(command, into: &out) },
                unreadable: { dispatcher, command, out in dispatcher.replyValueUnreadable(to: command, into: &out) }
            ) else { return true }
            if case .close = disposition {
                closeAfterReplies(context: context)
                return false
            }
            if outbound.readableBytes >= Self.outboundWriteThreshold {
                if wrote && holdsReplies { return true }
                writeOutbound(context: context)
                if !context.channel.isWritable {
                    state = .paused
                    stopReading(context: context)
                    flushOutbound(context: context)
                    guard case .open = state else { return true }
                }
            }
        }
    }

    // MARK: Values not in RAM

    /// A command, run against the store into the replies.
    typealias Command = (inout ByteBuffer) throws(ValueOnDisk) -> Disposition

    /// How many times a command may find the same value gone from RAM again
    /// (or moved on disk) before it is answered with an error.
    static let coldReadAttempts = 8

    /// Runs a command (text or binary). nil when it needs a value that is
    /// not in RAM: what it wrote is taken back, and it runs again once the
    /// value (and every other cold value `alsoCold` names, e.g. of a
    /// multi-key get) is read. The closures capture nothing, so a command
    /// that finds its values in RAM allocates nothing here.
    private func run<C>(
        _ command: C, context: ChannelHandlerContext,
        execute: @escaping (Dispatcher, C, inout ByteBuffer) throws(ValueOnDisk) -> Disposition,
        unreadable: @escaping (Dispatcher, C, inout ByteBuffer) -> Void,
        alsoCold: (Dispatcher, C) -> [ValueOnDisk] = { _, _ in [] }
    ) -> Disposition? {
        let mark = outbound.writerIndex
        do throws(ValueOnDisk) {
            let disposition = try execute(dispatcher, command, &outbound)
            commandDone()
            return disposition
        } catch {
            outbound.moveWriterIndex(to: mark)
            let dispatcher = self.dispatcher
            waitForValue(
                [error] + alsoCold(dispatcher, command).filter { $0.key != error.key }, attempt: 1,
                run: { out throws(ValueOnDisk) in try execute(dispatcher, command, &out) },
                failure: { out in unreadable(dispatcher, command, &out) }, context: context
            )
            return nil
        }
    }

    /// A command has run to the end: the values read for it are no longer needed.
    private func commandDone() {
        dispatcher.loadedValues.removeAll()
        burstAnswered &+= 1
    }

    /// Has the value read on a reader thread and installed in the store, then
    /// runs the command again on this event loop and goes on with the
    /// commands after it. A read that fails answers the command with an error.
    private func waitForValue(
        _ wanted: [ValueOnDisk], attempt: Int, run: @escaping Command, failure: @escaping (inout ByteBuffer) -> Void, context: ChannelHandlerContext
    ) {
        state = .waitingForValue
        let bound = NIOLoopBound((self, context, run, failure), eventLoop: context.eventLoop)
        let cold = wanted[0]
        // One value (the common case) without the machinery of combining futures.
        let loaded: EventLoopFuture<[LoadedValue?]> = wanted.count == 1
            ? dispatcher.context.loadValue(cold, on: context.eventLoop).map { [$0] }
            : EventLoopFuture.whenAllSucceed(wanted.map { dispatcher.context.loadValue($0, on: context.eventLoop) }, on: context.eventLoop)
        loaded.whenComplete { result in
            let (handler, context, run, failure) = bound.value
            guard case .waitingForValue = handler.state else { return }
            switch result {
            case .success(let loaded):
                for (value, read) in zip(wanted, loaded) {
                    if let read { handler.dispatcher.loadedValues.insert(read, for: value.key) }
                }
                let mark = handler.outbound.writerIndex
                do throws(ValueOnDisk) {
                    let disposition = try run(&handler.outbound)
                    if case .close = disposition {
                        handler.dispatcher.loadedValues.removeAll()
                        handler.closeAfterReplies(context: context)
                        return
                    }
                } catch {
                    handler.outbound.moveWriterIndex(to: mark)
                    // Another key of the command is progress (a `get` of many
                    // cold keys reads them one by one); the same key again is not.
                    let next = error.key == cold.key ? attempt + 1 : 1
                    if next <= Self.coldReadAttempts {
                        handler.waitForValue([error], attempt: next, run: run, failure: failure, context: context)
                        return
                    }
                    handler.logger.warning("a value kept leaving memory before its command could use it", metadata: ["attempts": "\(attempt)"])
                    failure(&handler.outbound)
                }
            case .failure(let error):
                handler.logger.error("cannot read a value from storage", metadata: ["error": "\(error)"])
                failure(&handler.outbound)
            }
            handler.commandDone()
            handler.state = .open
            if handler.burstWrote {
                handler.holdForReplication(context: context)
                handler.applyStorageBackpressure(context: context)
            }
            if case .open = handler.state { handler.resume(context: context) }
        }
    }

    // MARK: The pair

    /// On a primary in sync mode: holds this burst's replies until the backup
    /// acknowledged the writes (or the sync timeout passed).
    private func holdForReplication(context: ChannelHandlerContext) {
        guard case .open = state, let primary = dispatcher.context.primary,
            let acknowledged = primary.afterWrites(on: context.eventLoop)
        else { return }
        state = .waitingForReplication
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        acknowledged.whenComplete { _ in
            let (handler, context) = bound.value
            guard case .waitingForReplication = handler.state else { return }
            handler.resume(context: context)
        }
    }

    /// On a backup: sends a write to the primary; its reply takes this
    /// command's place in the reply stream, and later commands wait for it.
    private func forward(_ command: MemcacheCommand, to replica: ReplicaClient, context: ChannelHandlerContext) {
        var request = context.channel.allocator.buffer(capacity: 256)
        request.writeMemcacheRequest(command)
        var refusedSet = false
        if case .refusedSet = command { refusedSet = true }
        let dispatcher = self.dispatcher
        forward(raw: request, refusedSet: refusedSet, noreply: command.noreply, repeatable: command.isRepeatableWrite, to: replica, context: context) { outbound in
            // Only a promotion while the write waited brings it here: a value
            // to read would make it wait again; it is refused.
            do throws(ValueOnDisk) { _ = try dispatcher.execute(command, into: &outbound) } catch {
                dispatcher.replyValueUnreadable(to: command, into: &outbound)
            }
        }
    }

    /// `runHere` runs the write on this node, for when it became the primary
    /// before the write could be sent (a failover while it waited). With
    /// `noreply` (text commands) this node's own errors are not sent either,
    /// as the primary's are not.
    private func forward(
        raw request: ByteBuffer, refusedSet: Bool, noreply: Bool, repeatable: Bool, to replica: ReplicaClient, context: ChannelHandlerContext,
        runHere: @escaping (inout ByteBuffer) -> Void
    ) {
        dispatcher.context.countForwardedWrite()
        state = .waitingForPrimary
        // The closure that runs the write here stays on this event loop too.
        let bound = NIOLoopBound((self, context, runHere), eventLoop: context.eventLoop)
        replica.forward(request, repeatable: repeatable, on: context.eventLoop).whenComplete { result in
            let (handler, context, runHere) = bound.value
            guard case .waitingForPrimary = handler.state else { return }
            switch result {
            case .success(let reply):
                handler.outbound.writeImmutableBuffer(reply)
                // The primary removed the old value; the refusal itself is this node's to send.
                if refusedSet, !noreply { handler.outbound.writeServerError("object too large for cache") }
            case .failure(ReplicaClient.ForwardError.roleChanged) where handler.dispatcher.context.primary != nil:
                runHere(&handler.outbound)
            case .failure(let error):
                handler.logger.debug("forwarded write failed", metadata: ["error": "\(error)"])
                if handler.binaryDecoder != nil, request.readableBytes >= BinaryDecoder.headerSize {
                    let opcode = request.getInteger(at: request.readerIndex + 1, as: UInt8.self)!
                    let opaque = request.getInteger(at: request.readerIndex + 12, as: UInt32.self)!
                    handler.outbound.writeBinaryError(opcode: opcode, status: .temporaryFailure, opaque: opaque)
                } else if !noreply {
                    handler.outbound.writeServerError("primary unavailable")
                }
            }
            handler.burstAnswered &+= 1
            handler.burstWrote = true
            handler.resume(context: context)
        }
    }

    /// Back to reading after a hold or a forward: send what is owed, then go on
    /// with the commands already buffered.
    private func resume(context: ChannelHandlerContext) {
        state = .open
        resumeReading(context: context)
        flushOutbound(context: context)
        processInbound(context: context)
        flushOutbound(context: context)
        finishIfInputEnded(context: context)
    }

    /// Once the peer has shut its side and every command it sent has run
    /// (a partial one never completes), the replies are written and the
    /// connection closes. Nothing to do while a command waits: this runs
    /// again when it is done.
    private func finishIfInputEnded(context: ChannelHandlerContext) {
        guard inputEnded, !processing else { return }
        switch state {
        case .open:
            processInbound(context: context)
            guard case .open = state else { return }
            closeAfterReplies(context: context)
        case .closing:
            // Replies being written after quit, a fatal error or a drain:
            // nothing more can come, so the quiet period is over.
            inputWhileClosing = false
        case .paused, .waitingForStorage, .waitingForReplication, .waitingForPrimary, .waitingForValue:
            return
        }
    }

    // MARK: Storage backpressure

    /// How often a connection paused for storage checks whether it may go on.
    private static let storageRecheckInterval = TimeAmount.milliseconds(2)

    /// Wakes the writer early when much is pending, and pauses this writing
    /// connection while the writer lags (its uncommitted changes are over their bound).
    private func applyStorageBackpressure(context: ChannelHandlerContext) {
        guard let persistence = dispatcher.context.persistence, case .open = state else { return }
        // Writes that cannot leave RAM until committed have filled -m: commit
        // now, and wait for it (unless commits fail: then nothing would come).
        let overdrawn = dispatcher.store.isOverdrawn && !persistence.isFailing
        if persistence.wantsEarlyFlush || overdrawn { persistence.wake() }
        guard persistence.writerLags || overdrawn else { return }
        state = .waitingForStorage
        stopReading(context: context)
        scheduleStorageRecheck(context: context)
    }

    private func scheduleStorageRecheck(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: Self.storageRecheckInterval) {
            let (handler, context) = bound.value
            handler.resumeIfStorageCaughtUp(context: context)
        }
    }

    private func resumeIfStorageCaughtUp(context: ChannelHandlerContext) {
        guard case .waitingForStorage = state else { return }
        if let persistence = dispatcher.context.persistence,
            persistence.writerLags || (dispatcher.store.isOverdrawn && !persistence.isFailing)
        {
            persistence.wake()
            scheduleStorageRecheck(context: context)
            return
        }
        state = .open
        resumeReading(context: context)
        processInbound(context: context)
        flushOutbound(context: context)
        finishIfInputEnded(context: context)
    }

    /// Backpressure on the peer: the socket is not read until `resumeReading`.
    private func stopReading(context: ChannelHandlerContext) {
        guard !readingStopped else { return }
        readingStopped = true
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    private func resumeReading(context: ChannelHandlerContext) {
        guard readingStopped else { return }
        readingStopped = false
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
    }

    private func writeOutbound(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0 else { return }
        counters.increment(.bytesWritten, by: UInt64(outbound.readableBytes))
        context.write(wrapOutboundOut(outbound), promise: nil)
        unflushed = true
        outbound = context.channel.allocator.buffer(capacity: 4096)
    }

    private func flushOutbound(context: ChannelHandlerContext) {
        writeOutbound(context: context)
        if burstAnswered > 0 {
            // Every command answered since the last flush waited since its burst was read.
            counters.latency.record(
                nanos: RequestLatency.now() &- burstStart, requests: burstAnswered, kind: burstWrote ? .write : .read
            )
            burstAnswered = 0
            burstWrote = false
        }
        guard unflushed else { return }
        unflushed = false
        context.flush()
    }

    /// A closing connection closes once the peer has sent nothing for this long...
    static let closeQuietPeriod = TimeAmount.milliseconds(100)
    /// ...or, at the latest, this long after its replies were written.
    static let closeLinger = TimeAmount.seconds(2)

    /// Writes every pending reply, then closes the connection.
    ///
    /// Closing a socket that still has unread input, or that receives input
    /// after it is closed, makes the kernel reset the connection and throw
    /// away the replies it has not transmitted yet: a peer that is still
    /// sending (a pipeline cut short by `quit`, a fatal error or a drain)
    /// would lose replies the server already wrote, possibly in the middle of
    /// a line. So once the replies are written only the write side is shut
    /// (the peer reads them, then end of file); input is still read and
    /// dropped, and the socket closes when the peer closes its side, when the
    /// peer has been quiet for `closeQuietPeriod`, or after `closeLinger`.
    /// A peer that has already shut its side sends nothing more: the socket
    /// closes as soon as the replies are written.
    private func closeAfterReplies(context: ChannelHandlerContext) {
        if case .closing = state { return }
        state = .closing
        inbound = nil
        counters.increment(.bytesWritten, by: UInt64(outbound.readableBytes))
        unflushed = false
        let channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        // A peer that shut its side sends nothing more: no input to wait out.
        let inputEnded = self.inputEnded
        context.writeAndFlush(wrapOutboundOut(outbound)).whenComplete { result in
            guard case .success = result, !inputEnded else {
                channel.close(promise: nil)
                return
            }
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
            handler.value.inputWhileClosing = false
            handler.value.closeWhenQuiet(channel: channel, deadline: .now() + Self.closeLinger)
        }
        outbound = ByteBuffer()
        // Keep reading, so that the peer's end of file is seen.
        resumeReading(context: context)
    }

    /// Closes `channel` once the peer has been quiet for a `closeQuietPeriod`, or at `deadline`.
    private func closeWhenQuiet(channel: any Channel, deadline: NIODeadline) {
        let handler = NIOLoopBound(self, eventLoop: channel.eventLoop)
        channel.eventLoop.scheduleTask(in: Self.closeQuietPeriod) {
            guard channel.isActive else { return }
            let handler = handler.value
            if handler.inputWhileClosing, NIODeadline.now() < deadline {
                handler.inputWhileClosing = false
                handler.closeWhenQuiet(channel: channel, deadline: deadline)
            } else {
                channel.close(promise: nil)
            }
        }
    }
}

/// Counts connections and refuses those over the limit, the way memcached does,
/// without disturbing the connections already open.
final class ConnectionGate: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let context: ServerContext
    private var admitted = false

    init(context: ServerContext) {
        self.context = context
    }

    func channelActive(context channelContext: ChannelHandlerContext) {
        let open = context.currentConnections.wrappingAdd(1, ordering: .relaxed).newValue
        guard open <= context.configuration.maxConnections else {
            // A refused connection holds no slot, not even while its refusal is written.
            context.currentConnections.wrappingSubtract(1, ordering: .relaxed)
            context.rejectedConnections.wrappingAdd(1, ordering: .relaxed)
            var refusal = channelContext.channel.allocator.buffer(capacity: 40)
            refusal.writeStaticString("ERROR Too many open connections\r\n")
            let channel = channelContext.channel
            channelContext.writeAndFlush(wrapOutboundOut(refusal)).whenComplete { _ in
                channel.close(promise: nil)
            }
            return
        }
        admitted = true
        context.totalConnections.wrappingAdd(1, ordering: .relaxed)
        channelContext.fireChannelActive()
    }

    func channelRead(context channelContext: ChannelHandlerContext, data: NIOAny) {
        // A refused connection's input is ignored while the refusal is written.
        if admitted { channelContext.fireChannelRead(data) }
    }

    func channelInactive(context channelContext: ChannelHandlerContext) {
        if admitted { context.currentConnections.wrappingSubtract(1, ordering: .relaxed) }
        channelContext.fireChannelInactive()
    }
}
