import Testing
import WireProtocol

/// The connecting side's handshake (`WireHandshake`), which `TandemClient`,
/// the replication link and a node's links to its peer share.
@Suite("Wire handshake")
struct WireHandshakeTests {
    let secret = try! WireSecret(bytes: Array("0123456789abcdef0123456789abcdef".utf8))
    let serverNonce = Array(UInt8(0x20)...UInt8(0x3F))

    func helloOK(auth: AuthenticationMethod, nonce: [UInt8]? = nil) -> HelloOK {
        HelloOK(version: WireVersion.maximum, nodeName: "node", nodeRole: .primary, epoch: 3, authentication: auth, nonce: nonce ?? (auth == .none ? [] : serverNonce))
    }

    /// A node as section 1.3 describes it: answers `hello`, then checks the proof.
    func node(secret nodeSecret: WireSecret?, answering hello: Hello) -> (WireMessage) -> WireMessage {
        { message in
            switch message {
            case .hello(let received):
                #expect(received == hello)
                return .helloOK(helloOK(auth: nodeSecret == nil ? .none : .hmacSHA256))
            case .auth(let proof):
                guard let nodeSecret, nodeSecret.isValidClientProof(proof, clientNonce: hello.nonce, serverNonce: serverNonce, role: hello.role) else {
                    return .error(WireError(.authenticationFailed, "wrong proof"))
                }
                return .authOK(proof: nodeSecret.serverProof(clientNonce: hello.nonce, serverNonce: serverNonce))
            default:
                return .error(WireError(.protocolViolation, "not a handshake message"))
            }
        }
    }

    func failure(_ handshake: WireHandshake, _ exchange: (WireMessage) -> WireMessage) async -> (any Error)? {
        do {
            _ = try await handshake.run { exchange($0) }
            return nil
        } catch {
            return error
        }
    }

    @Test("hello offers every version this build speaks, with a fresh 16-byte nonce, the role and the epoch")
    func hello() {
        let a = WireHandshake(role: .peer, nodeName: "a", epoch: 7, secret: nil)
        let b = WireHandshake(role: .peer, nodeName: "a", epoch: 7, secret: nil)
        #expect(a.hello.minimumVersion == WireVersion.minimum && a.hello.maximumVersion == WireVersion.maximum)
        #expect(a.hello.role == .peer && a.hello.nodeName == "a" && a.hello.epoch == 7 && a.hello.magic == Hello.magic)
        #expect(a.hello.nonce.count == WireSecret.clientNonceLength && a.hello.nonce != b.hello.nonce)
        let older = WireHandshake(role: .client, nodeName: "", secret: nil, versions: 1...3)
        #expect(older.hello.maximumVersion == 3 && older.hello.epoch == 0)
    }

    @Test("with the same secret on both sides, or none, the handshake completes")
    func completes() async throws {
        for shared in [secret, nil] as [WireSecret?] {
            let handshake = WireHandshake(role: .peer, nodeName: "a", secret: shared)
            let ok = try await handshake.run { node(secret: shared, answering: handshake.hello)($0) }
            #expect(ok == helloOK(auth: shared == nil ? .none : .hmacSHA256))
        }
        // The proof binds the role hello announced.
        let handshake = WireHandshake(role: .client, nodeName: "ctl", secret: secret)
        guard case .authenticate(.auth(let proof)) = try handshake.next(after: helloOK(auth: .hmacSHA256)) else {
            Issue.record("no auth after a helloOK asking for it")
            return
        }
        #expect(secret.isValidClientProof(proof, clientNonce: handshake.hello.nonce, serverNonce: serverNonce, role: .client))
        #expect(!secret.isValidClientProof(proof, clientNonce: handshake.hello.nonce, serverNonce: serverNonce, role: .peer))
    }

    @Test("a secret on one side only, another secret, a short nonce or a wrong node proof fail, each for its reason")
    func failures() async throws {
        let other = try WireSecret(bytes: Array("another secret, 32 bytes long!!!".utf8))
        let withSecret = WireHandshake(role: .peer, nodeName: "a", secret: secret)
        let without = WireHandshake(role: .peer, nodeName: "a", secret: nil)
        #expect(await failure(withSecret, node(secret: nil, answering: withSecret.hello)) as? WireHandshakeError == .nodeWithoutSecret)
        #expect(await failure(without, node(secret: secret, answering: without.hello)) as? WireHandshakeError == .secretRequired)
        #expect(await failure(withSecret, node(secret: other, answering: withSecret.hello)) as? WireHandshakeError == .proofRefused)
        #expect(throws: WireHandshakeError.badNonce(31)) { try withSecret.next(after: helloOK(auth: .hmacSHA256, nonce: Array(serverNonce.dropLast()))) }
        // A node that answers auth without knowing the secret.
        let ok = helloOK(auth: .hmacSHA256)
        #expect(throws: WireHandshakeError.wrongNodeProof) {
            try withSecret.check(authOK: other.serverProof(clientNonce: withSecret.hello.nonce, serverNonce: serverNonce), after: ok)
        }
        #expect(throws: Never.self) {
            try withSecret.check(authOK: secret.serverProof(clientNonce: withSecret.hello.nonce, serverNonce: serverNonce), after: ok)
        }
    }

    @Test("an error or another message in answer to hello is reported as such; what the exchange throws passes through")
    func otherAnswers() async {
        struct Gone: Error {}
        let handshake = WireHandshake(role: .client, nodeName: "a", secret: nil)
        let version = WireError(.unsupportedVersion, "this node speaks versions 1...4")
        #expect(await failure(handshake) { _ in .error(version) } as? WireHandshakeError == .refused(version))
        #expect(await failure(handshake) { _ in .pong(timestampMillis: 1) } as? WireHandshakeError == .unexpectedReply(.pong, to: .hello))
        do {
            _ = try await handshake.run { _ in throw Gone() }
            Issue.record("the handshake ended without an answer")
        } catch {
            #expect(error is Gone)
        }
    }
}
