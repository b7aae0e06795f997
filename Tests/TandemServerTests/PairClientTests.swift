import Foundation
import NIOCore
import NIOPosix
import Replication
import Synchronization
import SessionStore
@testable import TandemClient
import TandemServer
import Testing
import WireProtocol

/// A primary and its backup, in this process, replicating in sync.
struct RunningPair {
    let primary: TandemNode
    let backup: TandemNode

    var wireNodes: TandemPair { wireNodes(name: "pair-\(primary.wirePort!)") }

    func wireNodes(name: String) -> TandemPair {
        TandemPair(
            TandemNodeAddress(host: "127.0.0.1", port: primary.wirePort!), TandemNodeAddress(host: "127.0.0.1", port: backup.wirePort!), name: name
        )
    }

    static func configuration(role: NodeRole, name: String, peerPort: Int?, failoverAfter: TimeAmount) -> ServerConfiguration {
        var configuration = testConfiguration()
        var replication = ReplicationConfiguration(mode: .sync, nodeName: name)
        replication.failoverAfter = failoverAfter
        configuration.pair = PairConfiguration(
            wireHost: "127.0.0.1", wirePort: 0, role: role, peer: peerPort.map { ("127.0.0.1", $0) }, replication: replication
        )
        return configuration
    }

    /// Starts both nodes and waits until the primary replicates in sync.
    static func start(failoverAfter: TimeAmount) async throws -> RunningPair {
        let primary = try await TandemNode.start(
            configuration: configuration(role: .primary, name: "P", peerPort: nil, failoverAfter: failoverAfter), logger: quietLogger
        )
        let backup: TandemNode
        do {
            backup = try await TandemNode.start(
                configuration: configuration(role: .backup, name: "B", peerPort: primary.wirePort, failoverAfter: failoverAfter), logger: quietLogger
            )
        } catch {
            await primary.shutdown()
            throw error
        }
        let pair = RunningPair(primary: primary, backup: backup)
        do {
            let client = try await TandemClient.connect(host: "127.0.0.1", port: primary.wirePort!)
            let synced = try await eventually(timeout: .seconds(10)) {
                try await client.status().contains { $0.name == "replication_state" && $0.value == "sync" }
            }
            try await client.close()
            guard synced else { throw TestClientError.io("the backup never reached sync", errno: 0) }
        } catch {
            await pair.shutdown()
            throw error
        }
        return pair
    }

    func shutdown() async {
        await backup.shutdown()
        await primary.shutdown()
    }
}

/// Runs `body` with started pairs, shutting them all down however it ends.
/// Without automatic failover unless asked for: on two cores shared with
/// every other test, a backup starved of CPU could promote itself mid-test.
func withPairs(_ count: Int, failoverAfter: TimeAmount = .zero, _ body: ([RunningPair]) async throws -> Void) async throws {
    var pairs: [RunningPair] = []
    do {
        for _ in 0..<count { pairs.append(try await RunningPair.start(failoverAfter: failoverAfter)) }
        try await body(pairs)
    } catch {
        for pair in pairs { await pair.shutdown() }
        throw error
    }
    for pair in pairs { await pair.shutdown() }
}

/// What writers saw: writes acknowledged (key: value), writes refused as not run, and how each writer ended.
final class Seen: Sendable {
    struct Writes {
        var acknowledged: [String: [UInt8]] = [:]
        var refused = 0
        /// Writers ended by the connection closing.
        var endings = 0
        /// Writers ended by anything else.
        var unexpected: [String] = []
    }

    private let writes = Mutex(Writes())

    func withLock<T>(_ body: (inout Writes) -> T) -> T {
        writes.withLock { body(&$0) }
    }
}

/// A flag one task sets and another reads.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

@Suite("The pair-aware client", .serialized)
struct PairClientTests {
    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test("a write sent to the backup is forwarded, typed, and readable on both nodes once answered")
    func writeThroughBackup() async throws {
        try await withPairs(1) { pairs in
            let pair = pairs[0]
            let backup = try await TandemClient.connect(host: "127.0.0.1", port: pair.backup.wirePort!)
            let primary = try await TandemClient.connect(host: "127.0.0.1", port: pair.primary.wirePort!)
            #expect(backup.server.nodeRole == .backup)
            let stamp = try await backup.set("viaB", value: bytes("b"), flags: 3, expiry: .after(.seconds(600)))
            #expect(stamp > 0)
            // Answered only once the backup applied it: a read there sees it at once.
            let onBackup = try #require(try await backup.get("viaB"))
            let onPrimary = try #require(try await primary.get("viaB"))
            #expect(onBackup == onPrimary)
            #expect(onBackup.stamp == stamp && onBackup.flags == 3 && onBackup.expiresAt != nil)
            #expect(try await backup.add("viaB", value: bytes("x")) == false)
            #expect(try await backup.compareAndSet("viaB", value: bytes("x"), stamp: stamp - 1) == .exists)
            #expect(try await backup.compareAndSet("viaB", value: bytes("c"), stamp: stamp) != .exists)
            #expect(try await primary.get("viaB")?.value == bytes("c"))
            #expect(try await backup.replace("nothing", value: bytes("x")) == false)
            #expect(try await backup.touch("viaB", expiry: .never) == true)
            #expect(try await primary.get("viaB")?.expiresAt == nil)
            #expect(try await backup.delete("viaB") == true)
            #expect(try await backup.delete("viaB") == false)
            #expect(try await primary.get("viaB") == nil)
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: pair.primary.wirePort!)
            let forwarded = try await admin.stats().first { $0.name == "forwarded_writes" }?.value
            try await admin.close()
            #expect(forwarded == "8")
            try await backup.close()
            try await primary.close()
        }
    }

    @Test("the pair client follows a failover: writes and reads go on while the primary stops, none acknowledged is lost")
    func followsFailover() async throws {
        try await withPairs(1, failoverAfter: .milliseconds(300)) { pairs in
            let pair = pairs[0]
            var configuration = TandemPairClient.Configuration()
            configuration.failoverTimeout = .seconds(8)
            let client = TandemPairClient(pairs: [pair.wireNodes], configuration: configuration)
            var acknowledged: [String: [UInt8]] = [:]
            for index in 0..<50 {
                try await client.set("s\(index)", value: bytes("v\(index)"))
                acknowledged["s\(index)"] = bytes("v\(index)")
            }
            #expect(try await client.add("lock", value: []) == true)
            // Writers and readers keep going while the primary goes away,
            // and on until 50 writes went through once it had stopped.
            let stopped = Flag()
            let stop = Task {
                await pair.primary.shutdown()
                stopped.set()
            }
            var failures: [String] = []
            var index = 50
            var afterStop = 0
            var slowest = Duration.zero
            while afterStop < 50 && index < 5000 {
                let wasStopped = stopped.isSet
                let began = ContinuousClock.now
                do {
                    try await client.set("s\(index)", value: bytes("v\(index)"))
                    acknowledged["s\(index)"] = bytes("v\(index)")
                    let read = try await client.get("s\(index - 25)")
                    if read?.value != acknowledged["s\(index - 25)"] { failures.append("read s\(index - 25): \(String(describing: read))") }
                } catch {
                    failures.append("\(index): \(error)")
                }
                slowest = max(slowest, began.duration(to: .now))
                if wasStopped { afterStop += 1 }
                index += 1
            }
            #expect(afterStop == 50)
            // One write waited through the whole failover, no longer than the client allows.
            #expect(slowest < .seconds(8))
            await stop.value
            #expect(failures.isEmpty, "\(failures.prefix(5))")
            // The backup leads now, in a higher epoch, and has every acknowledged write.
            let promoted = try await TandemClient.connect(host: "127.0.0.1", port: pair.backup.wirePort!)
            #expect(promoted.server.nodeRole == .primary && promoted.server.epoch > 0)
            let held = try await promoted.get(Array(acknowledged.keys))
            #expect(held.count == acknowledged.count)
            #expect(acknowledged.allSatisfy { held[$0.key]?.value == $0.value })
            // A non-idempotent write after the failover still answers truthfully.
            #expect(try await client.add("lock", value: []) == false)
            #expect(try await client.delete("lock") == true)
            try await promoted.close()
            await client.close()
        }
    }

    @Test("a primary stopping under wire data writes refuses new ones as not run before its backup's last catch-up; every write it acknowledged is on the backup")
    func stopRefusesDataWrites() async throws {
        try await withPairs(1) { pairs in
            let pair = pairs[0]
            let seen = Seen()
            var connected: [TandemClient] = []
            for _ in 0..<4 {
                connected.append(try await TandemClient.connect(host: "127.0.0.1", port: pair.primary.wirePort!, requestTimeout: .seconds(30)))
            }
            let clients = connected
            let writers = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (lane, client) in clients.enumerated() {
                        for task in 0..<4 {
                            group.addTask {
                                var index = 0
                                while true {
                                    let key = "stop-\(lane)-\(task)-\(index)"
                                    let value = Array(key.utf8)
                                    index += 1
                                    do {
                                        try await client.set(key, value: value)
                                        seen.withLock { $0.acknowledged[key] = value }
                                    } catch TandemClientError.server(let error) where error.code == .unavailable {
                                        seen.withLock { $0.refused += 1 }
                                    } catch {
                                        // The connection closed as the node stopped: the writer is done.
                                        switch error {
                                        case TandemClientError.connectionClosed, TandemClientError.notSent:
                                            seen.withLock { $0.endings += 1 }
                                        default:
                                            seen.withLock { $0.unexpected.append("\(error)") }
                                        }
                                        return
                                    }
                                }
                            }
                        }
                    }
                }
            }
            #expect(try await eventually { seen.withLock { $0.acknowledged.count } >= 200 })
            await pair.primary.shutdown()
            await writers.value
            let result = seen.withLock { $0 }
            // The connections stayed open after the refusal began, and the writers kept writing.
            #expect(result.refused > 0, "no data write was refused while the primary stopped")
            // Each writer ended when the connection closed, with the request it sent then not answered or not sent.
            #expect(result.endings == 16 && result.unexpected.isEmpty, "\(result.unexpected.prefix(3))")
            let backup = try await TandemClient.connect(host: "127.0.0.1", port: pair.backup.wirePort!)
            let keys = Array(result.acknowledged.keys)
            var held: [String: TandemItem] = [:]
            for start in stride(from: 0, to: keys.count, by: 500) {
                held.merge(try await backup.get(Array(keys[start..<min(keys.count, start + 500)]))) { first, _ in first }
            }
            #expect(held.count == keys.count, "\(keys.count - held.count) acknowledged writes are missing on the backup")
            #expect(result.acknowledged.allSatisfy { held[$0.key]?.value == $0.value })
            try await backup.close()
            for client in clients { try? await client.close() }
        }
    }

    @Test("reads from either node are spread over both and see synchronously replicated writes")
    func readsFromEither() async throws {
        try await withPairs(1) { pairs in
            var configuration = TandemPairClient.Configuration()
            configuration.reads = .eitherNode
            let client = TandemPairClient(pairs: [pairs[0].wireNodes], configuration: configuration)
            for index in 0..<40 {
                try await client.set("e\(index)", value: bytes("\(index)"))
                // Sync replication: acknowledged means applied on the backup too.
                #expect(try await client.get("e\(index)")?.value == bytes("\(index)"))
            }
            let stats = { (server: TandemNode) async throws -> Int in
                let admin = try await TandemClient.connect(host: "127.0.0.1", port: server.wirePort!)
                let hits = try await admin.stats().first { $0.name == "get_hits" }?.value
                try await admin.close()
                return Int(hits ?? "0") ?? 0
            }
            #expect(try await stats(pairs[0].primary) >= 10)
            #expect(try await stats(pairs[0].backup) >= 10)
            await client.close()
        }
    }

    @Test("only what cannot do harm is sent again: any read, a write that did not run, set and touch whose outcome is unknown")
    func retryRules() {
        typealias Client = TandemPairClient
        #expect(Client.classify(TandemClientError.notSent(reason: "closed")) == .notRun)
        #expect(Client.classify(TandemClientError.unreachable(host: "h", port: 1, reason: "refused")) == .notRun)
        #expect(Client.classify(TandemClientError.server(WireError(.unavailable, "not run"))) == .notRun)
        #expect(Client.classify(TandemClientError.server(WireError(.outcomeUnknown, "no answer"))) == .outcomeUnknown)
        #expect(Client.classify(TandemClientError.connectionClosed) == .outcomeUnknown)
        #expect(Client.classify(TandemClientError.timedOut) == .outcomeUnknown)
        #expect(Client.classify(TandemClientError.server(WireError(.invalidKey, "bad"))) == .final)
        #expect(Client.classify(TandemClientError.server(WireError(.tooLarge, "big"))) == .final)
        #expect(Client.classify(TandemClientError.authenticationRequired) == .final)
        #expect(Client.mayRetry(.outcomeUnknown, .read) && Client.mayRetry(.outcomeUnknown, .repeatableWrite))
        #expect(!Client.mayRetry(.outcomeUnknown, .write) && Client.mayRetry(.notRun, .write))
        #expect(!Client.mayRetry(.final, .read))
    }

    @Test("a pair that cannot be reached fails within the failover timeout, saying why")
    func unreachable() async throws {
        let gone = try await TandemNode.start(configuration: RunningPair.configuration(role: .primary, name: "X", peerPort: nil, failoverAfter: .milliseconds(600)), logger: quietLogger)
        let port = gone.wirePort!
        await gone.shutdown()
        var configuration = TandemPairClient.Configuration()
        configuration.failoverTimeout = .milliseconds(500)
        let client = TandemPairClient(pairs: [TandemPair(TandemNodeAddress(host: "127.0.0.1", port: port))], configuration: configuration)
        let started = ContinuousClock.now
        await #expect {
            _ = try await client.add("k", value: [1])
        } throws: { error in
            guard case TandemClientError.unreachable = error else { return false }
            return true
        }
        #expect(started.duration(to: .now) < .seconds(3))
        await client.close()
    }

    @Test("a request waiting for a slot on a full connection gives up when its task is cancelled, and the slots stay counted")
    func aWaitForASlotEndsWithItsTask() async throws {
        let slots = InFlightSlots(1)
        try await slots.acquire()
        let waiter = Task { try await slots.acquire() }
        let another = Task { try await slots.acquire() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        // The slot goes to the waiter still there, not to the cancelled one.
        slots.release()
        try await another.value
        slots.release()
        // One slot, free again: taken at once.
        try await slots.acquire()
        slots.release()
        let cancelledFirst = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await slots.acquire()
        }
        await #expect(throws: CancellationError.self) { try await cancelledFirst.value }
    }

    /// Accepts connections, counts them, and closes each at once: a node that never answers a handshake.
    final class CountingListener: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let accepted = Atomic<Int>(0)
        func channelActive(context: ChannelHandlerContext) {
            accepted.add(1, ordering: .relaxed)
            context.close(promise: nil)
        }
    }

    @Test("requests that find no primary at once share one probe of the nodes: a failover under load is not a burst of handshakes")
    func concurrentRequestsShareAProbe() async throws {
        let counter = CountingListener()
        var channels: [any Channel] = []
        for _ in 0..<2 {
            channels.append(try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(counter) } }
                .bind(host: "127.0.0.1", port: 0).get())
        }
        var configuration = TandemPairClient.Configuration()
        configuration.failoverTimeout = .milliseconds(300)
        let pair = TandemPair(nodes: channels.map { TandemNodeAddress(host: "127.0.0.1", port: $0.localAddress!.port!) })
        let client = TandemPairClient(pairs: [pair], configuration: configuration)
        let callers = 40
        let failures = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<callers {
                group.addTask { (try? await client.add("k\(index)", value: [1])) == nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(failures == callers)
        // Each retry step asks both nodes once (plus the pool's own connection
        // attempts); a probe per caller would be 80 handshakes in the first step alone.
        let accepted = counter.accepted.load(ordering: .relaxed)
        #expect(accepted > 0 && accepted < callers, "\(accepted) connections")
        await client.close()
        for channel in channels { try await channel.close() }
    }

    @Test("adding a third pair to two moves at most a third of the keys, all of them to the new pair")
    func ringMovesFewKeys() {
        let two = PairRing(names: ["pair-a", "pair-b"])
        let three = PairRing(names: ["pair-a", "pair-b", "pair-c"])
        let keys = (0..<10_000).map { "session-\($0)-n1" }
        var moved = 0
        var movedElsewhere = 0
        var shares = [0, 0, 0]
        for key in keys {
            let before = two.pair(for: key.utf8)
            let after = three.pair(for: key.utf8)
            shares[after] += 1
            if before != after {
                moved += 1
                if after != 2 { movedElsewhere += 1 }
            }
        }
        let fraction = Double(moved) / Double(keys.count)
        #expect(fraction > 0.2 && fraction <= 1.0 / 3.0 + 0.05, "moved \(fraction)")
        #expect(movedElsewhere == 0)
        #expect(shares.allSatisfy { $0 > 2500 }, "\(shares)")
        // The order the pairs are listed in does not matter.
        let shuffled = PairRing(names: ["pair-c", "pair-a", "pair-b"])
        let names = ["pair-a", "pair-b", "pair-c"]
        let shuffledNames = ["pair-c", "pair-a", "pair-b"]
        #expect(keys.allSatisfy { names[three.pair(for: $0.utf8)] == shuffledNames[shuffled.pair(for: $0.utf8)] })
    }

    @Test("keys are spread over two real pairs as the ring says; with a third pair added the keys that stay are still found")
    func shardsOverPairs() async throws {
        try await withPairs(3) { pairs in
            // Fixed names: where a key lives depends on the names alone.
            let two = TandemPairClient(pairs: [pairs[0].wireNodes(name: "a"), pairs[1].wireNodes(name: "b")])
            let keys = (0..<300).map { "shard-\($0)" }
            for key in keys { try await two.set(key, value: Array(key.utf8)) }
            // Each key is on the pair the ring names, and only there.
            var perPair = [0, 0]
            for (index, pair) in pairs.prefix(2).enumerated() {
                let direct = try await TandemClient.connect(host: "127.0.0.1", port: pair.primary.wirePort!)
                let held = try await direct.get(keys)
                perPair[index] = held.count
                #expect(held.keys.allSatisfy { two.pairIndex(for: $0) == index })
                try await direct.close()
            }
            #expect(perPair[0] + perPair[1] == keys.count && perPair.allSatisfy { $0 > 50 }, "\(perPair)")
            #expect(try await two.get(keys).count == keys.count)

            // A pair added: keys that stay on their pair are found; those that move are misses there.
            let three = TandemPairClient(pairs: [pairs[0].wireNodes(name: "a"), pairs[1].wireNodes(name: "b"), pairs[2].wireNodes(name: "c")])
            let moved = keys.filter { three.pairIndex(for: $0) != two.pairIndex(for: $0) }
            #expect(moved.allSatisfy { three.pairIndex(for: $0) == 2 })
            // 300 keys: a third of them, give or take the sampling (the 10,000-key test above bounds it tightly).
            #expect(!moved.isEmpty && Double(moved.count) <= Double(keys.count) * (1.0 / 3.0 + 0.1), "\(moved.count) of \(keys.count) moved")
            let found = try await three.get(keys)
            #expect(found.count == keys.count - moved.count)
            #expect(moved.allSatisfy { found[$0] == nil })
            for key in moved { try await three.set(key, value: Array(key.utf8)) }
            #expect(try await three.get(keys).count == keys.count)
            await two.close()
            await three.close()
        }
    }
}
