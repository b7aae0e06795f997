import Logging
import SessionStore
import TandemServer
import Testing

/// A logger that drops everything, so test output stays readable.
let quietLogger = Logger(label: "tandem-server-tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// The configuration live tests start from: loopback, a free port, two event
/// loops, a store small enough to start instantly.
func testConfiguration() -> ServerConfiguration {
    ServerConfiguration(
        host: "127.0.0.1", port: 0, threads: 2, maxConnections: 256,
        store: StoreConfiguration(memoryLimit: 64 << 20, shardCount: 4),
        drainTimeoutSeconds: 5
    )
}

/// Starts a real server on 127.0.0.1 (port 0) driven by a `ManualClock`, runs
/// `body`, and shuts the server down whether `body` succeeded or not.
func withServer(
    clock: ManualClock = ManualClock(),
    configure: (inout ServerConfiguration) -> Void = { _ in },
    _ body: (TandemNode, ManualClock) async throws -> Void
) async throws {
    var configuration = testConfiguration()
    configure(&configuration)
    let server = try await TandemNode.start(configuration: configuration, clock: clock, logger: quietLogger)
    do {
        try await body(server, clock)
    } catch {
        await server.shutdown()
        throw error
    }
    await server.shutdown()
}

/// Starts a server and hands `body` one connected client.
func withClient(
    clock: ManualClock = ManualClock(),
    configure: (inout ServerConfiguration) -> Void = { _ in },
    _ body: (TestClient, TandemNode, ManualClock) async throws -> Void
) async throws {
    try await withServer(clock: clock, configure: configure) { server, clock in
        let client = try TestClient(port: server.port)
        defer { client.close() }
        try await body(client, server, clock)
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(
    timeout: Duration = .seconds(10), every interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: interval)
    }
}

/// `n` bytes of printable filler derived from `seed`, never containing `\r` or `\n`.
func filler(_ count: Int, seed: Int = 0) -> String {
    let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
    var result = ""
    result.reserveCapacity(count)
    for index in 0..<count {
        result.append(alphabet[(index &+ seed &* 7) % alphabet.count])
    }
    return result
}

extension TestClient {
    /// Sends `request` (then `mn`) and records an issue, showing both sides,
    /// unless the replies are exactly `expected`.
    func expectReply(_ request: String, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let actual = try await exchange(request)
        #expect(
            actual == expected,
            "request \(String(request.prefix(300)).debugDescription)\n  got      \(String(actual.prefix(600)).debugDescription)\n  expected \(String(expected.prefix(600)).debugDescription)",
            sourceLocation: sourceLocation
        )
    }
}
