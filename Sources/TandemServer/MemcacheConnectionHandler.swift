import Logging
import MemcacheProtocol
import NIOCore

/// Asks a connection to finish: answer what it has read, flush, close.
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
        /// `quit`, a fatal protocol error or a drain: replies are being flushed, then the socket closes.
        case closing
    }

    /// Replies are handed to the channel once this many bytes are pending,
    /// so a long pipeline does not build one huge buffer.
    private static let outboundWriteThreshold = 64 * 1024
    /// Consumed input is compacted away once this much has accumulated.
    private static let inboundCompactThreshold = 64 * 1024

    private var decoder: MemcacheDecoder
    private let dispatcher: Dispatcher
    private let counters: CommandCounters
    private let logger: Logger
    private var state: State = .open
    /// Bytes read but not yet decoded (a partial command).
    private var inbound: ByteBuffer?
    /// Replies not yet handed to the channel.
    private var outbound: ByteBuffer

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
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = incoming
        } else {
            inbound!.writeBuffer(&incoming)
        }
        processInbound(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushOutbound(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard case .paused = state, context.channel.isWritable else { return }
        state = .open
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        processInbound(context: context)
        flushOutbound(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainRequest {
            closeAfterReplies(context: context)
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
        guard case .open = state, inbound != nil else { return }
        var wrote = false
        defer { if wrote { applyStorageBackpressure(context: context) } }
        while true {
            let command: MemcacheCommand?
            do {
                command = try decoder.next(&inbound!)
            } catch {
                logger.debug("closing connection", metadata: ["reason": "\(error)", "peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                closeAfterReplies(context: context)
                return
            }
            guard let command else { break }
            if command.isWrite { wrote = true }
            if case .close = dispatcher.execute(command, into: &outbound) {
                closeAfterReplies(context: context)
                return
            }
            if outbound.readableBytes >= Self.outboundWriteThreshold {
                writeOutbound(context: context)
                if !context.channel.isWritable {
                    // Stop reading until the peer reads what we sent; the
                    // commands still buffered are answered when it does.
                    context.flush()
                    state = .paused
                    context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
                    break
                }
            }
        }
        if inbound!.readableBytes == 0 {
            inbound = nil
        } else if inbound!.readerIndex >= Self.inboundCompactThreshold {
            inbound!.discardReadBytes()
        }
    }

    // MARK: Storage backpressure

    /// How often a connection paused for storage checks whether it may go on.
    private static let storageRecheckInterval = TimeAmount.milliseconds(2)

    /// Wakes the writer early when much is pending, and pauses this writing
    /// connection while the backlog is over its bound.
    private func applyStorageBackpressure(context: ChannelHandlerContext) {
        guard let persistence = dispatcher.context.persistence, case .open = state else { return }
        if persistence.wantsEarlyFlush { persistence.wake() }
        guard persistence.isBackedUp else { return }
        state = .waitingForStorage
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
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
        if let persistence = dispatcher.context.persistence, persistence.isBackedUp {
            persistence.wake()
            scheduleStorageRecheck(context: context)
            return
        }
        state = .open
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        processInbound(context: context)
        flushOutbound(context: context)
    }

    private func writeOutbound(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0 else { return }
        counters.increment(.bytesWritten, by: UInt64(outbound.readableBytes))
        context.write(wrapOutboundOut(outbound), promise: nil)
        outbound = context.channel.allocator.buffer(capacity: 4096)
    }

    private func flushOutbound(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0 else { return }
        writeOutbound(context: context)
        context.flush()
    }

    /// Writes every pending reply, then closes the connection.
    private func closeAfterReplies(context: ChannelHandlerContext) {
        if case .closing = state { return }
        state = .closing
        inbound = nil
        counters.increment(.bytesWritten, by: UInt64(outbound.readableBytes))
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(outbound)).whenComplete { _ in
            channel.close(promise: nil)
        }
        outbound = ByteBuffer()
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
        context.currentConnections.wrappingSubtract(1, ordering: .relaxed)
        channelContext.fireChannelInactive()
    }
}
