import Foundation
import NIOCore
import NIOPosix
import Synchronization
import TandemTLS
import Testing

/// Writes the fixtures into a fresh directory, as an operator's files.
struct FixtureFiles {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for (name, text) in [
            ("ca.pem", Fixtures.caPEM), ("node.pem", Fixtures.nodePEM), ("node.key", Fixtures.nodeKey),
            ("other.pem", Fixtures.otherPEM), ("other.key", Fixtures.otherKey), ("garbage.pem", "not a certificate\n"),
        ] {
            try Data((text + "\n").utf8).write(to: directory.appendingPathComponent(name))
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path(name))
        }
    }

    func path(_ name: String) -> String {
        directory.appendingPathComponent(name).path
    }

    func remove() {
        try? FileManager.default.removeItem(at: directory)
    }
}

@Suite("TLS files: loading and checking")
struct TLSSetupTests {
    @Test func aMatchingCertificateKeyAndCALoad() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let tls = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: files.path("ca.pem"), ports: .all)
        #expect(tls.isMutual)
        #expect(tls.warnings.isEmpty)
        #expect(tls.peerClient != nil)
        let memcachedOnly = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: nil, ports: .memcached)
        // A plaintext wire port: the node's connections to its peer are plaintext too.
        #expect(memcachedOnly.peerClient == nil)
        #expect(!memcachedOnly.isMutual)
    }

    @Test func aMissingFileIsNamed() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let missing = files.path("missing.pem")
        #expect(throws: TLSSetupError.unreadable(flag: "--tls-cert", path: missing, reason: "No such file or directory")) {
            try TLSIdentity.load(certificate: missing, key: files.path("node.key"))
        }
        let error = #expect(throws: TLSSetupError.self) {
            try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: missing, ports: .all)
        }
        #expect(error?.description == "--tls-ca \(missing): cannot read the file: No such file or directory")
        #expect(throws: TLSSetupError.unreadable(flag: "--tls-cert", path: files.directory.path, reason: "not a regular file")) {
            try TLSIdentity.load(certificate: files.directory.path, key: files.path("node.key"))
        }
    }

    @Test func filesThatAreNotPEMAreNamedWithAHint() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let garbage = #expect(throws: TLSSetupError.self) {
            try TLSIdentity.load(certificate: files.path("garbage.pem"), key: files.path("node.key"))
        }
        #expect(garbage?.description == "--tls-cert \(files.path("garbage.pem")): not a PEM certificate (-----BEGIN CERTIFICATE-----)")
        // The two files swapped: each message says what the file holds instead.
        let swappedCertificate = #expect(throws: TLSSetupError.self) {
            try TLSIdentity.load(certificate: files.path("node.key"), key: files.path("node.key"))
        }
        #expect(swappedCertificate?.description.contains("it holds a private key: is it the --tls-key file?") == true)
        let swappedKey = #expect(throws: TLSSetupError.self) {
            try TLSIdentity.load(certificate: files.path("node.pem"), key: files.path("node.pem"))
        }
        #expect(swappedKey?.description == "--tls-key \(files.path("node.pem")): not a PEM private key (-----BEGIN PRIVATE KEY-----) (it holds a certificate: is it the --tls-cert file?)")
        #expect(throws: TLSSetupError.self) {
            try TLSTrust.load(ca: files.path("garbage.pem"))
        }
    }

    @Test func aKeyOfAnotherCertificateIsRefused() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let error = #expect(throws: TLSSetupError.self) {
            try NodeTLS(certificate: files.path("node.pem"), key: files.path("other.key"), ca: nil, ports: .all)
        }
        #expect(error == .keyMismatch(certificate: files.path("node.pem"), key: files.path("other.key")))
        #expect(error?.description.contains("--tls-key \(files.path("other.key")) does not belong to the certificate in --tls-cert \(files.path("node.pem"))") == true)
    }

    @Test func aKeyEveryoneCanReadIsAWarning() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: files.path("node.key"))
        let identity = try TLSIdentity.load(certificate: files.path("node.pem"), key: files.path("node.key"))
        #expect(identity.warnings.count == 1)
        #expect(identity.warnings.first?.contains("readable by every user") == true)
    }

    @Test func reloadKeepsTheFilesInUseWhenTheNewOnesAreBad() throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let tls = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: files.path("ca.pem"), ports: .all)
        try Data("broken\n".utf8).write(to: files.directory.appendingPathComponent("node.pem"))
        #expect(throws: TLSSetupError.self) { try tls.reload() }
        #expect(tls.peerClient != nil)
        try Data((Fixtures.nodePEM + "\n").utf8).write(to: files.directory.appendingPathComponent("node.pem"))
        try tls.reload()
    }

    @Test func tlsPortsAreParsedAndShown() {
        #expect(TLSPorts(list: "wire,memcached") == .all)
        #expect(TLSPorts(list: "memcached, wire") == .all)
        #expect(TLSPorts(list: "wire") == .wire)
        #expect(TLSPorts(list: "memcached")?.description == "memcached")
        #expect(TLSPorts.all.description == "wire,memcached")
        #expect(TLSPorts().description == "none")
        #expect(TLSPorts(list: "") == nil)
        #expect(TLSPorts(list: "wire,http") == nil)
        #expect(TLSPorts(list: "wire,") == nil)
    }
}

/// Real handshakes over loopback between the contexts NodeTLS builds.
@Suite("TLS handshakes between nodes")
struct TLSHandshakeTests {
    /// Echoes one line back, to prove data crosses the TLS connection.
    final class Echo: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(data, promise: nil)
        }
    }

    /// Collects what the client receives and the error that ended it.
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: EventLoopPromise<String>

        init(received: EventLoopPromise<String>) {
            self.received = received
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received.succeed(String(buffer: unwrapInboundIn(data)))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            received.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            received.fail(ChannelError.eof)
        }
    }

    /// Runs a wire listener secured by `server`, connects with `client`, sends
    /// a line; returns the echo or the client's error, and the server's failures.
    func exchange(server: NodeTLS, client: ClientTLS?) async throws -> (Result<String, any Error>, [TLSHandshakeFailure]) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let failures = Mutex<[TLSHandshakeFailure]>([])
        let listener = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Echo())
                    try server.secureAccepted(channel, port: .wire) { failure, _ in failures.withLock { $0.append(failure) } }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let received = group.next().makePromise(of: String.self)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                    try client?.secure(channel, host: "127.0.0.1")
                }
            }
            .connect(host: "127.0.0.1", port: listener.localAddress!.port!).get()
        // Longer than a TLS record header, or a TLS server waits for more.
        // Awaited: the bytes are on the socket before the wait for an answer starts.
        // (A TLS client whose handshake fails fails the write: that is an answer too.)
        _ = try? await channel.writeAndFlush(ByteBuffer(string: "ping\r\n"))
        let result: Result<String, any Error>
        do {
            result = .success(try await received.futureResult.get())
        } catch {
            result = .failure(error)
        }
        try? await channel.close()
        // The server notices a failure after the client's alert: wait for it, briefly.
        if case .failure = result {
            for _ in 0..<200 where failures.withLock({ $0.isEmpty }) {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        try await listener.close()
        try await group.shutdownGracefully()
        return (result, failures.withLock { $0 })
    }

    @Test func nodesOfOneCATalk() async throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let server = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: files.path("ca.pem"), ports: .all)
        let (result, failures) = try await exchange(server: server, client: server.peerClient)
        #expect(try result.get() == "ping\r\n")
        #expect(failures.isEmpty)
        #expect(server.handshakeFailures(on: .wire) == 0)
    }

    @Test func aClientCertificateOfAnotherCAIsRefused() async throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let server = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: files.path("ca.pem"), ports: .all)
        // It trusts the server, but its own certificate is from elsewhere.
        let intruder = try ClientTLS.make(ca: try TLSTrust.load(ca: files.path("ca.pem")), identity: try TLSIdentity.load(certificate: files.path("other.pem"), key: files.path("other.key")))
        let (result, failures) = try await exchange(server: server, client: intruder)
        #expect(throws: (any Error).self) { try result.get() }
        #expect(failures.map(\.cause) == [.untrustedPeer])
        #expect(server.handshakeFailures(on: .wire) == 1)
    }

    @Test func aClientWithoutCertificateIsRefusedByMutualTLS() async throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let server = try NodeTLS(certificate: files.path("node.pem"), key: files.path("node.key"), ca: files.path("ca.pem"), ports: .all)
        let anonymous = try ClientTLS.load(ca: files.path("ca.pem"), certificate: nil, key: nil)
        let (result, failures) = try await exchange(server: server, client: anonymous)
        guard case .failure(let error) = result else {
            Issue.record("a client without a certificate got through")
            return
        }
        #expect(TLSHandshakeFailure(error)?.cause == .certificateRequired)
        #expect(failures.map(\.cause) == [.noClientCertificate])
    }

    @Test func aServerOfAnotherCAIsNotTrusted() async throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        let server = try NodeTLS(certificate: files.path("other.pem"), key: files.path("other.key"), ca: nil, ports: .all)
        let client = try ClientTLS.load(ca: files.path("ca.pem"), certificate: nil, key: nil)
        let (result, _) = try await exchange(server: server, client: client)
        guard case .failure(let error) = result else {
            Issue.record("a server of another CA was trusted")
            return
        }
        #expect(TLSHandshakeFailure(error)?.cause == .untrustedPeer)
    }

    @Test func aPlaintextClientIsCountedAndClosed() async throws {
        let files = try FixtureFiles()
        defer { files.remove() }
        // A handshake timeout no loaded machine reaches: on a starved event loop
        // (seen in CI) the 10 s default fired before the plaintext was read.
        let server = try NodeTLS(
            certificate: files.path("node.pem"), key: files.path("node.key"), ca: nil, ports: .all, handshakeTimeout: .seconds(300)
        )
        let (result, failures) = try await exchange(server: server, client: nil)
        // At most a TLS alert comes back, never the echo.
        #expect((try? result.get()) != "ping\r\n")
        #expect(failures.map(\.cause) == [.notTLS])
        #expect(server.handshakeFailures(on: .wire) == 1)
        #expect(server.handshakeFailures(on: .memcached) == 0)
    }
}
