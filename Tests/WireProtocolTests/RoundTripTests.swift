import NIOCore
import NIOEmbedded
import TandemTestSupport
import Testing
import WireProtocol

/// A named message for parameterised tests (the name keeps a 1 MiB value out of test output).
struct Sample: Sendable, CustomTestStringConvertible {
    var name: String
    var message: WireMessage
    var testDescription: String { name }

    init(_ name: String, _ message: WireMessage) {
        self.name = name
        self.message = message
    }
}

let mebibyte = 1024 * 1024
let id16 = ReplicationID(bytes: Array(0x10...0x1F))
let idFF = ReplicationID(bytes: [UInt8](repeating: 0xFF, count: 16))
let largeValue = ByteBuffer(bytes: (0..<mebibyte).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })

/// Representative and edge values of every message type.
let samples: [Sample] = {
    var samples: [Sample] = [
        Sample("hello", .hello(Hello(minimumVersion: 1, maximumVersion: 1, role: .peer, nodeName: "tandem-a", nonce: Array(1...16)))),
        Sample("hello empty name and nonce, client", .hello(Hello(minimumVersion: 0, maximumVersion: .max, role: .client, nodeName: "", nonce: []))),
        Sample("hello unicode name", .hello(Hello(minimumVersion: 1, maximumVersion: 3, role: .peer, nodeName: "nœud-名前-🚀\u{0}", nonce: [UInt8](repeating: 0xFF, count: 16)))),
        Sample("hello wrong magic kept", {
            var hello = Hello(minimumVersion: 1, maximumVersion: 1, role: .client, nodeName: "x", nonce: [])
            hello.magic = 0xDEAD_BEEF
            return .hello(hello)
        }()),
        Sample("helloOK hmac", .helloOK(HelloOK(version: 1, nodeName: "tandem-b", nodeRole: .primary, epoch: 42, authentication: .hmacSHA256, nonce: Array(100..<132)))),
        Sample("helloOK none", .helloOK(HelloOK(version: .max, nodeName: "", nodeRole: .backup, epoch: .max, authentication: .none, nonce: []))),
        Sample("auth", .auth(proof: Array(0..<32))),
        Sample("auth empty", .auth(proof: [])),
        Sample("authOK", .authOK(proof: [UInt8](repeating: 0xAB, count: 32))),
        Sample("authOK empty", .authOK(proof: [])),
        Sample("error empty message", .error(WireError(.unsupportedVersion, ""))),
        Sample("error unknown", .error(WireError(.unknown, "kept as 0xFFFF"))),
        Sample("error long", .error(WireError(.internalError, String(repeating: "ü", count: 5000)))),
        Sample("ping", .ping(timestampMillis: 1_795_323_600_000)),
        Sample("ping min", .ping(timestampMillis: .min)),
        Sample("ping max", .ping(timestampMillis: .max)),
        Sample("pong 0", .pong(timestampMillis: 0)),
        Sample("pong -1", .pong(timestampMillis: -1)),
        Sample("replicate none", .replicate(Replicate(replicationID: .none, offset: 0, epoch: 0))),
        Sample("replicate max", .replicate(Replicate(replicationID: idFF, offset: .max, epoch: .max))),
        Sample("replicate id", .replicate(Replicate(replicationID: id16, offset: 12345, epoch: 7))),
        Sample("fullResync", .fullResync(FullResync(replicationID: id16, offset: 99, estimatedItems: 1000, estimatedBytes: 2_000_000))),
        Sample("fullResync max", .fullResync(FullResync(replicationID: idFF, offset: .max, estimatedItems: .max, estimatedBytes: .max))),
        Sample("snapshotChunk empty", .snapshotChunk([])),
        Sample("snapshotChunk edges", .snapshotChunk([
            ReplicatedItem(key: ByteBuffer(), value: ByteBuffer(), flags: 0, deadlineMillis: 0, stamp: 0),
            ReplicatedItem(key: bb("session:abc"), value: bb("{\"user\":1}"), flags: .max, deadlineMillis: .max, stamp: .max),
            ReplicatedItem(key: bb([0, 0xFF, 0x0D, 0x0A]), value: bb("v"), flags: 1, deadlineMillis: .min, stamp: 1),
        ])),
        Sample("snapshotChunk 1 MiB value", .snapshotChunk([ReplicatedItem(key: bb("big"), value: largeValue, flags: 3, deadlineMillis: 1_795_323_600_000, stamp: 9)])),
        Sample("snapshotChunk many", .snapshotChunk((0..<2000).map { index in
            ReplicatedItem(key: bb("key-\(index)"), value: bb(String(repeating: "v", count: index % 50)), flags: UInt32(index), deadlineMillis: Int64(index) * 1000, stamp: UInt64(index) << 32)
        })),
        Sample("snapshotEnd 0", .snapshotEnd(items: 0)),
        Sample("snapshotEnd max", .snapshotEnd(items: .max)),
        Sample("partialResync", .partialResync(replicationID: id16, offset: 1)),
        Sample("partialResync max", .partialResync(replicationID: idFF, offset: .max)),
        Sample("changes empty", .changes([])),
        Sample("changes one of each", .changes([
            ReplicatedChange(offset: 1, kind: .upsert, key: bb("k"), value: bb("hi"), flags: 0, deadlineMillis: 0, stamp: 7),
            ReplicatedChange(offset: 2, kind: .remove, key: bb("k")),
            ReplicatedChange(offset: 3, kind: .flushAll, key: ByteBuffer(), stamp: 99),
            ReplicatedChange(offset: 4, kind: .delete, key: bb("gone"), stamp: .max),
            ReplicatedChange(offset: .max, kind: .upsert, key: ByteBuffer(), value: ByteBuffer(), flags: .max, deadlineMillis: .min, stamp: .max),
            ReplicatedChange(offset: 0, kind: .remove, key: ByteBuffer()),
        ])),
        Sample("changes 1 MiB value", .changes([ReplicatedChange(offset: 5, kind: .upsert, key: bb("big"), value: largeValue, flags: 1, deadlineMillis: 2, stamp: 3)])),
        Sample("changes many", .changes((0..<10_000).map { index in
            switch index % 3 {
            case 0: return ReplicatedChange(offset: UInt64(index), kind: .upsert, key: bb("k\(index)"), value: bb("value \(index)"), flags: UInt32(index), deadlineMillis: Int64(index), stamp: UInt64(index))
            case 1: return ReplicatedChange(offset: UInt64(index), kind: .remove, key: bb("k\(index)"))
            default: return ReplicatedChange(offset: UInt64(index), kind: .flushAll, key: ByteBuffer())
            }
        })),
        Sample("ack 0", .ack(offset: 0)),
        Sample("ack max", .ack(offset: .max)),
        Sample("forward", .forward(request: bb("set k 0 0 2\r\nhi\r\n"))),
        Sample("forward empty", .forward(request: ByteBuffer())),
        Sample("forward 1 MiB", .forward(request: largeValue)),
        Sample("forwardReply", .forwardReply(offset: 77, reply: bb("STORED\r\n"))),
        Sample("forwardReply empty max", .forwardReply(offset: .max, reply: ByteBuffer())),
        Sample("statusRequest", .statusRequest),
        Sample("statsRequest", .statsRequest),
        Sample("properties empty", .properties([])),
        Sample("properties", .properties([Property("role", "primary"), Property("", ""), Property("name", "名前 🚀"), Property("replication_id", id16.description)])),
        Sample("properties many", .properties((0..<1000).map { Property("stat_\($0)", "\($0 * 7)") })),
        Sample("hello with epoch", .hello(Hello(minimumVersion: 1, maximumVersion: 1, role: .peer, nodeName: "a", nonce: Array(1...16), epoch: 12))),
        Sample("helloOK joining", .helloOK(HelloOK(version: 1, nodeName: "j", nodeRole: .joining, epoch: 3, authentication: .none, nonce: []))),
        Sample("reconcile", .reconcile(Replicate(replicationID: id16, offset: 55, epoch: 2))),
        Sample("reconcileFrom", .reconcileFrom(watermark: 123_456_789)),
        Sample("reconcileFrom none needed", .reconcileFrom(watermark: .max)),
        Sample("reconcileChunk", .reconcileChunk([
            ReplicatedChange(offset: 0, kind: .upsert, key: bb("k"), value: bb("v"), flags: 1, deadlineMillis: 2, stamp: 3),
            ReplicatedChange(offset: 0, kind: .delete, key: bb("d"), stamp: 4),
        ])),
        Sample("reconcileEnd", .reconcileEnd(count: 2)),
        Sample("reconcileDone", .reconcileDone(ReconcileSummary(received: 10, applied: 4, conflicts: 1))),
        Sample("promote", .promote(reason: "maintenance of node a")),
        Sample("demote empty", .demote(reason: "")),
        Sample("roleChanged", .roleChanged(role: .primary, epoch: 8)),
        Sample("pairStatus", .pairStatus),
        Sample("pairStatusReply promoted", .pairStatusReply(PairStatus(
            nodeName: "tandem-b", role: .primary, configuredRole: .backup, epoch: 2, replicationID: id16, offset: 1200,
            previousReplicationID: idFF, forkOffset: 1000
        ))),
        Sample("pairStatusReply joining, no data", .pairStatusReply(PairStatus(
            nodeName: "", role: .joining, configuredRole: .primary, epoch: 0, replicationID: .none, offset: 0
        ))),
        Sample("pairStatusReply edges", .pairStatusReply(PairStatus(
            nodeName: "nœud-名前-🚀\u{0}", role: .backup, configuredRole: .joining, epoch: .max, replicationID: idFF, offset: .max,
            previousReplicationID: id16, forkOffset: .max
        ))),
        Sample("scan default", .scan(ScanRequest())),
        Sample("scan all filters", .scan(ScanRequest(cursor: [0, 0, 0, 3, 0, 0, 1, 0], limit: 50, prefix: Array("validity:".utf8), match: "*-n1", minimumSize: 100, expiringWithinMillis: 60_000, options: [.values, .countOnly]))),
        Sample("scanPage empty", .scanPage(ScanPage(cursor: [], scanned: 0, matched: 0, records: []))),
        Sample("scanPage", .scanPage(ScanPage(cursor: [1, 2], scanned: 4096, matched: 2, records: [
            SessionRecord(key: Array("a".utf8), value: [], flags: 1, deadlineMillis: 0, cas: 9, size: 2000, lastAccessMillis: 1_795_323_600_000, writer: .thisNode),
            SessionRecord(key: Array("validity:x".utf8), value: [0, 1, 2], flags: .max, deadlineMillis: .max, cas: .max, size: 3, lastAccessMillis: -1, writer: .peer),
        ]))),
        Sample("inspect", .inspect(key: Array("ABC-n1".utf8))),
        Sample("deleteKeys", .deleteKeys([Array("a".utf8), [], Array("lock:x".utf8)])),
        Sample("deleteResult", .deleteResult(deleted: 2, missing: 1)),
        Sample("importItems", .importItems([SessionRecord(key: Array("k".utf8), value: Array("v".utf8), flags: 3, deadlineMillis: 1_795_323_600_000, cas: 0, size: 1, lastAccessMillis: 0, writer: .thisNode)])),
        Sample("importResult", .importResult(ImportSummary(stored: 5, unchanged: 6, expired: 7))),
        Sample("importReport empty", .importReport([])),
        Sample("importReport", .importReport([
            .stored, .unchanged, .expired, .rejected(ImportRejection(.invalidKey, "key \"a b\" has a space")),
            .rejected(ImportRejection(.tooLarge, "")), .rejected(ImportRejection(.notStored, "out of memory")),
        ])),
        Sample("backup", .backup(path: "/var/backups/tandem-2026-11-22")),
        Sample("backupDone", .backupDone(BackupSummary(path: "/var/backups/x", bytes: 1 << 30, items: 1_000_000))),
        Sample("watch", .watch(prefix: [])),
        Sample("watchEvent", .watchEvent(WatchEvent(kind: .delete, key: Array("k".utf8), size: 0, deadlineMillis: 0, timeMillis: 1_795_323_600_000))),
        Sample("watchEvent dropped", .watchEvent(WatchEvent(kind: .dropped, key: [], size: 1234, deadlineMillis: 0, timeMillis: 1))),
        Sample("get one", .get(keys: [bb("session:abc")])),
        Sample("get none", .get(keys: [])),
        Sample("get many", .get(keys: (0..<1000).map { bb("k\($0)") })),
        Sample("get 250-byte key", .get(keys: [bb(String(repeating: "k", count: 250)), bb("")])),
        Sample("items empty", .items([])),
        Sample("items", .items([
            DataItem(key: bb("k"), value: bb("hi"), flags: 0, deadlineMillis: 0, stamp: 1),
            DataItem(key: bb("validity:x"), value: ByteBuffer(), flags: .max, deadlineMillis: 1_795_323_660_000, stamp: .max),
        ])),
        Sample("items 1 MiB value", .items([DataItem(key: bb("big"), value: largeValue, flags: 3, deadlineMillis: -1, stamp: 9)])),
        Sample("store set", .store(DataWrite(mode: .set, key: bb("k"), value: bb("v"), flags: 7, ttlMillis: 1_800_000))),
        Sample("store add expired", .store(DataWrite(mode: .add, key: bb("lock:x"), value: ByteBuffer(), ttlMillis: -1))),
        Sample("store replace edges", .store(DataWrite(mode: .replace, key: ByteBuffer(), value: bb([0, 0x0D, 0x0A]), flags: .max, ttlMillis: .max, stamp: 0))),
        Sample("store cas 1 MiB", .store(DataWrite(mode: .compareAndSet, key: bb("big"), value: largeValue, flags: 1, ttlMillis: .min, stamp: .max))),
        Sample("touch", .touch(key: bb("k"), ttlMillis: 60_000)),
        Sample("touch never", .touch(key: ByteBuffer(), ttlMillis: 0)),
        Sample("delete", .delete(key: bb("lock:abc"))),
        Sample("writeResult done", .writeResult(WriteResult(.done, stamp: 7_353_645_466_105_675_777))),
        Sample("writeResult notStored", .writeResult(WriteResult(.notStored))),
        Sample("writeResult exists", .writeResult(WriteResult(.exists))),
        Sample("writeResult notFound max", .writeResult(WriteResult(.notFound, stamp: .max))),
    ]
    for code: UInt16 in 1...13 {
        samples.append(Sample("error code \(code)", .error(WireError(WireErrorCode(rawValue: code)!, "code \(code)"))))
    }
    return samples
}()

@Suite("Round trips")
struct RoundTripTests {
    @Test("every message type has samples")
    func coverage() {
        let covered = Set(samples.map(\.message.type))
        #expect(covered == Set(WireMessageType.allCases))
        #expect(WireMessageType.allCases.count == 47)
    }

    @Test("encode, frame, decode gives the message back", arguments: samples)
    func roundTrip(sample: Sample) throws {
        let message = sample.message
        // Through a whole frame written straight into a buffer.
        var stream = ByteBuffer()
        let written = try stream.writeWireMessage(message, flags: WireFrame.Flags.response, requestID: 0xFEED_BEEF)
        #expect(written == WireFrame.headerSize + message.encodedBodySize)
        #expect(stream.readableBytes == written)
        var decoder = WireFrameDecoder()
        let frame = try #require(try decoder.decode(buffer: &stream))
        #expect(stream.readableBytes == 0)
        #expect(frame.type == message.type.rawValue)
        #expect(frame.messageType == message.type)
        #expect(frame.flags == WireFrame.Flags.response)
        #expect(frame.isResponse)
        #expect(frame.requestID == 0xFEED_BEEF)
        #expect(frame.body.readableBytes == message.encodedBodySize)
        let decoded = try frame.message()
        #expect(decoded == message)

        // Through `WireFrame(message)`, whose body is the same bytes.
        let built = WireFrame(message, requestID: 0xFEED_BEEF)
        #expect(built.body == frame.body)
        #expect(built.length == frame.length)
        #expect(try WireMessage(frame: built) == message)

        // The encoding is canonical: decoding and re-encoding gives the same bytes.
        #expect(encodedBody(decoded) == frame.body)
    }

    @Test("remove carries only offset, kind and key; flushAll adds its stamp")
    func removeDropsUpsertFields() throws {
        let sent = ReplicatedChange(offset: 9, kind: .remove, key: bb("gone"), value: bb("ignored"), flags: 5, deadlineMillis: 6, stamp: 7)
        let flush = ReplicatedChange(offset: 10, kind: .flushAll, key: ByteBuffer(), value: bb("ignored"), flags: 5, deadlineMillis: 6, stamp: 7)
        let body = encodedBody(.changes([sent, flush]))
        // A flush_all carries its stamp (cas) as well.
        #expect(body.readableBytes == 4 + (8 + 1 + 4 + 4) + (8 + 1 + 4 + 8))
        let decoded = try WireMessage(type: WireMessageType.changes.rawValue, body: body)
        #expect(decoded == .changes([ReplicatedChange(offset: 9, kind: .remove, key: bb("gone")), ReplicatedChange(offset: 10, kind: .flushAll, key: ByteBuffer(), stamp: 7)]))
    }

    @Test("keys, values and forwarded bytes are slices of the received body")
    func slices() throws {
        var stream = ByteBuffer()
        try stream.writeWireMessage(.changes([ReplicatedChange(offset: 1, kind: .upsert, key: bb("key"), value: largeValue)]))
        var decoder = WireFrameDecoder()
        let frame = try #require(try decoder.decode(buffer: &stream))
        guard case .changes(let changes) = try frame.message() else {
            Issue.record("not changes")
            return
        }
        let frameBase = frame.body.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let valueBase = changes[0].value.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        // The value starts 4 (count) + 8 + 1 + 4 + 3 (key) + 4 bytes into the body.
        #expect(valueBase == frameBase + 24)
    }

    @Test("several messages through encoder and decoder handlers")
    func throughChannel() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(WireFrameEncoder()))
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
        let sent = samples.prefix(12).enumerated().map { index, sample in WireFrame(sample.message, requestID: UInt32(index)) }
        for frame in sent {
            try channel.writeOutbound(frame)
        }
        var wire = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) {
            wire.writeBuffer(&chunk)
        }
        #expect(wire.readableBytes == sent.reduce(0) { $0 + 4 + $1.length })
        try channel.writeInbound(wire)
        var received: [WireFrame] = []
        while let frame = try channel.readInbound(as: WireFrame.self) {
            received.append(frame)
        }
        #expect(received == sent)
        #expect(try received.map { try $0.message() } == samples.prefix(12).map(\.message))
        #expect(try channel.finish().isClean)
    }

    @Test("random messages round-trip", arguments: [1, 2, 3, 4] as [UInt64])
    func randomRoundTrips(seed: UInt64) throws {
        var generator = MessageGenerator(rng: SplitMix64(seed: seed))
        for _ in 0..<1000 {
            let message = generator.message()
            let body = encodedBody(message)
            #expect(body.readableBytes == message.encodedBodySize)
            #expect(try WireMessage(type: message.type.rawValue, body: body) == message)
        }
    }

    @Test("message types have Protocol.md's numbers and names")
    func typeNumbers() {
        let expected: [(UInt16, String)] = [
            (0x0001, "hello"), (0x0002, "helloOK"), (0x0003, "auth"), (0x0004, "authOK"), (0x0005, "error"),
            (0x0010, "ping"), (0x0011, "pong"),
            (0x0020, "replicate"), (0x0021, "fullResync"), (0x0022, "snapshotChunk"), (0x0023, "snapshotEnd"),
            (0x0024, "partialResync"), (0x0025, "changes"), (0x0026, "ack"),
            (0x0027, "reconcile"), (0x0028, "reconcileFrom"), (0x0029, "reconcileChunk"), (0x002A, "reconcileEnd"),
            (0x002B, "reconcileDone"),
            (0x0030, "forward"), (0x0031, "forwardReply"),
            (0x0040, "statusRequest"), (0x0041, "statsRequest"), (0x0042, "properties"),
            (0x0050, "promote"), (0x0051, "demote"), (0x0052, "roleChanged"), (0x0053, "pairStatus"), (0x0054, "pairStatusReply"),
            (0x0060, "scan"), (0x0061, "scanPage"), (0x0062, "inspect"), (0x0063, "deleteKeys"), (0x0064, "deleteResult"),
            (0x0065, "importItems"), (0x0066, "importResult"), (0x0067, "importReport"), (0x0070, "backup"), (0x0071, "backupDone"),
            (0x0080, "watch"), (0x0081, "watchEvent"),
            (0x0090, "get"), (0x0091, "items"), (0x0092, "store"), (0x0093, "touch"), (0x0094, "delete"), (0x0095, "writeResult"),
        ]
        #expect(WireMessageType.allCases.map { ($0.rawValue) } == expected.map(\.0))
        #expect(WireMessageType.allCases.map(\.name) == expected.map(\.1))
        #expect(WireMessageType.ping.description == "ping (0x0010)")
    }

    @Test("data messages refuse undefined modes and outcomes, short bodies and lengths past the end")
    func malformedData() {
        expectMalformed(.store, body { $0.u8(0).bytes([0x6b]).bytes([]).u32(0).u64(0).u64(0) }, mentioning: "mode")
        expectMalformed(.store, body { $0.u8(5).bytes([0x6b]).bytes([]).u32(0).u64(0).u64(0) }, mentioning: "mode")
        expectMalformed(.store, body { $0.u8(1).bytes([0x6b]).bytes([]).u32(0).u64(0) }, mentioning: "stamp")
        expectMalformed(.store, body { $0.u8(1).bytes([0x6b]).u32(100).raw([1, 2]) }, mentioning: "value")
        expectMalformed(.writeResult, body { $0.u8(9).u64(0) }, mentioning: "outcome")
        expectMalformed(.writeResult, body { $0.u8(1).u64(0).u8(0) }, mentioning: "left over")
        expectMalformed(.get, body { $0.u32(3).bytes([0x6b]) }, mentioning: "count")
        expectMalformed(.get, body { $0.u32(1).u32(2).raw([0x6b]) }, mentioning: "key")
        expectMalformed(.items, body { $0.u32(1).bytes([0x6b]).bytes([0x76]).u32(0).u64(0) }, mentioning: "count")
        expectMalformed(.touch, body { $0.bytes([0x6b]).u32(0) }, mentioning: "ttl_ms")
        expectMalformed(.delete, body { $0.u32(1) }, mentioning: "key")
    }

    @Test("replication IDs parse only 32 hex digits")
    func replicationIDHex() {
        #expect(ReplicationID(hex: id16.description) == id16)
        #expect(id16.description == "101112131415161718191a1b1c1d1e1f")
        #expect(ReplicationID(hex: "101112131415161718191A1B1C1D1E1F") == id16)
        #expect(ReplicationID(hex: String(repeating: "0", count: 32)) == ReplicationID.none)
        #expect(ReplicationID(hex: String(repeating: "+1", count: 16)) == nil)
        #expect(ReplicationID(hex: String(repeating: "-0", count: 16)) == nil)
        #expect(ReplicationID(hex: String(repeating: "0", count: 31)) == nil)
        #expect(ReplicationID(hex: String(repeating: "0", count: 33)) == nil)
        #expect(ReplicationID(hex: String(repeating: "g", count: 32)) == nil)
        #expect(ReplicationID(hex: String(repeating: "é", count: 16)) == nil)
    }
}
