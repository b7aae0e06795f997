import NIOCore
import NIOSSL
import NIOTLS

// The handlers that sit right behind NIOSSL's in a connection's pipeline.

/// Watches the handshake of an accepted TLS connection, right behind the
/// NIOSSL handler: a handshake that fails (a plaintext client, a client
/// certificate from another CA) or does not happen in time is reported once
/// and the connection closed, without the error reaching the protocol
/// handlers behind, which would log it again as a connection error.
final class HandshakeWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    /// A client that connects and says nothing must not hold a connection forever.
    static let defaultTimeout = TimeAmount.seconds(10)

    private let timeout: TimeAmount
    private let onFailure: @Sendable (TLSHandshakeFailure, SocketAddress?) -> Void
    private var timer: Scheduled<Void>?
    private var reported = false

    init(timeout: TimeAmount = HandshakeWatch.defaultTimeout, onFailure: @escaping @Sendable (TLSHandshakeFailure, SocketAddress?) -> Void) {
        self.timeout = timeout
        self.onFailure = onFailure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context: context)
        context.fireChannelActive()
    }

    private func startTimer(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = self.timeout
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (watch, context) = bound.value
            watch.fail(TLSHandshakeFailure(cause: .timedOut, detail: "none within \(timeout.nanoseconds / 1_000_000_000) s of connecting"), context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if case .handshakeCompleted = event as? TLSUserEvent {
            timer?.cancel()
            timer = nil
            // From here on, errors are the protocol handlers' business.
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(TLSHandshakeFailure(error) ?? TLSHandshakeFailure(cause: .other, detail: "\(error)"), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    private func fail(_ failure: TLSHandshakeFailure, context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        guard !reported else { return }
        reported = true
        onFailure(failure, context.channel.remoteAddress)
        context.close(promise: nil)
    }
}

/// Takes a TLS connection closed without TLS's close_notify for what it is
/// in plaintext: a closed connection. NIOSSL reports it as an error, which
/// the protocol handlers would log as a broken connection each time a
/// client (a killed `tandemctl watch`, a memcached client that just closes
/// its socket) or a dead peer goes away. Both protocols frame their own
/// messages, so a cut-off message is noticed without close_notify.
final class UncleanShutdownFilter: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .uncleanShutdown = error as? NIOSSLError { return }
        context.fireErrorCaught(error)
    }
}
