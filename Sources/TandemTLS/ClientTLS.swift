import NIOCore
import NIOPosix
import NIOSSL

/// The client side of TLS: `tandemctl --tls`, and a node's own connections
/// to its peer (replication, the checks at start and while it leads).
public struct ClientTLS: Sendable {
    let context: NIOSSLContext
    /// Whether the server's certificate must name the host connected to.
    /// Not with a private CA (`--tls-ca`): nodes are addressed by IP and
    /// their certificates need not list it; a certificate signed by the
    /// pair's own CA is what identifies a node.
    let checksHostname: Bool

    /// Builds a client context.
    /// - Parameters:
    ///   - ca: the CA bundle the server's chain must lead to (no hostname
    ///     check); nil: the system's trust store, with the hostname (or IP
    ///     address) checked as a browser would.
    ///   - identity: the certificate and key to present, for mutual TLS.
    public static func make(ca: TLSTrust?, identity: TLSIdentity?) throws(TLSSetupError) -> ClientTLS {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.shutdownTimeout = NodeTLS.closeNotifyTimeout
        if let ca {
            configuration.trustRoots = .certificates(ca.roots)
            configuration.certificateVerification = .noHostnameVerification
        }
        if let identity {
            configuration.certificateChain = identity.chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(identity.key)
        }
        do {
            return ClientTLS(context: try NIOSSLContext(configuration: configuration), checksHostname: ca == nil)
        } catch {
            throw .unusable(reason: "\(error)")
        }
    }

    /// Loads the files and builds the context (`tandemctl --tls-ca/--tls-cert/--tls-key`).
    public static func load(ca: String?, certificate: String?, key: String?) throws(TLSSetupError) -> ClientTLS {
        let trust = try ca.map { path throws(TLSSetupError) in try TLSTrust.load(ca: path) }
        var identity: TLSIdentity?
        if let certificate, let key {
            identity = try TLSIdentity.load(certificate: certificate, key: key)
        }
        return try make(ca: trust, identity: identity)
    }

    /// Puts TLS in front of `channel`'s handlers (call it first in a channel initializer).
    public func secure(_ channel: any Channel, host: String) throws {
        // SNI and the name check take a host name; an IP address is checked
        // against the certificate's IP entries instead (NIOSSL does that when
        // given no name).
        let isAddress = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        let name = checksHostname && !isAddress ? host : nil
        let handler = try NIOSSLClientHandler(context: context, serverHostname: name)
        try channel.pipeline.syncOperations.addHandlers([handler, UncleanShutdownFilter()], position: .first)
    }

    /// The front of a connection to a node's wire port (call it first in a
    /// channel initializer): TLS with `tls`; without, a `TLSAnswerDetector`,
    /// so that a node that speaks TLS is told from one that hangs up.
    public static func prepare(_ channel: any Channel, host: String, tls: ClientTLS?) throws {
        if let tls {
            try tls.secure(channel, host: host)
        } else {
            try channel.pipeline.syncOperations.addHandler(TLSAnswerDetector())
        }
    }

    /// Connects to a node's wire port (`tandemctl`, a node's questions to
    /// its peer): TCP without delay, `prepare`d, then what `initialize`
    /// puts behind, on the channel's event loop; returns what it returns.
    public static func connect<Output: Sendable>(
        host: String, port: Int, tls: ClientTLS?, timeout: TimeAmount, group: any EventLoopGroup,
        initialize: @escaping @Sendable (any Channel) throws -> Output
    ) async throws -> Output {
        try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try prepare(channel, host: host, tls: tls)
                    return try initialize(channel)
                }
            }
    }
}

/// Tells a plaintext client that the server answered in TLS: a TLS server
/// that receives plaintext answers with an alert record (or a handshake
/// record), whose first bytes (`0x15 0x03`, `0x16 0x03`) no wire frame can
/// start with (a frame starts with its length, at most 16 MiB). Put first in
/// a plaintext wire connection; it leaves after the first read.
public final class TLSAnswerDetector: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self),
            let second = bytes.getInteger(at: bytes.readerIndex + 1, as: UInt8.self),
            first == 0x15 || first == 0x16, second == 0x03
        {
            context.fireErrorCaught(TLSHandshakeFailure(cause: .expectsTLS, detail: "it answered with a TLS record"))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
