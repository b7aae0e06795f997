import Foundation
import Hummingbird
import HummingbirdTandem
import TandemClient
import TandemNodeSupport
import Testing

@Suite("What the driver adds to the contract: kept expiry, keys, prefixes")
struct ExpiryAndKeyTests {
    @Test("set with expires nil keeps the item's expiry; on a new key it sets none")
    func setKeepsExpiry() async throws {
        try await withDriver { persist, _ in
            let key = uniqueKey()
            let written = Date()
            try await persist.set(key: key, value: "one", expires: .seconds(10))
            try await persist.set(key: key, value: "two", expires: nil)
            let (value, ttl) = try #require(try await persist.getWithTTL(key: key, as: String.self))
            #expect(value == "two")
            expectDeadline(ttl, expires: 10, from: written)

            // An item that never expired keeps never expiring.
            let forever = uniqueKey()
            try await persist.set(key: forever, value: "one", expires: nil)
            try await persist.set(key: forever, value: "two", expires: nil)
            let kept = try #require(try await persist.getWithTTL(key: forever, as: String.self))
            #expect(kept.object == "two" && kept.ttl == nil)

            // A new expiry replaces the old.
            let rewritten = Date()
            try await persist.set(key: key, value: "three", expires: .seconds(100))
            expectDeadline(try await persist.getWithTTL(key: key, as: String.self)?.ttl, expires: 100, from: rewritten)
        }
    }

    @Test("rewriting an item with expires nil as fast as possible never moves its expiry: it goes when first told")
    func noDriftUnderRewrites() async throws {
        try await withDriver { persist, _ in
            let key = uniqueKey()
            let start = Date()
            try await persist.set(key: key, value: 0, expires: .seconds(3))
            // Whole seconds, as memcached keeps them: gone within a second of
            // the time given (and half a second for a slow machine's round trips).
            let latest = start.addingTimeInterval(4.5)
            var writes = 0
            var goneAt: Date?
            // Bounded in count and in time.
            while writes < 20_000, Date() < start.addingTimeInterval(8) {
                guard let (_, ttl) = try await persist.getWithTTL(key: key, as: Int.self), let ttl else {
                    // Gone (or, in the instant it went, taken anew by a write without expiry).
                    goneAt = Date()
                    break
                }
                let deadline = Date().addingTimeInterval(Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18)
                #expect(deadline <= latest, "the expiry moved to \(deadline.timeIntervalSince(start)) s after the first write")
                if deadline > latest { break }
                writes += 1
                try await persist.set(key: key, value: writes, expires: nil)
            }
            let gone = try #require(goneAt, "the item was still there after \(writes) rewrites")
            #expect(gone.timeIntervalSince(start) >= 2.0 && gone <= latest)
            // Enough rewrites that each moving it would have shown (a loaded machine makes fewer).
            #expect(writes >= 3)
        }
    }

    @Test("concurrent writers with expires nil all succeed, and the item keeps its expiry")
    func concurrentKeepingWrites() async throws {
        try await withDriver { persist, _ in
            let key = uniqueKey()
            let written = Date()
            try await persist.set(key: key, value: "start", expires: .seconds(30))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<8 {
                    group.addTask {
                        for round in 0..<40 { try await persist.set(key: key, value: "w\(writer)-\(round)", expires: nil) }
                    }
                }
                try await group.waitForAll()
            }
            let (value, ttl) = try #require(try await persist.getWithTTL(key: key, as: String.self))
            #expect(value.hasSuffix("-39"))
            expectDeadline(ttl, expires: 30, from: written)
        }
    }

    @Test("an item written by another client, with an expiry and no record of it, keeps that expiry")
    func keepsForeignExpiry() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let client = TandemPairClient(pairs: [try pair(nodes)])
            let persist = TandemPersistDriver(client: client, keyPrefix: "app:")
            let written = Date()
            try await client.set("app:foreign", value: Array("\"theirs\"".utf8), expiry: .after(.seconds(20)))
            #expect(try await persist.get(key: "foreign", as: String.self) == "theirs")
            try await persist.set(key: "foreign", value: "ours", expires: nil)
            let (value, ttl) = try #require(try await persist.getWithTTL(key: "foreign", as: String.self))
            #expect(value == "ours")
            expectDeadline(ttl, expires: 20, from: written)
            // The driver did not open the client: shutting it down leaves the client open.
            try await persist.shutdown()
            #expect(try await client.get("app:foreign") != nil)
            await client.close()
        }
    }

    @Test("keys with spaces, control bytes and % are stored apart; a key too long is never found and cannot be stored")
    func keys() async throws {
        try await withDriver { persist, _ in
            let keys = ["a b", "a%20b", "a\tb", "a\u{7F}b", "a%b", "ключ", "a\r\nset x 0 0 1"]
            for (index, key) in keys.enumerated() { try await persist.set(key: key, value: index, expires: nil) }
            for (index, key) in keys.enumerated() { #expect(try await persist.get(key: key, as: Int.self) == index, "\(key.debugDescription)") }
            let long = String(repeating: "x", count: 300)
            #expect(try await persist.get(key: long, as: Int.self) == nil)
            await #expect(throws: (any Error).self) { try await persist.set(key: long, value: 1, expires: nil) }
            try await persist.remove(key: long)
        }
    }

    @Test("drivers with different prefixes do not see each other's keys")
    func prefixes() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let one = try TandemPersistDriver(pairs: [nodes.pairSpec], keyPrefix: "one:")
            let two = try TandemPersistDriver(pairs: [nodes.pairSpec], keyPrefix: "two:")
            try await one.set(key: "k", value: "1", expires: nil)
            #expect(try await two.get(key: "k", as: String.self) == nil)
            try await two.create(key: "k", value: "2", expires: nil)
            #expect(try await one.get(key: "k", as: String.self) == "1")
            #expect(try await two.get(key: "k", as: String.self) == "2")
            try await one.shutdown()
            try await two.shutdown()
        }
    }

    @Test("bad node addresses are refused up front")
    func badAddresses() throws {
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: []) }
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: ["localhost"]) }
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: ["127.0.0.1:0"]) }
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: ["127.0.0.1:11311"], secretFile: "/nonexistent/secret") }
        // Not a crash: a pair of three nodes, and the same pair twice.
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: ["10.0.0.1:11311,10.0.0.2:11311,10.0.0.3:11311"]) }
        #expect(throws: (any Error).self) { try TandemPersistDriver(pairs: ["10.0.0.1:11311,10.0.0.2:11311", "10.0.0.1:11311,10.0.0.3:11311"]) }
        #expect(throws: Never.self) { try TandemPersistDriver(pairs: ["127.0.0.1:11311, [::1]:11312; 10.0.0.3:11311"]) }
    }
}

/// Expects `ttl`, read now, to end within a second of `expires` seconds
/// after `written` (whole seconds, as memcached keeps them), however long
/// the steps in between took.
func expectDeadline(_ ttl: Duration?, expires: Double, from written: Date, sourceLocation: SourceLocation = #_sourceLocation) {
    guard let ttl else {
        Issue.record("no expiry", sourceLocation: sourceLocation)
        return
    }
    let deadline = Date().addingTimeInterval(Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18)
    let after = deadline.timeIntervalSince(written)
    // The write left after `written`, and a second either way; half a second for a slow machine's round trips.
    #expect(after >= expires - 1 && after <= expires + 1.5, "expires \(after) s after the write, not \(expires)", sourceLocation: sourceLocation)
}

/// The nodes as a client-side pair (the node address type left to inference).
func pair(_ nodes: TandemTestNodes) throws -> TandemPair {
    var pair = TandemPair(.init(host: "127.0.0.1", port: nodes.nodes[0].wirePort))
    pair.nodes = nodes.nodes.map { .init(host: "127.0.0.1", port: $0.wirePort) }
    return pair
}
