/// The connecting side of a connection's handshake (Protocol.md 1.3):
/// `hello`, then, when the node asks for it, `auth` with this side's proof,
/// and the check of the node's proof in `authOK`. The node's side is
/// `WireHandshakeAcceptor`.
///
/// It only decides; the caller moves the frames. `run(_:)` drives it over a
/// request/response exchange (`TandemClient`, a node's short links to its
/// peer); a channel handler that reacts to frames as they arrive (the
/// replication link) calls `next(after:)` and `check(authOK:after:)` itself.
public struct WireHandshake: Sendable {
    /// The `hello` to send first.
    public let hello: Hello
    /// The secret this side proves it knows, and expects the node to know.
    public let secret: WireSecret?

    /// A `hello` with a fresh nonce, offering every version this build speaks.
    public init(role: ConnectionRole, nodeName: String, epoch: UInt64 = 0, secret: WireSecret?, versions: ClosedRange<UInt16> = WireVersion.minimum...WireVersion.maximum) {
        self.hello = Hello(
            minimumVersion: versions.lowerBound, maximumVersion: versions.upperBound, role: role, nodeName: nodeName,
            nonce: WireSecret.randomNonce(count: WireSecret.clientNonceLength), epoch: epoch
        )
        self.secret = secret
    }

    /// What follows the node's `helloOK`.
    public enum Next: Sendable, Equatable {
        /// The handshake is done: requests may follow.
        case ready
        /// Send this `auth`; the node answers `authOK`.
        case authenticate(WireMessage)
    }

    /// Checks `helloOK` against this side's secret: a node that asks for the
    /// secret is answered with a proof; a node that does not ask for it while
    /// this side has one is refused, as it cannot prove it is the node the
    /// secret belongs to.
    public func next(after ok: HelloOK) throws(WireHandshakeError) -> Next {
        switch (ok.authentication, secret) {
        case (.none, nil):
            return .ready
        case (.none, .some):
            throw .nodeWithoutSecret
        case (.hmacSHA256, nil):
            throw .secretRequired
        case (.hmacSHA256, let secret?):
            guard ok.nonce.count == WireSecret.serverNonceLength else { throw .badNonce(ok.nonce.count) }
            // The proof binds the role hello announced: the node checks it against that role.
            return .authenticate(.auth(proof: secret.clientProof(clientNonce: hello.nonce, serverNonce: ok.nonce, role: hello.role)))
        }
    }

    /// Checks the node's proof that it knows the secret too.
    public func check(authOK proof: [UInt8], after ok: HelloOK) throws(WireHandshakeError) {
        guard let secret, secret.isValidServerProof(proof, clientNonce: hello.nonce, serverNonce: ok.nonce) else {
            throw .wrongNodeProof
        }
    }

    /// Runs the whole handshake through `exchange`, which sends a message and
    /// returns the node's answer to it (an `error` answer returned, not
    /// thrown). Returns the node's `helloOK`; throws `WireHandshakeError`, or
    /// what `exchange` throws.
    public func run(_ exchange: (WireMessage) async throws -> WireMessage) async throws -> HelloOK {
        let ok: HelloOK
        switch try await exchange(.hello(hello)) {
        case .helloOK(let answer): ok = answer
        case .error(let error): throw WireHandshakeError.refused(error)
        case let other: throw WireHandshakeError.unexpectedReply(other.type, to: .hello)
        }
        guard case .authenticate(let auth) = try next(after: ok) else { return ok }
        switch try await exchange(auth) {
        case .authOK(let proof): try check(authOK: proof, after: ok)
        case .error(let error) where error.code == .authenticationFailed: throw WireHandshakeError.proofRefused
        case .error(let error): throw WireHandshakeError.refused(error)
        case let other: throw WireHandshakeError.unexpectedReply(other.type, to: .auth)
        }
        return ok
    }
}

/// Why the handshake failed. Each side that connects words these for its
/// own reader (`tandemctl`'s user, a node's log).
public enum WireHandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The node asks for the shared secret, and this side has none.
    case secretRequired
    /// This side has a secret, and the node does not ask for one.
    case nodeWithoutSecret
    /// `helloOK` carries a nonce of this many bytes instead of 32.
    case badNonce(Int)
    /// The node refused this side's proof: the secrets differ.
    case proofRefused
    /// The node's proof is wrong: it does not know this side's secret.
    case wrongNodeProof
    /// The node answered with an error (to `hello`: e.g. no version in common).
    case refused(WireError)
    /// The node answered with something else than the handshake's next step.
    case unexpectedReply(WireMessageType, to: WireMessageType)

    public var description: String {
        switch self {
        case .secretRequired: return "the node requires authentication and no secret was given"
        case .nodeWithoutSecret: return "the node does not require authentication, so it cannot prove it knows the secret"
        case .badNonce(let count): return "a \(count)-byte nonce in helloOK"
        case .proofRefused: return "the node refused this side's proof: the secrets differ"
        case .wrongNodeProof: return "the node's proof is wrong: it does not know the secret"
        case .refused(let error): return "the node answered: \(error.message) (\(error.code))"
        case .unexpectedReply(let type, let request): return "\(type) in answer to \(request)"
        }
    }
}
