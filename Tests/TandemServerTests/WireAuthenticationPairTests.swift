import Logging
import NIOCore
import NIOPosix
import Replication
import Synchronization
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// Pairs and clients with a shared secret on the wire port (Protocol.md 1.3).
@Suite("Wire authentication of a pair", .serialized)
struct WireAuthenticationPairTests {
    let secret = try! WireSecret(bytes: Array("pair-secret-0123456789abcdef".utf8))
    let otherSecret = try! WireSecret(bytes: Array("another-secret-0123456789abc".utf8))

    func configuration(role: NodeRole, peerPort: Int? = nil, secret: WireSecret?) -> ServerConfiguration {
        var configuration = testConfiguration()
        configuration.pair = PairConfiguration(
            wireHost: "127.0.0.1", wirePort: 0, role: role, peer: peerPort.map { ("127.0.0.1", $0) },
            replication: ReplicationConfiguration(nodeName: role == .primary ? "P" : "B", secret: secret),
            secret: secret
        )
        return configuration
    }

    /// Starts a primary with `secret` and a backup with `backupSecret` (logging into `backupLog`),
    /// runs `body`, and stops both.
    func withPair(
        backupSecret: WireSecret?, backupLog: LogRecorder = LogRecorder(),
        _ body: (TandemNode, TandemNode) async throws -> Void
    ) async throws {
        let primary = try await TandemNode.start(configuration: configuration(role: .primary, secret: secret), logger: quietLogger)
        let backup: TandemNode
        do {
            backup = try await TandemNode.start(
                configuration: configuration(role: .backup, peerPort: primary.wirePort, secret: backupSecret), logger: backupLog.logger
            )
        } catch {
            await primary.shutdown()
            throw error
        }
        do {
            try await body(primary, backup)
        } catch {
            await backup.shutdown()
            await primary.shutdown()
            throw error
        }
        await backup.shutdown()
        await primary.shutdown()
    }

    func status(_ client: TandemClient) async throws -> [String: String] {
        Dictionary(try await client.status().map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    @Test("a pair with the same secret replicates, and clients need that secret")
    func sameSecretReplicates() async throws {
        try await withPair(backupSecret: secret) { primary, backup in
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!, secret: secret)
            #expect(admin.server.authentication == .hmacSHA256 && admin.server.nonce.count == 32)
            #expect(try await eventually { try await status(admin)["replication_state"] == "sync" }, "the backup never reached sync")
            let p = try TestClient(port: primary.port)
            let b = try TestClient(port: backup.port)
            defer {
                p.close()
                b.close()
            }
            #expect(try await p.exchange("set k 0 0 2\r\nhi\r\n") == "STORED\r\n")
            #expect(try await b.exchange("get k\r\n") == "VALUE k 0 2\r\nhi\r\nEND\r\n")
            // Forwarded writes ride the authenticated link too.
            #expect(try await b.exchange("set fromB 0 0 1\r\nx\r\n") == "STORED\r\n")
            #expect(try await p.exchange("get fromB\r\n") == "VALUE fromB 0 1\r\nx\r\nEND\r\n")
            _ = try await admin.ping()
            try await admin.close()

            // The backup's wire port asks for the secret as well.
            let backupAdmin = try await TandemClient.connect(host: "127.0.0.1", port: backup.wirePort!, secret: secret)
            #expect(try await status(backupAdmin)["link_state"] == "streaming")
            try await backupAdmin.close()

            await #expect {
                _ = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!)
            } throws: { error in
                if case TandemClientError.authenticationRequired = error { return true }
                return false
            }
            await #expect {
                _ = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!, secret: otherSecret)
            } throws: { error in
                guard case TandemClientError.authenticationFailed(let reason) = error else { return false }
                return reason.contains("refused the secret")
            }
        }
    }

    /// The other node's own connections (the comparison at start, the peer
    /// check, promote's hand-over) announce the peer role; their proof must
    /// be made for that role, or every one is refused as a wrong secret.
    @Test("a connection in the peer role authenticates with the secret")
    func peerRoleAuthenticates() async throws {
        try await withServer(configure: { $0.pair = configuration(role: .primary, secret: secret).pair }) { server, _ in
            let peer = try await TandemClient.connect(
                host: "127.0.0.1", port: server.wirePort!, name: "B", secret: secret, role: .peer, epoch: 0
            )
            _ = try await peer.ping()
            try await peer.close()
        }
    }

    @Test("a backup with a wrong secret does not replicate, and logs why")
    func wrongSecretDoesNotReplicate() async throws {
        let log = LogRecorder()
        try await withPair(backupSecret: otherSecret, backupLog: log) { primary, backup in
            #expect(await eventually { log.contains("the primary refused this node's proof: is the secret the same on both nodes?") })
            let p = try TestClient(port: primary.port)
            let b = try TestClient(port: backup.port)
            defer {
                p.close()
                b.close()
            }
            #expect(try await p.exchange("set k 0 0 2\r\nhi\r\n") == "STORED\r\n")
            #expect(try await b.exchange("get k\r\n") == "END\r\n")
            #expect(try await b.exchange("set k2 0 0 1\r\nx\r\n") == "SERVER_ERROR primary unavailable\r\n")
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!, secret: secret)
            let primaryStatus = try await status(admin)
            #expect(primaryStatus["replication_state"] == "async_no_backup")
            #expect(primaryStatus["peer_name"] != "B")
            try await admin.close()
        }
    }

    @Test("a backup without a secret meeting a primary with one says to give --secret-file")
    func backupWithoutSecret() async throws {
        let log = LogRecorder()
        try await withPair(backupSecret: nil, backupLog: log) { primary, _ in
            #expect(await eventually { log.contains("the primary requires authentication; start this node with --secret-file") })
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!, secret: secret)
            #expect(try await status(admin)["replication_state"] == "async_no_backup")
            try await admin.close()
        }
    }

    @Test("hello then ping without auth gets authenticationRequired (2), and the connection closes")
    func requestBeforeAuthentication() async throws {
        try await withServer(configure: { $0.pair = configuration(role: .primary, secret: secret).pair }) { server, _ in
            let raw = try TestClient(port: server.wirePort!)
            defer { raw.close() }
            var request = ByteBuffer()
            try request.writeWireMessage(.hello(Hello(
                minimumVersion: 1, maximumVersion: 1, role: .client, nodeName: "raw", nonce: WireSecret.randomNonce(count: 16)
            )), requestID: 1)
            try request.writeWireMessage(.ping(timestampMillis: 7), requestID: 2)
            try await raw.send(Array(request.readableBytesView))
            let frames = try decodeFrames(try await raw.readUntilClosed())
            #expect(frames.count == 2)
            guard frames.count == 2, case .helloOK(let ok) = try frames[0].message(), case .error(let error) = try frames[1].message() else {
                Issue.record("expected helloOK then error, got \(frames.map { $0.messageType.map { "\($0)" } ?? "?" })")
                return
            }
            #expect(ok.authentication == .hmacSHA256 && ok.nonce.count == 32)
            #expect(error.code == .authenticationRequired && error.code.rawValue == 2)
            #expect(frames[1].requestID == 2)
        }
    }

    @Test("a wrong or short proof gets authenticationFailed (3) or malformed (5), and the connection closes")
    func wrongProof() async throws {
        try await withServer(configure: { $0.pair = configuration(role: .primary, secret: secret).pair }) { server, _ in
            for (proof, code) in [([UInt8](repeating: 0, count: 32), WireErrorCode.authenticationFailed), ([1, 2, 3], .malformed)] {
                let raw = try TestClient(port: server.wirePort!)
                defer { raw.close() }
                var request = ByteBuffer()
                try request.writeWireMessage(.hello(Hello(
                    minimumVersion: 1, maximumVersion: 1, role: .client, nodeName: "raw", nonce: WireSecret.randomNonce(count: 16)
                )), requestID: 1)
                try request.writeWireMessage(.auth(proof: proof), requestID: 2)
                try await raw.send(Array(request.readableBytesView))
                let frames = try decodeFrames(try await raw.readUntilClosed())
                guard frames.count == 2, case .error(let error) = try frames[1].message() else {
                    Issue.record("expected helloOK then error, got \(frames.count) frames")
                    continue
                }
                #expect(error.code == code)
            }
        }
    }

    @Test("a node that cannot prove it knows the secret is refused by clients and backups")
    func impostorPrimary() async throws {
        let impostor = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(ByteToMessageHandler(WireFrameDecoder()), ImpostorHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(impostor.localAddress?.port)

        await #expect {
            _ = try await TandemClient.connect(host: "127.0.0.1", port: port, secret: secret)
        } throws: { error in
            guard case TandemClientError.authenticationFailed(let reason) = error else { return false }
            return reason.contains("proof is wrong")
        }

        let log = LogRecorder()
        let backup = try await TandemNode.start(configuration: configuration(role: .backup, peerPort: port, secret: secret), logger: log.logger)
        #expect(await eventually { log.contains("the primary's proof is wrong: is the secret the same on both nodes?") })
        await backup.shutdown()
        try await impostor.close()
    }

    @Test("a client with a secret refuses a node that asks for none")
    func nodeWithoutSecret() async throws {
        try await withServer(configure: { $0.pair = configuration(role: .primary, secret: nil).pair }) { server, _ in
            await #expect {
                _ = try await TandemClient.connect(host: "127.0.0.1", port: server.wirePort!, secret: secret)
            } throws: { error in
                guard case TandemClientError.authenticationFailed(let reason) = error else { return false }
                return reason.contains("does not require authentication")
            }
        }
    }

    func decodeFrames(_ bytes: [UInt8]) throws -> [WireFrame] {
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = WireFrameDecoder()
        var frames: [WireFrame] = []
        while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
        return frames
    }
}

/// Poses as a primary that asks for the secret but does not know it: it accepts any proof.
private final class ImpostorHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let reply: WireMessage
        switch try? frame.message() {
        case .hello:
            reply = .helloOK(HelloOK(
                version: 1, nodeName: "impostor", nodeRole: .primary, epoch: 0,
                authentication: .hmacSHA256, nonce: WireSecret.randomNonce(count: 32)
            ))
        case .auth:
            reply = .authOK(proof: [UInt8](repeating: 0, count: 32))
        default:
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        guard (try? buffer.writeWireMessage(reply, flags: WireFrame.Flags.response, requestID: frame.requestID)) != nil else { return }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }
}

/// Keeps what a logger logged, so a test can check a node said why.
final class LogRecorder: Sendable {
    private let lines = Mutex<[String]>([])

    var logger: Logger {
        Logger(label: "recorded", factory: { _ in RecordingLogHandler(recorder: self) })
    }

    func append(_ line: String) {
        lines.withLock { $0.append(line) }
    }

    func contains(_ text: String) -> Bool {
        lines.withLock { $0.contains { $0.contains(text) } }
    }
}

private struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { _, new in new })
        recorder.append("\(event.message) \(all.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " "))")
    }
}
