import NIOCore
import NIOSSL
import Synchronization

/// The ports of a node that speak TLS (`--tls-ports`).
public struct TLSPorts: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// Tandem's wire port: the other node and `tandemctl`.
    public static let wire = TLSPorts(rawValue: 1)
    /// The memcached port: applications.
    public static let memcached = TLSPorts(rawValue: 2)
    public static let all: TLSPorts = [.wire, .memcached]

    /// `wire`, `memcached` or both, comma-separated (`--tls-ports wire,memcached`).
    public init?(list: String) {
        var ports: TLSPorts = []
        for name in list.split(separator: ",", omittingEmptySubsequences: false) {
            switch name.trimmingSpaces() {
            case "wire": ports.insert(.wire)
            case "memcached": ports.insert(.memcached)
            default: return nil
            }
        }
        guard !ports.isEmpty else { return nil }
        self = ports
    }

    /// As `stats` shows it: `wire,memcached`, `wire`, `memcached` or `none`.
    public var description: String {
        var names: [String] = []
        if contains(.wire) { names.append("wire") }
        if contains(.memcached) { names.append("memcached") }
        return names.isEmpty ? "none" : names.joined(separator: ",")
    }
}

/// A node's TLS: its certificate and key, the CA its peer must be signed
/// by (mutual TLS on the wire port), and which ports use it.
///
/// The contexts are built once, at start, and again by `reload()` (SIGHUP),
/// which reads the files afresh: connections accepted or made afterwards use
/// the new certificate, those already open keep theirs.
public final class NodeTLS: Sendable {
    public let certificatePath: String
    public let keyPath: String
    public let caPath: String?
    public let ports: TLSPorts

    private struct Contexts {
        var memcached: NIOSSLContext
        var wire: NIOSSLContext
        var peer: ClientTLS
    }

    private let contexts: Mutex<Contexts>
    /// Handshakes accepted connections failed, by port (`tls_handshake_errors`).
    private let failures = Mutex<[TLSPorts: UInt64]>([:])

    /// Whether the wire port requires a client certificate signed by `--tls-ca`,
    /// and this node presents its own to its peer.
    public var isMutual: Bool { caPath != nil }

    /// How long an accepted connection has to complete its TLS handshake.
    public let handshakeTimeout: TimeAmount

    /// Loads and checks the files; what `warnings` holds does not stop a node.
    public init(
        certificate: String, key: String, ca: String?, ports: TLSPorts, handshakeTimeout: TimeAmount = .seconds(10)
    ) throws(TLSSetupError) {
        self.handshakeTimeout = handshakeTimeout
        self.certificatePath = certificate
        self.keyPath = key
        self.caPath = ca
        self.ports = ports
        let (contexts, warnings) = try Self.build(certificate: certificate, key: key, ca: ca)
        self.contexts = Mutex(contexts)
        self.warnings = warnings
    }

    /// Warnings of the first load (an expired certificate, a key others may read).
    public let warnings: [String]

    /// Reads the files again and uses them for new connections; on an error
    /// the files in use stay in use. Returns the new files' warnings.
    @discardableResult
    public func reload() throws(TLSSetupError) -> [String] {
        let (fresh, warnings) = try Self.build(certificate: certificatePath, key: keyPath, ca: caPath)
        contexts.withLock { $0 = fresh }
        return warnings
    }

    /// How long closing a connection waits for the client's TLS close_notify
    /// (NIOSSL's default is 5 s): many clients just close the socket, and a
    /// node that drains its connections to stop should not wait for them.
    static let closeNotifyTimeout = TimeAmount.seconds(1)

    private static func build(certificate: String, key: String, ca: String?) throws(TLSSetupError) -> (Contexts, [String]) {
        let identity = try TLSIdentity.load(certificate: certificate, key: key)
        let trust = try ca.map { path throws(TLSSetupError) in try TLSTrust.load(ca: path) }
        let chain = identity.chain.map { NIOSSLCertificateSource.certificate($0) }
        // memcached's own TLS does not ask clients for certificates either
        // (ssl_verify_mode 0): applications authenticate with SASL, if at all.
        var memcached = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(identity.key))
        memcached.minimumTLSVersion = .tlsv12
        memcached.shutdownTimeout = closeNotifyTimeout
        var wire = memcached
        if let trust {
            // Mutual TLS: a client without a certificate signed by the CA is
            // refused in the handshake. A server cannot check a client's name.
            wire = .makeServerConfigurationWithMTLS(
                certificateChain: chain, privateKey: .privateKey(identity.key), trustRoots: .certificates(trust.roots)
            )
            wire.minimumTLSVersion = .tlsv12
            wire.shutdownTimeout = closeNotifyTimeout
            wire.sendCANameList = true
        }
        do {
            let contexts = Contexts(
                memcached: try NIOSSLContext(configuration: memcached),
                wire: try NIOSSLContext(configuration: wire),
                peer: try ClientTLS.make(ca: trust, identity: identity)
            )
            return (contexts, identity.warnings)
        } catch let error as TLSSetupError {
            throw error
        } catch {
            throw .unusable(reason: "\(error)")
        }
    }

    /// The client side of this node's connections to its peer's wire port;
    /// nil when the wire port is plaintext (the peer's then is too).
    public var peerClient: ClientTLS? {
        ports.contains(.wire) ? contexts.withLock { $0.peer } : nil
    }

    /// Puts TLS in front of an accepted connection's handlers, when `port`
    /// uses it. A failed handshake is counted, handed to `onFailure` (to
    /// log) and closes the connection; the handlers behind never see it.
    public func secureAccepted(
        _ channel: any Channel, port: TLSPorts, onFailure: @escaping @Sendable (TLSHandshakeFailure, SocketAddress?) -> Void
    ) throws {
        guard ports.contains(port) else { return }
        let context = contexts.withLock { port == .wire ? $0.wire : $0.memcached }
        try channel.pipeline.syncOperations.addHandlers(
            [
                NIOSSLServerHandler(context: context),
                HandshakeWatch(timeout: handshakeTimeout) { [self] failure, peer in
                    // A client that connects and leaves without a word (a
                    // TCP health check) is not a failed handshake.
                    if failure.cause != .closed { failures.withLock { $0[port, default: 0] += 1 } }
                    onFailure(failure, peer)
                },
                UncleanShutdownFilter(),
            ],
            position: .first
        )
    }

    /// Failed handshakes on `port` since start.
    public func handshakeFailures(on port: TLSPorts) -> UInt64 {
        failures.withLock { $0[port] ?? 0 }
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return text
    }
}
