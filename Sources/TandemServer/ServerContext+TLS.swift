import Logging
import NIOCore
import TandemTLS

/// TLS on the node's listeners (`--tls-cert`, `--tls-ports`): set up per
/// accepted connection, in front of the protocol handlers, so they (and the
/// binary protocol's detection by its first byte) see decrypted bytes only.
extension ServerContext {
    /// Puts TLS in front of an accepted connection of `port` when the node
    /// uses it there. A connection whose handshake fails (a plaintext
    /// client, a client certificate the CA did not sign) is logged once and
    /// closed; the listener and the other connections go on.
    func secure(_ channel: any Channel, port: TLSPorts) throws {
        guard let tls = configuration.tls else { return }
        let logger = self.logger
        let portName = port.description
        try tls.secureAccepted(channel, port: port) { failure, peer in
            let metadata: Logger.Metadata = ["port": "\(portName)", "client": "\(peer.map { "\($0)" } ?? "?")", "reason": "\(failure)"]
            switch failure.cause {
            case .closed:
                // Connected and left without a handshake: a TCP health check, a port scan.
                logger.debug("connection closed before the TLS handshake", metadata: metadata)
            default:
                logger.info("TLS handshake failed; connection closed", metadata: metadata)
            }
        }
    }

    /// `stats`: which ports use TLS, whether the wire port requires client
    /// certificates, and how many handshakes accepted connections failed.
    func tlsStatistics() -> [(String, String)] {
        guard let tls = configuration.tls else {
            return [("tls_ports", "none"), ("tls_mutual", "0"), ("tls_handshake_errors", "0")]
        }
        let failures = tls.handshakeFailures(on: .wire) + tls.handshakeFailures(on: .memcached)
        return [
            ("tls_ports", tls.ports.description),
            ("tls_mutual", tls.isMutual && tls.ports.contains(.wire) ? "1" : "0"),
            ("tls_handshake_errors", "\(failures)"),
        ]
    }
}
