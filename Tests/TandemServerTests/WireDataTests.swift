import Foundation
import NIOCore
import SessionPersistence
import SessionStore
@testable import TandemClient
import TandemServer
import Testing
import WireProtocol

/// The wire protocol's data messages (Protocol.md 1.4.5) against a real
/// node: every message means what its memcached command means.
@Suite("Data over the wire protocol", .serialized)
struct WireDataTests {
    /// A standalone node with a wire port, its clock, a memcached client and a wire client.
    func withNode(
        configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (TandemNode, ManualClock, TestClient, TandemClient) async throws -> Void
    ) async throws {
        try await withClient(configure: { configuration in
            configuration.pair = PairConfiguration(wireHost: "127.0.0.1", wirePort: 0, role: .primary)
            configure(&configuration)
        }) { memcached, server, clock in
            // A generous answer timeout: the suite shares two cores with every other test.
            let wire = try await TandemClient.connect(host: "127.0.0.1", port: server.wirePort!, maxInFlight: 256, requestTimeout: .seconds(30))
            do {
                try await body(server, clock, memcached, wire)
            } catch {
                try? await wire.close()
                throw error
            }
            try await wire.close()
        }
    }

    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test("set, add, replace, cas, touch and delete answer as their memcached commands, on the same items")
    func semantics() async throws {
        try await withNode { _, clock, memcached, wire in
            #expect(wire.servesData && wire.server.version == 5)
            // set: the stamp is the memcached CAS token; memcached sees the item.
            let stamp = try await wire.set("k", value: bytes("hi"), flags: 7)
            #expect(try await memcached.cas("k") == stamp)
            #expect(try await memcached.exchange("get k\r\n") == "VALUE k 7 2\r\nhi\r\nEND\r\n")
            let item = try #require(try await wire.get("k"))
            #expect(item == TandemItem(key: "k", value: bytes("hi"), flags: 7, expiresAt: nil, stamp: stamp))

            // add on a live key: not stored, the item untouched (msm's lock and ping).
            #expect(try await wire.add("k", value: bytes("other")) == false)
            #expect(try await wire.get("k")?.value == bytes("hi"))
            #expect(try await wire.get("k")?.stamp == stamp)
            #expect(try await wire.add("lock:1", value: []) == true)
            #expect(try await memcached.exchange("add lock:1 0 0 1\r\nx\r\n") == "NOT_STORED\r\n")

            // replace only what exists.
            #expect(try await wire.replace("missing", value: bytes("x")) == false)
            #expect(try await wire.get("missing") == nil)
            #expect(try await wire.replace("k", value: bytes("ho")) == true)

            // cas: a stale stamp is refused, a missing key is not found, the current one stores.
            #expect(try await wire.compareAndSet("k", value: bytes("x"), stamp: stamp) == .exists)
            #expect(try await wire.compareAndSet("nothing", value: bytes("x"), stamp: stamp) == .notFound)
            let current = try #require(try await wire.get("k")).stamp
            guard case .stored(let newStamp) = try await wire.compareAndSet("k", value: bytes("cas"), stamp: current) else {
                Issue.record("cas with the current stamp did not store")
                return
            }
            #expect(newStamp > current)
            #expect(try await memcached.exchange("gets k\r\n") == "VALUE k 0 3 \(newStamp)\r\ncas\r\nEND\r\n")

            // TTLs: relative to the node's clock, whole seconds, returned as the deadline.
            let now = clock.nowMillis()
            try await wire.set("ttl", value: bytes("t"), expiry: .after(.milliseconds(1500)))
            let expiring = try #require(try await wire.get("ttl"))
            #expect(expiring.expiresAt == Date(timeIntervalSince1970: Double(now + 2000) / 1000))
            #expect(try await memcached.exchange("mg ttl t\r\n") == "HD t2\r\n")
            #expect(try await wire.touch("ttl", expiry: .after(.seconds(100))) == true)
            #expect(try await wire.get("ttl")?.expiresAt == Date(timeIntervalSince1970: Double(now + 100_000) / 1000))
            #expect(try await wire.touch("absent", expiry: .never) == false)
            clock.advance(seconds: 101)
            #expect(try await wire.get("ttl") == nil)
            // A TTL in the past stores an item no one sees, as memcached's negative exptime.
            try await wire.set("gone", value: bytes("g"), expiry: .after(.seconds(-5)))
            #expect(try await wire.get("gone") == nil)
            #expect(try await memcached.exchange("get gone\r\n") == "END\r\n")
            // Beyond 30 days the TTL is absolute on the node's clock, not an exptime in 1970.
            try await wire.set("long", value: bytes("l"), expiry: .after(.seconds(40 * 86_400)))
            #expect(try await wire.get("long")?.expiresAt == Date(timeIntervalSince1970: Double(clock.nowMillis() / 1000 + 40 * 86_400)))

            // delete, then delete what is missing.
            #expect(try await wire.delete("k") == true)
            #expect(try await wire.delete("k") == false)
            #expect(try await memcached.exchange("get k\r\n") == "END\r\n")

            // A multi-get: hits only, whatever protocol wrote them.
            #expect(try await memcached.exchange("set m1 1 0 2\r\nm1\r\n") == "STORED\r\n")
            try await wire.set("m2", value: bytes("m2"), flags: 2)
            let found = try await wire.get(["m1", "nope", "m2"])
            #expect(found.keys.sorted() == ["m1", "m2"])
            #expect(found["m1"]?.flags == 1 && found["m2"]?.value == bytes("m2"))

            // The counters are memcached's.
            let stats = try await memcached.stats()
            #expect(stats["cas_badval"] == "1" && stats["cas_misses"] == "1" && stats["cas_hits"] == "1")
            #expect(stats["delete_hits"] == "1" && stats["delete_misses"] == "1")
            #expect(stats["touch_hits"] == "1" && stats["touch_misses"] == "1")
        }
    }

    @Test("2,000 requests in flight on one connection are each answered with their own item")
    func pipelining() async throws {
        try await withNode { _, _, _, wire in
            let count = 2000
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<count {
                    group.addTask { try await wire.set("p\(index)", value: Array("value-\(index)".utf8), flags: UInt32(index)) }
                }
                try await group.waitForAll()
            }
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<count {
                    group.addTask {
                        let item = try await wire.get("p\(index)")
                        return item?.value == Array("value-\(index)".utf8) && item?.flags == UInt32(index) ? 0 : 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(mismatches == 0)
            let all = try await wire.get((0..<count).map { "p\($0)" })
            #expect(all.count == count)
        }
    }

    @Test("frames sent back to back are answered in order, each with its request id")
    func rawPipeline() async throws {
        try await withNode { server, _, _, _ in
            let raw = try RawWire(port: server.wirePort!)
            try await raw.hello()
            var burst = ByteBuffer()
            for index in 0..<300 {
                try burst.writeWireMessage(.store(DataWrite(mode: .set, key: ByteBuffer(string: "r\(index)"), value: ByteBuffer(string: "\(index)"))), requestID: UInt32(1000 + index * 2))
                try burst.writeWireMessage(.get(keys: [ByteBuffer(string: "r\(index)")]), requestID: UInt32(1001 + index * 2))
            }
            try await raw.sendRaw(Array(burst.readableBytesView))
            for index in 0..<300 {
                let stored = try await raw.read()
                #expect(stored.requestID == UInt32(1000 + index * 2) && stored.isResponse)
                guard case .writeResult(let result) = try stored.message() else {
                    Issue.record("no writeResult for \(index)")
                    return
                }
                #expect(result.outcome == .done && result.stamp > 0)
                let read = try await raw.read()
                #expect(read.requestID == UInt32(1001 + index * 2))
                guard case .items(let items) = try read.message() else {
                    Issue.record("no items for \(index)")
                    return
                }
                #expect(items.map { String(buffer: $0.value) } == ["\(index)"])
            }
        }
    }

    @Test("a bad key, a value over -I and too many keys are refused with the connection open; the old value stays")
    func refusedRequests() async throws {
        try await withNode(configure: { $0.store.maxItemSize = 4096 }) { _, _, _, wire in
            try await wire.set("big", value: [1, 2, 3])
            func refusal(_ body: () async throws -> Void) async -> WireErrorCode? {
                do {
                    try await body()
                    return nil
                } catch TandemClientError.server(let error) {
                    return error.code
                } catch {
                    return .unknown
                }
            }
            #expect(await refusal { _ = try await wire.set(String(repeating: "k", count: 251), value: [1]) } == .invalidKey)
            #expect(await refusal { _ = try await wire.get("has space") } == .invalidKey)
            #expect(await refusal { _ = try await wire.get("") } == .invalidKey)
            #expect(await refusal { _ = try await wire.delete("ctl\u{7F}") } == .invalidKey)
            #expect(await refusal { _ = try await wire.set("big", value: [UInt8](repeating: 0, count: 4097)) } == .tooLarge)
            let tooMany = (0...DataLimits.maximumKeysPerGet).map { "k\($0)" }
            #expect(await refusal { _ = try await wire.data(.get(keys: tooMany.map { ByteBuffer(string: $0) })) } == .tooLarge)
            // The client splits what one request may not carry.
            try await wire.set(tooMany.last!, value: [5])
            #expect(try await wire.get(tooMany).mapValues(\.value) == [tooMany.last!: [5]])
            // The longest key memcached allows is fine, and the connection still works.
            try await wire.set(String(repeating: "k", count: 250), value: [9])
            #expect(try await wire.get(String(repeating: "k", count: 250))?.value == [9])
            #expect(try await wire.get("big")?.value == [1, 2, 3])
        }
    }

    @Test("a get naming one large value thousands of times is refused as too large without copying it thousands of times")
    func aGetOfOneLargeValueManyTimesStaysWithinAFrame() async throws {
        try await withNode(configure: { $0.store.maxItemSize = 1024 * 1024 }) { _, _, _, wire in
            let value = [UInt8](repeating: 7, count: 1024 * 1024 - 512)
            try await wire.set("huge", value: value)
            let peakBefore = Self.peakResidentBytes()
            do {
                _ = try await wire.get([String](repeating: "huge", count: DataLimits.maximumKeysPerGet))
                Issue.record("a get of 10 GB of items was answered")
            } catch TandemClientError.server(let error) {
                #expect(error.code == .tooLarge)
            }
            // Copying every one would take 10 GB; an answer's worth is 16 MiB.
            let grown = Self.peakResidentBytes() - peakBefore
            #expect(grown < 1 << 30, "the peak resident memory grew by \(grown) bytes")
            #expect(try await wire.get("huge")?.value == value)
        }
    }

    /// The process's peak resident memory (`VmHWM`), in bytes.
    static func peakResidentBytes() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kilobytes = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            return kilobytes * 1024
        }
        return 0
    }

    @Test("a malformed body closes that connection with malformed; a truncated frame closes quietly; the node serves on")
    func badFrames() async throws {
        try await withNode { server, _, _, wire in
            let raw = try RawWire(port: server.wirePort!)
            try await raw.hello()
            // A store whose value length runs past the body.
            var body = ByteBuffer()
            body.writeInteger(UInt8(1))
            body.writeInteger(UInt32(1))
            body.writeString("k")
            body.writeInteger(UInt32(1000))
            var frame = ByteBuffer()
            frame.writeInteger(UInt32(8 + body.readableBytes))
            frame.writeInteger(WireMessageType.store.rawValue)
            frame.writeInteger(UInt16(0))
            frame.writeInteger(UInt32(77))
            frame.writeBuffer(&body)
            try await raw.sendRaw(Array(frame.readableBytesView))
            let (error, answer) = try #require(try await raw.closingError())
            #expect(error.code == .malformed && answer.requestID == 77 && error.message.contains("value"))

            // Half a frame, then the client goes away.
            let truncated = try RawWire(port: server.wirePort!)
            try await truncated.hello()
            var whole = ByteBuffer()
            try whole.writeWireMessage(.store(DataWrite(mode: .set, key: ByteBuffer(string: "t"), value: ByteBuffer(string: "value"))), requestID: 5)
            try await truncated.sendRaw(Array(whole.readableBytesView.prefix(whole.readableBytes - 3)))
            truncated.client.close()

            // A version 4 connection does not have the data messages.
            let old = try RawWire(port: server.wirePort!)
            #expect(try await old.hello(versions: 1...4).version == 4)
            try await old.send(.get(keys: [ByteBuffer(string: "k")]), requestID: 3)
            let (refusal, _) = try #require(try await old.closingError())
            #expect(refusal.code == .unknownMessage)

            // The node and the other connection serve on; the half frame stored nothing.
            #expect(try await wire.get("t") == nil)
            try await wire.set("after", value: [1])
            let fresh = try await TandemClient.connect(host: "127.0.0.1", port: server.wirePort!)
            #expect(try await fresh.get("after")?.value == [1])
            try await fresh.close()
        }
    }

    @Test("a value on disk only is read for a wire get, one key or many, without holding up the connection's order")
    func coldValues() async throws {
        let directory = NSTemporaryDirectory() + "tandem-wire-cold-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await withNode(configure: { configuration in
            configuration.store.memoryLimit = 256 << 10
            configuration.persistence = PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: 10)
        }) { server, _, memcached, wire in
            let size = 2000
            let items = 300
            func value(_ index: Int) -> [UInt8] { Array(filler(size, seed: index).utf8) }
            for index in 0..<items {
                try await wire.set("c\(index)", value: value(index), flags: UInt32(index))
                if index % 20 == 19 {
                    #expect(try await eventually { try await memcached.stats()["persistence_pending"] == "0" })
                }
            }
            #expect(try await eventually { try await memcached.stats()["persistence_pending"] == "0" })
            let stats = try await memcached.stats()
            #expect(Int(stats["cold_items"] ?? "0")! > items / 2, "the data must be larger than RAM for this test")
            for index in stride(from: 0, to: items, by: 7) {
                let item = try #require(try await wire.get("c\(index)"))
                #expect(item.value == value(index) && item.flags == UInt32(index))
            }
            let all = try await wire.get((0..<items).map { "c\($0)" })
            #expect(all.count == items)
            #expect((0..<items).allSatisfy { all["c\($0)"]?.value == value($0) })
            // A write right behind a read (of a value that may be on disk) runs after it: the read sees the old value.
            let raw = try RawWire(port: server.wirePort!)
            try await raw.hello()
            var burst = ByteBuffer()
            try burst.writeWireMessage(.get(keys: [ByteBuffer(string: "c1")]), requestID: 1)
            try burst.writeWireMessage(.store(DataWrite(mode: .set, key: ByteBuffer(string: "c1"), value: ByteBuffer(bytes: [0]))), requestID: 2)
            try await raw.sendRaw(Array(burst.readableBytesView))
            let first = try await raw.read()
            #expect(first.requestID == 1)
            guard case .items(let read) = try first.message() else {
                Issue.record("no items")
                return
            }
            #expect(read.map { Array($0.value.readableBytesView) } == [value(1)])
            #expect(try await raw.read().requestID == 2)
            #expect(try await wire.get("c1")?.value == [0])
        }
    }
}
