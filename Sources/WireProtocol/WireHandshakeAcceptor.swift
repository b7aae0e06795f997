/// A node as its `helloOK` presents it: what the other side of a handshake
/// learns of who it reached.
public struct NodeIdentity: Sendable, Equatable {
    public var name: String
    public var role: NodeRole
    public var epoch: UInt64

    public init(name: String, role: NodeRole, epoch: UInt64) {
        self.name = name
        self.role = role
        self.epoch = epoch
    }
}

/// The node's side of a connection's handshake (Protocol.md 1.3), the
/// counterpart of `WireHandshake`: what to answer the first frames of a
/// connection (`hello`, then `auth` when the node has a secret), and who is
/// at the other end once they are done.
///
/// It only decides; the node's connection handler moves the frames and acts
/// on the outcome (a peer's epoch may make the node step down). Tests drive
/// it against `WireHandshake` without a channel.
public struct WireHandshakeAcceptor: Sendable {
    /// Who is at the other end, as its `hello` said (and, with a secret, proved).
    public struct Peer: Sendable, Equatable {
        public var role: ConnectionRole
        public var name: String
        /// The protocol version the connection speaks: the highest both sides do.
        public var version: UInt16
        /// The epoch its `hello` carried.
        public var epoch: UInt64

        public init(role: ConnectionRole, name: String, version: UInt16, epoch: UInt64) {
            self.role = role
            self.name = name
            self.version = version
            self.epoch = epoch
        }
    }

    /// Where the handshake is.
    public enum State: Sendable, Equatable {
        /// Nothing received yet: the first frame must be `hello`.
        case awaitingHello
        /// `helloOK` sent with a challenge: only `auth` may come next.
        case awaitingAuth(Peer, clientNonce: [UInt8], serverNonce: [UInt8])
        /// Done: requests may follow.
        case accepted(Peer)
        /// Refused: the connection is closed after the error.
        case refused
    }

    /// What to do with a frame received during the handshake.
    public enum Step: Sendable, Equatable {
        /// Send this answer (`helloOK` or `authOK`). With `accepted`, the
        /// handshake is done and that is who the connection is with; without,
        /// the next frame must be `auth`.
        case answer(WireMessage, accepted: Peer?)
        /// Answer `error` with this code and message, and close.
        case refuse(WireErrorCode, String)
    }

    /// How the node presents itself in `helloOK`.
    public typealias Node = NodeIdentity

    /// The secret a connection must prove it knows; nil: none is asked for.
    public let secret: WireSecret?
    public private(set) var state: State = .awaitingHello

    public init(secret: WireSecret?) {
        self.secret = secret
    }

    /// The next handshake frame from the other side. `node` is read at the
    /// moment of the `hello` (its role and epoch change over time).
    public mutating func received(_ message: WireMessage, node: @autoclosure () -> Node) -> Step {
        let step: Step
        switch state {
        case .awaitingHello:
            step = hello(message, node: node())
        case .awaitingAuth(let peer, let clientNonce, let serverNonce):
            step = auth(message, peer: peer, clientNonce: clientNonce, serverNonce: serverNonce)
        case .accepted, .refused:
            // The caller serves requests once accepted and nothing after a refusal.
            step = .refuse(.protocolViolation, "the handshake is over")
        }
        if case .refuse = step { state = .refused }
        return step
    }

    private mutating func hello(_ message: WireMessage, node: Node) -> Step {
        guard case .hello(let hello) = message, hello.magic == Hello.magic else {
            return .refuse(.protocolViolation, "the first frame must be hello")
        }
        guard hello.minimumVersion <= WireVersion.maximum, hello.maximumVersion >= WireVersion.minimum,
            hello.minimumVersion <= hello.maximumVersion
        else {
            return .refuse(.unsupportedVersion, "this node speaks versions \(WireVersion.minimum)...\(WireVersion.maximum)")
        }
        // Required with or without a secret: the nonce is part of the
        // handshake, not of the authentication, so a client need not know
        // whether the node has a secret to build a valid hello.
        guard hello.nonce.count == WireSecret.clientNonceLength else {
            return .refuse(.malformed, "hello.nonce must be \(WireSecret.clientNonceLength) random bytes, not \(hello.nonce.count)")
        }
        let peer = Peer(role: hello.role, name: hello.nodeName, version: min(hello.maximumVersion, WireVersion.maximum), epoch: hello.epoch)
        // A fresh nonce for every connection, so a proof recorded on one answers no other.
        let serverNonce = secret == nil ? [] : WireSecret.randomNonce(count: WireSecret.serverNonceLength)
        let ok = WireMessage.helloOK(HelloOK(
            version: peer.version, nodeName: node.name, nodeRole: node.role, epoch: node.epoch,
            authentication: secret == nil ? .none : .hmacSHA256, nonce: serverNonce
        ))
        guard secret != nil else {
            state = .accepted(peer)
            return .answer(ok, accepted: peer)
        }
        state = .awaitingAuth(peer, clientNonce: hello.nonce, serverNonce: serverNonce)
        return .answer(ok, accepted: nil)
    }

    private mutating func auth(_ message: WireMessage, peer: Peer, clientNonce: [UInt8], serverNonce: [UInt8]) -> Step {
        guard case .auth(let proof) = message else {
            return .refuse(.authenticationRequired, "this node requires authentication: send auth after helloOK")
        }
        guard proof.count == WireSecret.proofLength else {
            return .refuse(.malformed, "auth.proof must be \(WireSecret.proofLength) bytes")
        }
        // The proof binds the role the hello announced: a client's proof does not admit it as the peer.
        guard let secret, secret.isValidClientProof(proof, clientNonce: clientNonce, serverNonce: serverNonce, role: peer.role) else {
            return .refuse(.authenticationFailed, "wrong proof: the shared secret differs")
        }
        state = .accepted(peer)
        return .answer(.authOK(proof: secret.serverProof(clientNonce: clientNonce, serverNonce: serverNonce)), accepted: peer)
    }
}
