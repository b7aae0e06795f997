import Foundation
import Hummingbird
import HummingbirdTandem
import HummingbirdTesting
import Synchronization
import TandemNodeSupport
import Testing

@testable import HummingbirdSessions

/// What the load's workers saw, shared between them.
final class LoadTally: Sendable {
    struct State {
        var succeeded = 0
        var succeededAfterKill = 0
        var failures: [String] = []
        /// Per session: the counts the app acknowledged.
        var acknowledged: [String: Int] = [:]
        var failedCounts: [String: Int] = [:]
    }

    let state = Mutex(State())
    let killed = Atomic<Bool>(false)
}

@Suite("Sessions through a failover of the Tandem pair", .serialized)
struct FailoverTests {
    @Test("kill -9 the primary under load: the sessions go on, and no more requests fail than were in flight")
    func killPrimaryUnderLoad() async throws {
        try await withTandem({ try await TandemTestNodes.pair(failoverAfterMillis: 300) }) { nodes in
            let settings = try ExampleSettings.from(environment: ["TANDEM_PAIRS": nodes.pairSpec], arguments: ["--port", "0"])
            try await buildApplication(settings: settings).test(.live) { client in
                let workers = 4
                var cookies: [String] = []
                for worker in 0..<workers {
                    let login = try await client.execute(uri: "/login?user=u\(worker)", method: .post)
                    cookies.append(try #require(sessionCookie(login)))
                }
                let tally = LoadTally()
                let primary = nodes.nodes[0]
                let began = ContinuousClock.now
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (worker, cookie) in cookies.enumerated() {
                        group.addTask {
                            // Bounded in requests and in time; ends once 25 rounds went through after the kill.
                            var round = 0
                            while round < 2_000, began.duration(to: .now) < .seconds(30) {
                                round += 1
                                let wasKilled = tally.killed.load(ordering: .acquiring)
                                let isCount = round % 2 == 0
                                let outcome: String?
                                do {
                                    let response = try await client.execute(
                                        uri: isCount ? "/count" : "/me", method: isCount ? .post : .get, headers: cookieHeader(cookie)
                                    )
                                    let text = String(buffer: response.body)
                                    if response.status != .ok {
                                        outcome = "\(response.status) \(text)"
                                    } else if isCount, let count = Int(text) {
                                        tally.state.withLock { $0.acknowledged[cookie] = count }
                                        outcome = nil
                                    } else if !isCount, text.hasPrefix("u\(worker) ") {
                                        outcome = nil
                                    } else {
                                        outcome = "unexpected \(text)"
                                    }
                                } catch {
                                    outcome = "\(error)"
                                }
                                let done = tally.state.withLock { state -> Bool in
                                    if let outcome {
                                        state.failures.append("worker \(worker) round \(round): \(outcome)")
                                        if isCount { state.failedCounts[cookie, default: 0] += 1 }
                                    } else {
                                        state.succeeded += 1
                                        if wasKilled { state.succeededAfterKill += 1 }
                                    }
                                    return state.succeededAfterKill >= 25 * workers
                                }
                                if done { return }
                            }
                        }
                    }
                    group.addTask {
                        // Kill once the load is under way (bounded wait).
                        while tally.state.withLock({ $0.succeeded }) < 40 * workers, began.duration(to: .now) < .seconds(20) {
                            await Task.yield()
                        }
                        await primary.kill9()
                        tally.killed.store(true, ordering: .releasing)
                    }
                    try await group.waitForAll()
                }
                let state = tally.state.withLock { $0 }
                let killed = tally.killed.load(ordering: .acquiring)
                #expect(killed)
                #expect(state.succeededAfterKill >= 25 * workers, "only \(state.succeededAfterKill) requests went through after the kill")
                // Each worker has one request in flight at a time: at most that one fails.
                #expect(state.failures.count <= workers, "\(state.failures)")
                // The backup leads now.
                try await nodes.waitUntil("B leads", on: nodes.nodes[1]) { $0["role"] == "primary" }
                // Every session is there, with every acknowledged count (and at
                // most the counts whose answer was lost on top).
                for cookie in cookies {
                    let me = try await client.execute(uri: "/me", method: .get, headers: cookieHeader(cookie))
                    #expect(me.status == .ok)
                    let count = Int(String(buffer: me.body).split(separator: " ").last ?? "") ?? -1
                    let acknowledged = state.acknowledged[cookie] ?? 0
                    #expect(count >= acknowledged && count <= acknowledged + (state.failedCounts[cookie] ?? 0), "count \(count), acknowledged \(acknowledged)")
                }
            }
        }
    }
}
