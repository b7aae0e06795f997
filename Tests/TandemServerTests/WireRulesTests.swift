import Foundation
import NIOCore
import Replication
import SessionStore
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// A raw wire connection: frames in and out exactly as a client written from
/// Protocol.md would send them, with nothing of `TandemClient` in between.
final class RawWire {
    let client: TestClient

    init(port: Int) throws {
        client = try TestClient(port: port)
    }

    deinit { client.close() }

    func send(_ message: WireMessage, requestID: UInt32 = 0, flags: UInt16 = 0) async throws {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(message, flags: flags, requestID: requestID)
        try await client.send(Array(buffer.readableBytesView))
    }

    func sendRaw(_ bytes: [UInt8]) async throws {
        try await client.send(bytes)
    }

    /// The next frame; the primary's heartbeat pings (request id 0) are skipped unless asked for.
    func read(skippingPings: Bool = true) async throws -> WireFrame {
        while true {
            let frame = try await WatchTests.readFrame(client)
            if skippingPings, frame.messageType == .ping, frame.requestID == 0, !frame.isResponse { continue }
            return frame
        }
    }

    /// Every frame until the node closes the connection.
    func readUntilClosed() async throws -> [WireFrame] {
        var buffer = ByteBuffer(bytes: try await client.readUntilClosed())
        var decoder = WireFrameDecoder()
        var frames: [WireFrame] = []
        while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
        return frames.filter { !($0.messageType == .ping && $0.requestID == 0 && !$0.isResponse) }
    }

    /// `hello` (16-byte nonce) and its `helloOK`.
    @discardableResult
    func hello(role: ConnectionRole = .client, name: String = "raw", epoch: UInt64 = 0, versions: ClosedRange<UInt16> = WireVersion.minimum...WireVersion.maximum) async throws -> HelloOK {
        try await send(.hello(Hello(
            minimumVersion: versions.lowerBound, maximumVersion: versions.upperBound, role: role, nodeName: name,
            nonce: WireSecret.randomNonce(count: WireSecret.clientNonceLength), epoch: epoch
        )), requestID: 1)
        let frame = try await read()
        guard case .helloOK(let ok) = try frame.message() else {
            throw TestClientError.io("expected helloOK, got \(frame.messageType.map { "\($0)" } ?? "?")", errno: 0)
        }
        return ok
    }

    /// Sends `message` and returns the frame that answers it.
    func request(_ message: WireMessage, requestID: UInt32) async throws -> WireFrame {
        try await send(message, requestID: requestID)
        return try await read()
    }

    /// The one `error` the node sent before closing, with the frame that carried it.
    func closingError() async throws -> (WireError, WireFrame)? {
        let frames = try await readUntilClosed()
        guard frames.count == 1, case .error(let error) = try frames[0].message() else { return nil }
        return (error, frames[0])
    }
}

/// The rules of Protocol.md that a client written from it alone relies on,
/// checked against a live node on 127.0.0.1 with raw frames: page sizes,
/// per-item imports, acknowledgements, messages out of place, request ids.
@Suite("Wire protocol rules on a live node", .serialized)
struct WireRulesTests {
    /// A node with a wire port and no peer: a standalone primary.
    static func standalone(maxItemSize: Int = 1 << 20, memory: Int = 64 << 20) -> (inout ServerConfiguration) -> Void {
        { configuration in
            configuration.store.maxItemSize = maxItemSize
            configuration.store.memoryLimit = memory
            configuration.pair = PairConfiguration(
                wireHost: "127.0.0.1", wirePort: 0, role: .primary, peer: nil,
                replication: ReplicationConfiguration(mode: .sync, nodeName: "solo")
            )
        }
    }

    static func status(_ port: Int) async throws -> [String: String] {
        let admin = try await TandemClient.connect(host: "127.0.0.1", port: port)
        defer { Task { try? await admin.close() } }
        return Dictionary(try await admin.status().map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    static func record(_ key: [UInt8], _ value: [UInt8], deadline: Int64 = 0) -> SessionRecord {
        SessionRecord(key: key, value: value, flags: 7, deadlineMillis: deadline, cas: 0, size: UInt32(value.count), lastAccessMillis: 0, writer: .thisNode)
    }

    // MARK: 1. Scan pages are bounded by bytes

    @Test("pages with values stay under the frame limit, however large the values (two 8 MiB values)")
    func pagesBoundedByBytes() async throws {
        try await withServer(configure: Self.standalone(maxItemSize: 8 << 20, memory: 128 << 20)) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            let big = filler(8 << 20)
            for index in 0..<2 {
                try await memcached.expectReply("set big\(index) 0 0 \(big.utf8.count)\r\n\(big)\r\n", "STORED\r\n")
            }
            let wire = try RawWire(port: try #require(server.wirePort))
            try await wire.hello()
            var request = ScanRequest(limit: 1000, options: .values)
            var keys: [String] = []
            var pages = 0
            while true {
                let frame = try await wire.request(.scan(request), requestID: UInt32(10 + pages))
                #expect(frame.length <= WireFrame.maximumFrameLength)
                guard case .scanPage(let page) = try frame.message() else {
                    Issue.record("page \(pages): \(try frame.message())")
                    return
                }
                pages += 1
                for record in page.records {
                    keys.append(String(decoding: record.key, as: UTF8.self))
                    #expect(record.value.count == big.utf8.count && record.size == UInt32(big.utf8.count))
                }
                if page.cursor.isEmpty { break }
                request.cursor = page.cursor
            }
            #expect(keys.sorted() == ["big0", "big1"])
            #expect(pages >= 2, "two 8 MiB values cannot share a 16 MiB frame")
        }
    }

    @Test("eighteen values of 1,000,000 bytes export through pages of at most 4 MiB of records")
    func eighteenMegabyteValues() async throws {
        try await withServer(configure: Self.standalone(maxItemSize: 1 << 20)) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            let value = filler(1_000_000)
            for index in 0..<18 {
                try await memcached.expectReply("set v\(index) 0 0 \(value.utf8.count)\r\n\(value)\r\n", "STORED\r\n")
            }
            let admin = try await TandemClient.connect(host: "127.0.0.1", port: try #require(server.wirePort))
            defer { Task { try? await admin.close() } }
            var request = ScanRequest(limit: 10_000, options: .values)
            var seen = 0
            while true {
                let page = try await admin.scan(request)
                let bytes = page.records.reduce(0) { $0 + WireEncodedSize.sessionRecord + $1.key.count + $1.value.count }
                // Each page stops once it reaches 4 MiB: at most one record past it.
                #expect(bytes < (4 << 20) + 1_000_300)
                seen += page.records.count
                if page.cursor.isEmpty { break }
                request.cursor = page.cursor
            }
            #expect(seen == 18)
        }
    }

    @Test("scan limit 0 counts as 1, above 10,000 as 10,000; a bad cursor or glob is malformed and the connection stays open; a bad body closes it")
    func scanLimitsAndMalformedRequests() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            for index in 0..<5 { try await memcached.expectReply("set k\(index) 0 0 1\r\nv\r\n", "STORED\r\n") }
            let wire = try RawWire(port: try #require(server.wirePort))
            try await wire.hello()
            guard case .scanPage(let one) = try await wire.request(.scan(ScanRequest(limit: 0)), requestID: 2).message() else {
                Issue.record("no page for limit 0")
                return
            }
            #expect(one.records.count == 1 && !one.cursor.isEmpty)
            guard case .scanPage(let all) = try await wire.request(.scan(ScanRequest(limit: .max)), requestID: 3).message() else {
                Issue.record("no page for limit 2^32-1")
                return
            }
            #expect(all.records.count == 5 && all.cursor.isEmpty)

            for (id, request) in [(UInt32(4), ScanRequest(cursor: [1, 2, 3])), (5, ScanRequest(match: "[abc"))] {
                let answer = try await wire.request(.scan(request), requestID: id)
                guard case .error(let error) = try answer.message() else {
                    Issue.record("expected error for \(request)")
                    continue
                }
                #expect(error.code == .malformed && answer.requestID == id && answer.isResponse)
            }
            // Still open.
            #expect(try await wire.request(.ping(timestampMillis: 9), requestID: 6).message() == .pong(timestampMillis: 9))

            // A body that does not parse closes the connection, answering the frame.
            var truncated = ByteBuffer()
            WireMessage.scan(ScanRequest()).encodeBody(into: &truncated)
            truncated.moveWriterIndex(to: truncated.writerIndex - 1)
            var frame = ByteBuffer()
            try frame.writeWireFrame(WireFrame(type: .scan, requestID: 7, body: truncated))
            try await wire.sendRaw(Array(frame.readableBytesView))
            let (error, carrier) = try #require(try await wire.closingError())
            #expect(error.code == .malformed && carrier.requestID == 7 && carrier.isResponse)
        }
    }

    // MARK: 2. importItems answers per item

    @Test("importItems answers per item, stores the good ones past bad ones, and rejects keys memcached cannot address")
    func importPerItem() async throws {
        try await withServer(configure: Self.standalone(maxItemSize: 1024)) { server, clock in
            let wire = try RawWire(port: try #require(server.wirePort))
            let ok = try await wire.hello()
            #expect(ok.version == WireVersion.maximum && ok.version == 5)
            let records = [
                Self.record(Array("good:1".utf8), Array("one".utf8)),
                Self.record(Array("has space".utf8), Array("x".utf8)),
                Self.record(Array("ctl\u{1}".utf8), Array("x".utf8)),
                Self.record(Array(repeating: UInt8(ascii: "k"), count: 251), Array("x".utf8)),
                Self.record([], Array("x".utf8)),
                Self.record(Array("big".utf8), Array(repeating: 0x61, count: 1025)),
                Self.record(Array("old".utf8), Array("x".utf8), deadline: clock.nowMillis() - 1),
                Self.record(Array("good:2".utf8), Array("two".utf8)),
            ]
            let answer = try await wire.request(.importItems(records), requestID: 3)
            #expect(answer.requestID == 3 && answer.isResponse)
            guard case .importReport(let outcomes) = try answer.message() else {
                Issue.record("expected importReport, got \(try answer.message())")
                return
            }
            #expect(outcomes.count == records.count)
            let codes = outcomes.map { outcome -> String in
                if case .rejected(let rejection) = outcome { return "\(rejection.reason)" }
                return "\(outcome.code)"
            }
            #expect(codes == ["stored", "invalidKey", "invalidKey", "invalidKey", "invalidKey", "tooLarge", "expired", "stored"])
            if case .rejected(let rejection) = outcomes[1] {
                #expect(rejection.message.contains("\"has space\"") && rejection.message.contains("without spaces or control bytes"))
            }
            if case .rejected(let rejection) = outcomes[5] {
                #expect(rejection.message.contains("1025 bytes") && rejection.message.contains("1024"))
            }

            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            try await memcached.expectReply("get good:1 good:2\r\n", "VALUE good:1 7 3\r\none\r\nVALUE good:2 7 3\r\ntwo\r\nEND\r\n")
            // The key with a space was not stored where no memcached client could reach it.
            let inspect = try await wire.request(.inspect(key: Array("has space".utf8)), requestID: 4)
            #expect(try inspect.message() == .error(WireError(.notFound, "no item with that key")))

            // Again: the stored ones are unchanged now, the rest as before.
            guard case .importReport(let again) = try await wire.request(.importItems(records), requestID: 5).message() else {
                Issue.record("no report for the second import")
                return
            }
            #expect(again.first == .unchanged && again.last == .unchanged)
        }
    }

    @Test("a version 1 connection gets importResult, or an error naming the rejects after the others are stored")
    func importOnVersionOne() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let wire = try RawWire(port: try #require(server.wirePort))
            let ok = try await wire.hello(versions: 1...1)
            #expect(ok.version == 1)
            let good = [Self.record(Array("a".utf8), Array("1".utf8)), Self.record(Array("b".utf8), Array("2".utf8))]
            #expect(try await wire.request(.importItems(good), requestID: 2).message() == .importResult(ImportSummary(stored: 2, unchanged: 0, expired: 0)))
            let mixed = [Self.record(Array("bad key".utf8), Array("x".utf8)), Self.record(Array("c".utf8), Array("3".utf8))]
            guard case .error(let error) = try await wire.request(.importItems(mixed), requestID: 3).message() else {
                Issue.record("expected an error for a rejected item on version 1")
                return
            }
            #expect(error.code == .tooLarge && error.message.hasPrefix("1 of 2 items rejected") && error.message.contains("stored 1"))
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            try await memcached.expectReply("get c\r\n", "VALUE c 7 1\r\n3\r\nEND\r\n")
            // The error did not close the connection.
            #expect(try await wire.request(.ping(timestampMillis: 1), requestID: 4).message() == .pong(timestampMillis: 1))
        }
    }

    @Test("a hello asking only for versions this node does not speak gets unsupportedVersion (1)")
    func unsupportedVersions() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let wire = try RawWire(port: try #require(server.wirePort))
            try await wire.send(.hello(Hello(minimumVersion: WireVersion.maximum + 1, maximumVersion: 9, role: .client, nodeName: "future", nonce: WireSecret.randomNonce(count: 16))), requestID: 1)
            let (error, _) = try #require(try await wire.closingError())
            #expect(error.code == .unsupportedVersion && error.message.contains("1...\(WireVersion.maximum)"))
        }
    }

    // MARK: 3. Acknowledgements are checked

    /// A raw backup that full-resyncs from `port` and returns the snapshot's offset.
    static func rawBackup(port: Int) async throws -> (RawWire, UInt64) {
        let wire = try RawWire(port: port)
        try await wire.hello(role: .peer, name: "fake-backup")
        try await wire.send(.replicate(Replicate(replicationID: .none, offset: 0, epoch: 0)))
        guard case .fullResync(let resync) = try await wire.read().message() else {
            throw TestClientError.io("no fullResync", errno: 0)
        }
        while true {
            let message = try await wire.read().message()
            if case .snapshotEnd = message { break }
        }
        return (wire, resync.offset)
    }

    @Test("an ack beyond what was sent closes the link with protocolViolation, and nothing counts as replicated")
    func ackBeyondTheStream() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            for index in 0..<5 { try await memcached.expectReply("set k\(index) 0 0 1\r\nv\r\n", "STORED\r\n") }
            let wirePort = try #require(server.wirePort)
            let (wire, offset) = try await Self.rawBackup(port: wirePort)
            #expect(offset == 5)
            try await wire.send(.ack(offset: .max))
            let (error, carrier) = try #require(try await wire.closingError())
            #expect(error.code == .protocolViolation && error.message.contains("beyond the last offset sent, \(offset)"))
            #expect(carrier.requestID == 0 && !carrier.isResponse, "an error about an ack answers no request")
            #expect(try await eventually { try await Self.status(wirePort)["replication_state"] == "async_no_backup" })
            let status = try await Self.status(wirePort)
            #expect(status["peer_offset"] != "\(UInt64.max)" && status["link_state"] == "down")
        }
    }

    @Test("valid acks keep the link; an ack that goes back closes it")
    func ackGoingBack() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            for index in 0..<3 { try await memcached.expectReply("set k\(index) 0 0 1\r\nv\r\n", "STORED\r\n") }
            let wirePort = try #require(server.wirePort)
            let (wire, offset) = try await Self.rawBackup(port: wirePort)
            try await wire.send(.ack(offset: offset))
            #expect(try await eventually { try await Self.status(wirePort)["replication_state"] == "sync" })
            #expect(try await wire.request(.ping(timestampMillis: 3), requestID: 9).message() == .pong(timestampMillis: 3))
            try await wire.send(.ack(offset: offset - 1))
            let (error, _) = try #require(try await wire.closingError())
            #expect(error.code == .protocolViolation && error.message.contains("goes back from \(offset)"))
        }
    }

    // MARK: 4. Messages in the wrong place

    @Test("replicate, reconcile or pairStatus on a client's connection says it needs the peer role")
    func replicateOnClientConnection() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            for message in [WireMessage.replicate(Replicate(replicationID: .none, offset: 0, epoch: 0)), .reconcile(Replicate(replicationID: .none, offset: 0, epoch: 0)), .pairStatus] {
                let wire = try RawWire(port: try #require(server.wirePort))
                try await wire.hello(role: .client)
                try await wire.send(message, requestID: 4)
                let (error, carrier) = try #require(try await wire.closingError())
                #expect(error.code == .protocolViolation)
                #expect(error.message.contains("\(message.type.name) is for the other node"), "\(error.message)")
                #expect(error.message.contains("role 2 (peer)") && error.message.contains("not 1 (client)"), "\(error.message)")
                #expect(carrier.requestID == 4 && carrier.isResponse)
            }
        }
    }

    @Test("a frame with the RESPONSE flag where a request is expected is a protocol violation")
    func responseWhereRequestExpected() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let port = try #require(server.wirePort)
            // As the first frame …
            let first = try RawWire(port: port)
            try await first.send(.hello(Hello(minimumVersion: 1, maximumVersion: 2, role: .client, nodeName: "r", nonce: WireSecret.randomNonce(count: 16))), requestID: 1, flags: WireFrame.Flags.response)
            let (error, carrier) = try #require(try await first.closingError())
            #expect(error.code == .protocolViolation && error.message.contains("RESPONSE"))
            #expect(carrier.requestID == 0 && !carrier.isResponse)
            // … and after the handshake.
            let later = try RawWire(port: port)
            try await later.hello()
            try await later.send(.statusRequest, requestID: 5, flags: WireFrame.Flags.response)
            let (laterError, _) = try #require(try await later.closingError())
            #expect(laterError.code == .protocolViolation)
        }
    }

    @Test("a refused hello, or a peer hello on a node without --peer, changes nothing")
    func helloChangesNothing() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let port = try #require(server.wirePort)
            let before = try await Self.status(port)
            #expect(before["role"] == "primary")
            // Refused: a nonce of the wrong length.
            let refused = try RawWire(port: port)
            try await refused.send(.hello(Hello(minimumVersion: 1, maximumVersion: 2, role: .peer, nodeName: "zz", nonce: [], epoch: 99)), requestID: 1)
            let (error, carrier) = try #require(try await refused.closingError())
            #expect(error.code == .malformed && error.message.contains("16"))
            #expect(carrier.requestID == 1 && carrier.isResponse)
            // Accepted, but this node has no peer to step down for.
            let accepted = try RawWire(port: port)
            let ok = try await accepted.hello(role: .peer, name: "zz", epoch: 99)
            #expect(ok.nodeRole == .primary)
            #expect(try await accepted.request(.ping(timestampMillis: 2), requestID: 2).message() == .pong(timestampMillis: 2))
            let after = try await Self.status(port)
            #expect(after["role"] == "primary" && after["epoch"] == before["epoch"])
        }
    }

    @Test("the 16-byte nonce is required without a secret too; a standalone node's helloOK says primary")
    func nonceRequiredWithoutSecret() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let port = try #require(server.wirePort)
            for nonce in [[], [UInt8](repeating: 1, count: 15), [UInt8](repeating: 1, count: 32)] {
                let wire = try RawWire(port: port)
                try await wire.send(.hello(Hello(minimumVersion: 1, maximumVersion: 2, role: .client, nodeName: "n", nonce: nonce)), requestID: 1)
                let (error, _) = try #require(try await wire.closingError())
                #expect(error.code == .malformed)
            }
            let wire = try RawWire(port: port)
            let ok = try await wire.hello()
            #expect(ok.nodeRole == .primary && ok.authentication == .none && ok.nonce.isEmpty && ok.nodeName == "solo")
        }
    }

    // MARK: Request ids and flags

    @Test("answers carry the request's id and RESPONSE, id 0 included; a bad frame length gets an unsolicited malformed")
    func requestIDsAndFlags() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let port = try #require(server.wirePort)
            let wire = try RawWire(port: port)
            try await wire.hello()
            let zero = try await wire.request(.statusRequest, requestID: 0)
            #expect(zero.requestID == 0 && zero.isResponse && zero.messageType == .properties)
            let notFound = try await wire.request(.inspect(key: Array("nope".utf8)), requestID: 77)
            #expect(notFound.requestID == 77 && notFound.isResponse && notFound.messageType == .error)

            let framing = try RawWire(port: port)
            try await framing.hello()
            try await framing.sendRaw([0xFF, 0xFF, 0xFF, 0xFF, 0, 0x10, 0, 0, 0, 0, 0, 9])
            let (error, carrier) = try #require(try await framing.closingError())
            #expect(error.code == .malformed && carrier.requestID == 0 && !carrier.isResponse)
        }
    }

    // MARK: Watch barrier

    @Test("a ping right after watch is answered once the subscription is in place")
    func watchPingBarrier() async throws {
        try await withServer(configure: Self.standalone()) { server, _ in
            let wire = try RawWire(port: try #require(server.wirePort))
            try await wire.hello()
            try await wire.send(.watch(prefix: Array("w:".utf8)), requestID: 2)
            let pong = try await wire.request(.ping(timestampMillis: 5), requestID: 3)
            #expect(pong.requestID == 3)
            #expect(try pong.message() == .pong(timestampMillis: 5))
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            try await memcached.expectReply("set w:x 0 0 1\r\nv\r\n", "STORED\r\n")
            let event = try await wire.read()
            #expect(event.requestID == 2 && event.isResponse)
            guard case .watchEvent(let watched) = try event.message() else {
                Issue.record("expected a watchEvent")
                return
            }
            #expect(watched.kind == .upsert && watched.key == Array("w:x".utf8))
        }
    }

    // MARK: status and stats

    /// Property names of section 1.4.3's table.
    static func documentedProperties() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Protocol.md"), encoding: .utf8)
        let start = try #require(text.range(of: "### 1.4.3 "))
        let rest = text[start.upperBound...]
        let section = rest[..<(rest.range(of: "\n### ")?.lowerBound ?? rest.endIndex)]
        var names = Set<String>()
        for line in section.split(separator: "\n") where line.hasPrefix("| `") {
            let cell = line.split(separator: "|")[0]
            for piece in cell.split(separator: "`").enumerated() where piece.offset % 2 == 1 {
                names.insert(String(piece.element))
            }
        }
        return names
    }

    @Test("every status property of a standalone node, a primary and its backup is in Protocol.md's table")
    func propertiesDocumented() async throws {
        let documented = try Self.documentedProperties()
        #expect(documented.contains("replication_state") && documented.contains("tls_handshake_errors"))
        try await withServer(configure: Self.standalone()) { server, _ in
            let names = Set(try await Self.status(try #require(server.wirePort)).keys)
            #expect(names.subtracting(documented).isEmpty, "undocumented: \(names.subtracting(documented).sorted())")
        }
        let pairs = PairTests()
        let primary = try await TandemNode.start(configuration: pairs.pairConfiguration(role: .primary), logger: quietLogger)
        let backup: TandemNode
        do {
            backup = try await TandemNode.start(configuration: pairs.pairConfiguration(role: .backup, peerPort: primary.wirePort), logger: quietLogger)
        } catch {
            await primary.shutdown()
            throw error
        }
        do {
            let primaryPort = try #require(primary.wirePort)
            let backupPort = try #require(backup.wirePort)
            #expect(try await eventually { try await Self.status(primaryPort)["replication_state"] == "sync" })
            for port in [primaryPort, backupPort] {
                let names = Set(try await Self.status(port).keys)
                #expect(names.subtracting(documented).isEmpty, "undocumented: \(names.subtracting(documented).sorted())")
            }
        } catch {
            await backup.shutdown()
            await primary.shutdown()
            throw error
        }
        await backup.shutdown()
        await primary.shutdown()
    }
}
