import NIOCore
import NIOSSL

/// A failed TLS handshake, sorted into the few causes an operator can act on.
///
/// BoringSSL reports a failure as a stack of `library:reason` codes; which
/// side notices what differs (a client whose certificate the server refused
/// learns it from an alert, the server from its own verification), so both
/// sides' codes are listed here.
public struct TLSHandshakeFailure: Error, Sendable, CustomStringConvertible {
    public enum Cause: Sendable, Equatable {
        /// This side could not verify the other's certificate (unknown CA, expired, wrong name).
        case untrustedPeer
        /// The other side refused this side's certificate.
        case certificateRefused
        /// The other side wants a client certificate and none was sent.
        case certificateRequired
        /// The client sent no certificate, and this side requires one (mutual TLS).
        case noClientCertificate
        /// What came was not TLS: the other side speaks plaintext on that port.
        case notTLS
        /// This side spoke plaintext and the other side answered in TLS.
        case expectsTLS
        /// The other side closed the connection before the handshake finished.
        case closed
        /// No handshake within the time allowed.
        case timedOut
        /// Anything else (no shared protocol version or cipher, a bad record, …).
        case other
    }

    public let cause: Cause
    /// What BoringSSL or NIOSSL said.
    public let detail: String

    /// Whether the other side answered (refused a certificate, presented one
    /// that is not trusted, spoke the other protocol): something is up at
    /// that address, which a backup must not take for a dead primary.
    public var peerAnswered: Bool {
        switch cause {
        case .untrustedPeer, .certificateRefused, .certificateRequired, .noClientCertificate, .notTLS, .expectsTLS: return true
        case .closed, .timedOut, .other: return false
        }
    }

    public init(cause: Cause, detail: String) {
        self.cause = cause
        self.detail = detail
    }

    /// The failure `error` stands for; nil when it is not about TLS.
    public init?(_ error: any Error) {
        if let failure = error as? TLSHandshakeFailure {
            self = failure
            return
        }
        let detail = Self.reasons(in: "\(error)")
        switch error {
        case let error as NIOSSLError:
            switch error {
            case .handshakeFailed:
                self.init(cause: Self.classify(detail), detail: detail)
            case .uncleanShutdown:
                // After the handshake: an ordinary close (see UncleanShutdownFilter).
                return nil
            case .noCertificateToValidate:
                self.init(cause: .untrustedPeer, detail: detail)
            default:
                self.init(cause: .other, detail: detail)
            }
        case let error as NIOSSLExtraError where error == .failedToValidateHostname:
            self.init(cause: .untrustedPeer, detail: detail)
        case is BoringSSLError:
            self.init(cause: Self.classify(detail), detail: detail)
        default:
            return nil
        }
    }

    /// BoringSSL's reason codes (`WRONG_VERSION_NUMBER`) without the error
    /// numbers and source file names around them; the text as it is when
    /// there are none.
    static func reasons(in text: String) -> String {
        let marker = "OPENSSL_internal:"
        var reasons: [Substring] = []
        var rest = Substring(text)
        while let range = rest.firstRange(of: marker) {
            rest = rest[range.upperBound...]
            let reason = rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" }
            if !reason.isEmpty, !reasons.contains(reason) { reasons.append(reason) }
        }
        return reasons.isEmpty ? text : reasons.joined(separator: ", ")
    }

    private static func classify(_ detail: String) -> Cause {
        func says(_ reasons: String...) -> Bool { reasons.contains { detail.contains($0) } }
        if says("EOF during") { return .closed }
        if says("CERTIFICATE_VERIFY_FAILED") { return .untrustedPeer }
        if says("PEER_DID_NOT_RETURN_A_CERTIFICATE") { return .noClientCertificate }
        if says("CERTIFICATE_REQUIRED") { return .certificateRequired }
        if says("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_EXPIRED",
                "ALERT_CERTIFICATE_REVOKED", "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED")
        {
            return .certificateRefused
        }
        if says("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL", "WRONG_SSL_VERSION",
                "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE", "UNEXPECTED_RECORD", "ENCRYPTED_LENGTH_TOO_LONG")
        {
            return .notTLS
        }
        return .other
    }

    /// The failure in words, from the point of view of the side that saw it.
    public var description: String {
        switch cause {
        case .untrustedPeer: return "the other side's certificate is not trusted (not signed by the CA this side trusts, or expired): \(detail)"
        case .certificateRefused: return "the other side refused this side's certificate (not signed by the CA it trusts, or expired): \(detail)"
        case .certificateRequired: return "the other side requires a client certificate and none was given: \(detail)"
        case .noClientCertificate: return "the client sent no certificate, and mutual TLS requires one: \(detail)"
        case .notTLS: return "the other side does not speak TLS on this port (plaintext?): \(detail)"
        case .expectsTLS: return "the other side expects TLS on this port, and this side spoke plaintext: \(detail)"
        case .closed: return "the other side closed the connection during the TLS handshake: \(detail)"
        case .timedOut: return "no TLS handshake in time: \(detail)"
        case .other: return "TLS handshake failed: \(detail)"
        }
    }
}
