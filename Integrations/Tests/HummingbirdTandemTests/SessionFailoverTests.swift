import Foundation
import Hummingbird
import HummingbirdTesting
import Synchronization
import TandemNodeSupport
import Testing

/// Real processes only: two tandemd nodes and the Hummingbird example app
/// (`hummingbird-sessions`) as processes of their own, driven over HTTP by
/// logged-in users while the pair loses a node.
@Suite("Proof with real processes: the example app's sessions through the pair's failures", .serialized)
struct SessionFailoverTests {
    /// A logged-in user sending requests in turn on one keep-alive connection.
    struct User: Sendable {
        let name: String
        let cookie: String
    }

    /// What the users saw.
    final class Tally: Sendable {
        struct State {
            var succeeded = 0
            var succeededAfterEvent = 0
            var failures: [String] = []
            var acknowledged: [String: Int] = [:]
            var failedCounts: [String: Int] = [:]
            var slowest: Duration = .zero
        }

        let state = Mutex(State())
        let eventDone = Atomic<Bool>(false)
        let stop = Atomic<Bool>(false)
    }

    static let users = 4

    /// Starts the pair and the app, logs the users in, runs `event` once
    /// the load is under way, and the load until every user had
    /// `afterEvent` answered requests after it (bounded in requests and
    /// time); returns the tally and the users.
    func underLoad(
        nodes: TandemTestNodes, app: AppProcess, afterEvent: Int = 40, _ event: @escaping @Sendable () async throws -> Void
    ) async throws -> (Tally.State, [User]) {
        let users = try await TestClient.withClient(host: "127.0.0.1", port: app.port) { client in
            var users: [User] = []
            for index in 0..<Self.users {
                let login = try await client.post("/login?user=u\(index)", body: ByteBuffer())
                #expect(login.status == .ok)
                let header = login.headers[values: .setCookie].first { $0.hasPrefix("SESSION_ID=") } ?? ""
                users.append(User(name: "u\(index)", cookie: String(header.split(separator: ";")[0])))
            }
            return users
        }
        #expect(users.allSatisfy { $0.cookie.count > "SESSION_ID=".count })
        let tally = Tally()
        let began = ContinuousClock.now
        let load = { @Sendable (user: User) async in
            var client = TestClient(host: "127.0.0.1", port: app.port, configuration: .init(timeout: .seconds(15)))
            client.connect()
            var round = 0
            while round < 3_000, began.duration(to: .now) < .seconds(60), !tally.stop.load(ordering: .acquiring) {
                round += 1
                let sentAfterEvent = tally.eventDone.load(ordering: .acquiring)
                let isCount = round % 2 == 0
                let sent = ContinuousClock.now
                var failure: String?
                do {
                    let headers: HTTPFields = [.cookie: user.cookie]
                    let response = isCount
                        ? try await client.post("/count", headers: headers, body: ByteBuffer())
                        : try await client.get("/me", headers: headers)
                    let text = response.body.map { String(buffer: $0) } ?? ""
                    if response.status != .ok {
                        failure = "\(response.status) \(text)"
                    } else if isCount, let count = Int(text) {
                        tally.state.withLock { $0.acknowledged[user.cookie] = count }
                    } else if isCount || !text.hasPrefix("\(user.name) ") {
                        failure = "unexpected answer \(text)"
                    }
                } catch {
                    failure = "\(error)"
                    // The connection may be gone: open another.
                    try? await client.shutdown()
                    client = TestClient(host: "127.0.0.1", port: app.port, configuration: .init(timeout: .seconds(15)))
                    client.connect()
                }
                let took = sent.duration(to: .now)
                tally.state.withLock { state in
                    state.slowest = max(state.slowest, took)
                    if let failure {
                        state.failures.append("\(user.name) round \(round) (\(took)): \(failure)")
                        if isCount { state.failedCounts[user.cookie, default: 0] += 1 }
                    } else {
                        state.succeeded += 1
                        if sentAfterEvent { state.succeededAfterEvent += 1 }
                    }
                    if state.succeededAfterEvent >= afterEvent * Self.users { tally.stop.store(true, ordering: .releasing) }
                }
            }
            try? await client.shutdown()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for user in users { group.addTask { await load(user) } }
            group.addTask {
                // Bounded: the load is under way, or 20 s went by.
                func underWay() -> Bool {
                    tally.state.withLock { $0.succeeded } >= 40 * Self.users || began.duration(to: .now) >= .seconds(20)
                        || tally.stop.load(ordering: .acquiring)
                }
                while !underWay() { try await Task.sleep(for: .milliseconds(5)) }
                try await event()
                tally.eventDone.store(true, ordering: .releasing)
            }
            try await group.waitForAll()
        }
        let eventDone = tally.eventDone.load(ordering: .acquiring)
        #expect(eventDone)
        return (tally.state.withLock { $0 }, users)
    }

    /// Every user's session is there, with every acknowledged count and at
    /// most the counts whose answer was lost on top.
    func expectSessionsKept(_ state: Tally.State, _ users: [User], app: AppProcess) async throws {
        try await TestClient.withClient(host: "127.0.0.1", port: app.port) { client in
            for user in users {
                let me = try await client.get("/me", headers: [.cookie: user.cookie])
                let text = me.body.map { String(buffer: $0) } ?? ""
                #expect(me.status == .ok, "\(user.name): \(me.status) \(text)")
                let count = Int(text.split(separator: " ").last ?? "") ?? -1
                let acknowledged = state.acknowledged[user.cookie] ?? 0
                #expect(acknowledged > 0)
                #expect(
                    count >= acknowledged && count <= acknowledged + (state.failedCounts[user.cookie] ?? 0),
                    "\(user.name): count \(count), acknowledged \(acknowledged)"
                )
            }
        }
    }

    @Test("kill -9 the primary under load: sessions go on, and only requests in flight at the kill may fail")
    func killPrimary() async throws {
        try await withTandem({ try await TandemTestNodes.pair() }) { nodes in
            let app = try await AppProcess.start(
                "hummingbird-sessions", arguments: ["--port", "0"], environment: ["TANDEM_PAIRS": nodes.pairSpec],
                logFile: nodes.directory.appendingPathComponent("app.log")
            )
            do {
                let (state, users) = try await underLoad(nodes: nodes, app: app) {
                    await nodes.nodes[0].stop(signal: SIGKILL)
                }
                #expect(state.succeededAfterEvent >= 40 * Self.users, "only \(state.succeededAfterEvent) answered after the kill")
                // One request per user is in flight at any time: at most that one fails.
                #expect(state.failures.count <= Self.users, "\(state.failures)")
                // The backup took over within the client's failover time.
                #expect(state.slowest < .seconds(5), "the slowest request took \(state.slowest)")
                try await nodes.waitUntil("B leads", on: nodes.nodes[1]) { $0["role"] == "primary" }
                try await expectSessionsKept(state, users, app: app)
                print("kill -9: \(state.succeeded) requests answered, \(state.failures.count) failed, slowest \(state.slowest)")
            } catch {
                Issue.record("app log:\n\(app.log())")
                await app.stop()
                throw error
            }
            #expect(await app.stop() == 0)
        }
    }

    @Test("SIGTERM-restart both nodes one after the other under load: sessions go on, and only requests in flight may fail")
    func rollingRestart() async throws {
        try await withTandem({ try await TandemTestNodes.pair() }) { nodes in
            let app = try await AppProcess.start(
                "hummingbird-sessions", arguments: ["--port", "0"], environment: ["TANDEM_PAIRS": nodes.pairSpec],
                logFile: nodes.directory.appendingPathComponent("app.log")
            )
            do {
                let (state, users) = try await underLoad(nodes: nodes, app: app) {
                    // The backup first: it comes back, resumes, and is in sync again.
                    let b = try await nodes.restart(1, extra: ["--role", "backup", "--peer", nodes.nodes[0].wireAddress])
                    try await nodes.waitUntil("A replicates in sync to B again", on: nodes.nodes[0]) { $0["replication_state"] == "sync" }
                    // Then the primary: B takes over, and A comes back as its backup.
                    _ = try await nodes.restart(0, extra: ["--role", "backup", "--peer", b.wireAddress]) {
                        try await nodes.waitUntil("B leads", on: b) { $0["role"] == "primary" }
                    }
                    try await nodes.waitUntil("B replicates in sync to A", on: b) { $0["replication_state"] == "sync" }
                }
                #expect(state.succeededAfterEvent >= 40 * Self.users, "only \(state.succeededAfterEvent) answered after the restarts")
                // Two stops, each with at most one request per user in flight.
                #expect(state.failures.count <= 2 * Self.users, "\(state.failures)")
                try await expectSessionsKept(state, users, app: app)
                print("rolling restart: \(state.succeeded) requests answered, \(state.failures.count) failed, slowest \(state.slowest)")
            } catch {
                Issue.record("app log:\n\(app.log())")
                await app.stop()
                throw error
            }
            #expect(await app.stop() == 0)
        }
    }
}
