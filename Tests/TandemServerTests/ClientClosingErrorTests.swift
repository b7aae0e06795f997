import NIOCore
import NIOPosix
import TandemClient
import Testing
import WireProtocol

/// A node that closes a connection first sends an `error` answering no
/// request (id 0, no RESPONSE flag: Protocol.md 1.5) saying why. A request
/// still waiting must fail with that reason, not with a bare "closed".
@Suite("TandemClient and a node's reason for closing")
struct ClientClosingErrorTests {
    /// Answers the first bytes it reads, whatever they are, with an
    /// unsolicited `error` frame, then closes: a node refusing a connection.
    final class RefuseWithReason: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        let reason: WireError

        init(reason: WireError) { self.reason = reason }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var frame = context.channel.allocator.buffer(capacity: 128)
            _ = try? frame.writeWireMessage(.error(reason))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    @Test("a request waiting when the node closes fails with the node's unsolicited error")
    func waitingRequestGetsTheReason() async throws {
        let reason = WireError(.protocolViolation, "this node is closing the connection: a test's reason")
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RefuseWithReason(reason: reason))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(listener.localAddress?.port)
        do {
            _ = try await TandemClient.connect(host: "127.0.0.1", port: port, timeout: .seconds(10))
            Issue.record("the handshake succeeded against a node that refused it")
        } catch TandemClientError.server(let error) {
            #expect(error == reason)
        } catch {
            Issue.record("expected the node's reason, got \(error)")
        }
        try await listener.close()
    }
}
