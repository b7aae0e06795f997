import NIOCore
import Replication
import SessionStore
import Synchronization
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// `watch` over the wire protocol: a node with a pair section (so with a change feed)
/// in this process, driven by a `ManualClock`.
@Suite("watch: a live stream of changes", .serialized)
struct WatchTests {
    /// A primary without a peer: it has a wire port and a change feed.
    static func withPairSection(_ configuration: inout ServerConfiguration) {
        configuration.pair = PairConfiguration(
            wireHost: "127.0.0.1", wirePort: 0, role: .primary, peer: nil,
            replication: ReplicationConfiguration(mode: .sync, nodeName: "W")
        )
    }

    /// Events received so far by a watcher, in order.
    final class EventLog: Sendable {
        let events = Mutex<[WatchEvent]>([])
        var snapshot: [WatchEvent] { events.withLock { $0 } }
    }

    static func watchers(_ client: TestClient) async throws -> String? {
        try await client.stats()["watchers"]
    }

    @Test("events come in order, only for the prefix (and flush_all); ping still works; another request ends the watch")
    func streamsChangesInOrder() async throws {
        try await withServer(configure: Self.withPairSection) { server, clock in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: try #require(server.wirePort))
            let log = EventLog()
            let collector = Task {
                for try await event in admin.watch(prefix: Array("sess:".utf8)) {
                    log.events.withLock { $0.append(event) }
                }
            }
            // The request is on its way; changes count from when the node subscribed it.
            #expect(try await eventually { try await Self.watchers(memcached) == "1" })

            let start = clock.nowMillis()
            try await memcached.expectReply("set sess:a 0 0 5\r\nhello\r\n", "STORED\r\n")
            try await memcached.expectReply("set other:x 0 0 1\r\nx\r\n", "STORED\r\n")
            try await memcached.expectReply("touch sess:a 100\r\n", "TOUCHED\r\n")
            try await memcached.expectReply("delete other:x\r\n", "DELETED\r\n")
            try await memcached.expectReply("delete sess:a\r\n", "DELETED\r\n")
            try await memcached.expectReply("set sess:b 0 2 1\r\nb\r\n", "STORED\r\n")
            #expect(await eventually { log.snapshot.count == 4 })
            // Past the deadline, the background sweep (every 250 ms) reclaims the item: a remove.
            clock.advance(seconds: 3)
            #expect(await eventually { log.snapshot.count == 5 })
            try await memcached.expectReply("flush_all\r\n", "OK\r\n")
            #expect(await eventually { log.snapshot.count == 6 })

            let events = log.snapshot
            let expected: [(WatchEvent.Kind, String, UInt32, Int64, Int64)] = [
                (.upsert, "sess:a", 5, 0, start),
                (.upsert, "sess:a", 5, start + 100_000, start),
                (.delete, "sess:a", 0, 0, start),
                (.upsert, "sess:b", 1, start + 2_000, start),
                (.remove, "sess:b", 0, start + 2_000, start + 3_000),
                (.flushAll, "", 0, 0, start + 3_000),
            ]
            #expect(events.count == expected.count, "\(events)")
            for (event, (kind, key, size, deadline, time)) in zip(events, expected) {
                #expect(event == WatchEvent(kind: kind, key: Array(key.utf8), size: size, deadlineMillis: deadline, timeMillis: time))
            }

            // A watching connection still answers pings …
            _ = try await admin.ping()
            // … and closes on anything else, which ends the stream and the subscription.
            await #expect(throws: TandemClientError.self) { _ = try await admin.status() }
            await #expect(throws: TandemClientError.self) { try await collector.value }
            #expect(try await eventually { try await Self.watchers(memcached) == "0" })
            try? await admin.close()
        }
    }

    @Test("breaking out of the stream closes the connection and unsubscribes")
    func endingTheStreamUnsubscribes() async throws {
        try await withServer(configure: Self.withPairSection) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: try #require(server.wirePort))
            let first = Task { () -> WatchEvent? in
                for try await event in admin.watch() { return event }
                return nil
            }
            #expect(try await eventually { try await Self.watchers(memcached) == "1" })
            try await memcached.expectReply("set k 0 0 1\r\nv\r\n", "STORED\r\n")
            let event = try await first.value
            #expect(event?.kind == .upsert && event?.key == Array("k".utf8))
            #expect(try await eventually { try await Self.watchers(memcached) == "0" })
        }
    }

    @Test("a watcher that never reads does not hold writes back; when it reads, a dropped event accounts for the gap")
    func slowWatcherDropsInsteadOfBlocking() async throws {
        try await withServer(configure: Self.withPairSection) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            // A raw wire connection with a tiny receive window that reads nothing while the writes run.
            let watcher = try TestClient(port: try #require(server.wirePort), receiveBufferSize: 4096)
            defer { watcher.close() }
            try await watcher.send(Self.frame(.hello(Hello(
                minimumVersion: 1, maximumVersion: 1, role: .client, nodeName: "slow", nonce: [UInt8](repeating: 7, count: 16)
            )), requestID: 1))
            guard case .helloOK = try await Self.readFrame(watcher).message() else {
                Issue.record("no helloOK")
                return
            }
            try await watcher.send(Self.frame(.watch(prefix: Array("w:".utf8)), requestID: 2))
            #expect(try await eventually { try await Self.watchers(memcached) == "1" })

            // Long keys fill the connection's buffers quickly: most events must be dropped.
            let total = 100_000
            let batch = 500
            let padding = filler(225)
            for first in stride(from: 0, to: total, by: batch) {
                var request = ""
                for index in first..<(first + batch) { request += "set w:\(padding)-\(index) 0 0 1\r\nv\r\n" }
                try await memcached.send(request)
                let replies = try await memcached.readBytes(count: batch * "STORED\r\n".utf8.count)
                #expect(replies == Array(String(repeating: "STORED\r\n", count: batch).utf8))
            }

            // Now read: every write is accounted for, as an event or in a dropped count, in order.
            let (upserts, dropped, inOrder) = try await offload { () throws -> (Int, Int, Bool) in
                var upserts = 0
                var dropped = 0
                var lastIndex = -1
                var inOrder = true
                while upserts + dropped < total {
                    let frame = try Self.readFrameBlocking(watcher)
                    guard frame.requestID == 2, frame.isResponse, case .watchEvent(let event) = try frame.message() else {
                        throw TestClientError.io("unexpected frame \(frame.type)", errno: 0)
                    }
                    switch event.kind {
                    case .upsert:
                        upserts += 1
                        let index = Int(String(decoding: event.key, as: UTF8.self).split(separator: "-").last ?? "") ?? -1
                        if index <= lastIndex { inOrder = false }
                        lastIndex = index
                    case .dropped:
                        dropped += Int(event.size)
                    case .remove, .delete, .flushAll:
                        throw TestClientError.io("unexpected \(event.kind)", errno: 0)
                    }
                }
                return (upserts, dropped, inOrder)
            }
            #expect(dropped > 0, "the watcher kept up with \(total) writes without reading")
            #expect(upserts + dropped == total)
            #expect(inOrder)
            // The watcher caught up: new events flow again.
            try await memcached.expectReply("set w:after 0 0 1\r\nv\r\n", "STORED\r\n")
            let after = try await Self.readFrame(watcher).message()
            #expect(after == .watchEvent(WatchEvent(kind: .upsert, key: Array("w:after".utf8), size: 1, deadlineMillis: 0, timeMillis: try #require(Self.time(of: after)))))
        }
    }

    static func time(of message: WireMessage) -> Int64? {
        if case .watchEvent(let event) = message { return event.timeMillis }
        return nil
    }

    static func frame(_ message: WireMessage, requestID: UInt32) throws -> [UInt8] {
        var buffer = ByteBuffer()
        _ = try buffer.writeWireMessage(message, requestID: requestID)
        return Array(buffer.readableBytesView)
    }

    static func readFrame(_ client: TestClient) async throws -> WireFrame {
        try await offload { try readFrameBlocking(client) }
    }

    static func readFrameBlocking(_ client: TestClient) throws -> WireFrame {
        let header = try client.readBytes(count: 12)
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        let body = try client.readBytes(count: length - 8)
        return WireFrame(
            type: UInt16(header[4]) << 8 | UInt16(header[5]), flags: UInt16(header[6]) << 8 | UInt16(header[7]),
            requestID: UInt32(header[8]) << 24 | UInt32(header[9]) << 16 | UInt32(header[10]) << 8 | UInt32(header[11]),
            body: ByteBuffer(bytes: body)
        )
    }
}
