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

/// The node's side (`WireHandshakeAcceptor`, what `WireConnectionHandler`
/// runs), driven by the connecting side's real `WireHandshake`.
@Suite("Wire handshake, both ends")
struct WireHandshakeAcceptorTests {
    let secret = try! WireSecret(bytes: Array("0123456789abcdef0123456789abcdef".utf8))
    let other = try! WireSecret(bytes: Array("another secret, 32 bytes long!!!".utf8))
    let node = WireHandshakeAcceptor.Node(name: "n1", role: .primary, epoch: 4)

    /// Runs `handshake` against `acceptor`; the connecting side's error, if any.
    func run(_ handshake: WireHandshake, _ acceptor: inout WireHandshakeAcceptor) async -> (HelloOK?, WireHandshakeError?) {
        var node = acceptor
        defer { acceptor = node }
        do {
            let ok = try await handshake.run { message in
                switch node.received(message, node: self.node) {
                case .answer(let answer, _): return answer
                case .refuse(let code, let reason): return .error(WireError(code, reason))
                }
            }
            return (ok, nil)
        } catch {
            return (nil, error as? WireHandshakeError)
        }
    }

    @Test("every pairing of secrets ends as section 1.3 says, on both sides")
    func secrets() async {
        let peer = WireHandshakeAcceptor.Peer(role: .peer, name: "a", version: WireVersion.maximum, epoch: 9)
        let cases: [(client: WireSecret?, node: WireSecret?, error: WireHandshakeError?, state: WireHandshakeAcceptor.State?)] = [
            (nil, nil, nil, .accepted(peer)),
            (secret, secret, nil, .accepted(peer)),
            // The node accepts, but the connecting side will not talk to a node that cannot prove the secret.
            (secret, nil, .nodeWithoutSecret, .accepted(peer)),
            // The connecting side has nothing to prove with: it stops after helloOK.
            (nil, secret, .secretRequired, nil),
            (secret, other, .proofRefused, .refused),
        ]
        for (clientSecret, nodeSecret, error, state) in cases {
            let handshake = WireHandshake(role: .peer, nodeName: "a", epoch: 9, secret: clientSecret)
            var acceptor = WireHandshakeAcceptor(secret: nodeSecret)
            let (ok, failure) = await run(handshake, &acceptor)
            #expect(failure == error, "client \(clientSecret == nil ? "without" : "with") a secret, node \(nodeSecret == nil ? "without" : "with")")
            if error == nil {
                #expect(ok?.nodeName == "n1" && ok?.nodeRole == .primary && ok?.epoch == 4)
            }
            if let state {
                #expect(acceptor.state == state)
            } else {
                guard case .awaitingAuth = acceptor.state else {
                    Issue.record("the node should still wait for auth, not \(acceptor.state)")
                    continue
                }
            }
        }
    }

    @Test("the version is the highest both speak; the nonce and the proof are checked, each refusal with its code")
    func refusals() {
        let hello = WireHandshake(role: .client, nodeName: "ctl", secret: nil, versions: 1...3).hello
        var acceptor = WireHandshakeAcceptor(secret: nil)
        guard case .answer(.helloOK(let ok), let accepted?) = acceptor.received(.hello(hello), node: node) else {
            Issue.record("an older client's hello was not accepted")
            return
        }
        #expect(ok.version == 3 && accepted.version == 3 && accepted.role == .client)
        // The handshake is over: another hello is not one.
        #expect(acceptor.received(.hello(hello), node: node) == .refuse(.protocolViolation, "the handshake is over"))

        func refusal(_ messages: [WireMessage], secret: WireSecret? = nil) -> WireErrorCode? {
            var acceptor = WireHandshakeAcceptor(secret: secret)
            for message in messages {
                if case .refuse(let code, _) = acceptor.received(message, node: node) {
                    #expect(acceptor.state == .refused)
                    return code
                }
            }
            return nil
        }
        var tooNew = hello
        tooNew.minimumVersion = WireVersion.maximum + 1
        tooNew.maximumVersion = WireVersion.maximum + 2
        var shortNonce = hello
        shortNonce.nonce = Array(hello.nonce.dropLast())
        var backwards = hello
        (backwards.minimumVersion, backwards.maximumVersion) = (3, 2)
        #expect(refusal([.ping(timestampMillis: 1)]) == .protocolViolation)
        #expect(refusal([.hello(tooNew)]) == .unsupportedVersion)
        #expect(refusal([.hello(backwards)]) == .unsupportedVersion)
        #expect(refusal([.hello(shortNonce)]) == .malformed)
        #expect(refusal([.hello(hello), .ping(timestampMillis: 1)], secret: secret) == .authenticationRequired)
        #expect(refusal([.hello(hello), .auth(proof: [1, 2, 3])], secret: secret) == .malformed)
    }

    @Test("a proof binds the role its hello announced: a client's proof does not admit a connection saying it is the peer")
    func proofBindsTheRole() {
        let client = WireHandshake(role: .client, nodeName: "ctl", secret: secret)
        var asPeer = client.hello
        asPeer.role = .peer
        var acceptor = WireHandshakeAcceptor(secret: secret)
        guard case .answer(.helloOK(let ok), nil) = acceptor.received(.hello(asPeer), node: node) else {
            Issue.record("no challenge")
            return
        }
        let proof = secret.clientProof(clientNonce: client.hello.nonce, serverNonce: ok.nonce, role: .client)
        #expect(acceptor.received(.auth(proof: proof), node: node) == .refuse(.authenticationFailed, "wrong proof: the shared secret differs"))
    }
}
