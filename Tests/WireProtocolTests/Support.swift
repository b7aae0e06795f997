import NIOCore
import TandemTestSupport
import Testing
import WireProtocol

// MARK: Random numbers (SplitMix64 and its draws: TandemTestSupport)

extension RandomNumberGenerator {
    /// Field values, the edges (0, 1, the largest) one time in five.
    mutating func u16() -> UInt16 { chance(20) ? pick([0, 1, .max]) : UInt16.random(in: 0 ... .max, using: &self) }
    mutating func u32() -> UInt32 { chance(20) ? pick([0, 1, .max]) : UInt32.random(in: 0 ... .max, using: &self) }
    mutating func u64() -> UInt64 { chance(20) ? pick([0, 1, .max]) : UInt64.random(in: 0 ... .max, using: &self) >> UInt64(int(0...63)) }
    mutating func i64() -> Int64 { chance(20) ? pick([0, -1, .min, .max]) : Int64.random(in: .min ... .max, using: &self) }
}

// MARK: Values

func bb(_ string: String) -> ByteBuffer { ByteBuffer(string: string) }
func bb(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// `"00 10 ab"`-style hex of a buffer's readable bytes.
func hex(_ buffer: ByteBuffer) -> String {
    buffer.readableBytesView.map { byte in
        let digits = String(byte, radix: 16)
        return byte < 16 ? "0" + digits : digits
    }.joined(separator: " ")
}

/// Bytes from hex digits; spaces are ignored.
func bytes(hex: String) -> [UInt8] {
    let digits = Array(hex.utf8.filter { $0 != UInt8(ascii: " ") })
    precondition(digits.count % 2 == 0)
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0...$0 + 1], as: UTF8.self), radix: 16)! }
}

/// Builds message bodies by hand, for inputs the encoder would never produce.
final class BodyBuilder {
    var buffer = ByteBuffer()

    @discardableResult func u8(_ value: UInt8) -> BodyBuilder { buffer.writeInteger(value); return self }
    @discardableResult func u16(_ value: UInt16) -> BodyBuilder { buffer.writeInteger(value); return self }
    @discardableResult func u32(_ value: UInt32) -> BodyBuilder { buffer.writeInteger(value); return self }
    @discardableResult func u64(_ value: UInt64) -> BodyBuilder { buffer.writeInteger(value); return self }
    @discardableResult func raw(_ bytes: [UInt8]) -> BodyBuilder { buffer.writeBytes(bytes); return self }
    @discardableResult func bytes(_ bytes: [UInt8]) -> BodyBuilder { u32(UInt32(bytes.count)); return raw(bytes) }
    @discardableResult func string(_ string: String) -> BodyBuilder { bytes(Array(string.utf8)) }
}

func body(_ build: (BodyBuilder) -> Void) -> ByteBuffer {
    let builder = BodyBuilder()
    build(builder)
    return builder.buffer
}

/// The bytes of a whole frame.
func frameBytes(type: UInt16, flags: UInt16 = 0, requestID: UInt32 = 0, body: ByteBuffer) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt32(8 + body.readableBytes))
    buffer.writeInteger(type)
    buffer.writeInteger(flags)
    buffer.writeInteger(requestID)
    buffer.writeImmutableBuffer(body)
    return buffer
}

/// A message's body as `encodeBody` writes it.
func encodedBody(_ message: WireMessage) -> ByteBuffer {
    var buffer = ByteBuffer()
    message.encodeBody(into: &buffer)
    return buffer
}

/// Expects `body` to be refused as malformed for `type`; returns the detail text.
@discardableResult
func expectMalformed(
    _ type: WireMessageType, _ body: ByteBuffer, mentioning: String? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
) -> String? {
    do {
        let message = try WireMessage(type: type.rawValue, body: body)
        Issue.record("\(type) body \(hex(body)) decoded as \(message)", sourceLocation: sourceLocation)
        return nil
    } catch {
        guard case .malformed(let detail) = error else {
            Issue.record("expected malformed, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
        if let mentioning {
            #expect(detail.contains(mentioning), "\(detail)", sourceLocation: sourceLocation)
        }
        return detail
    }
}

// MARK: Feeding the frame decoder

/// Feeds `chunks` to a `WireFrameDecoder` the way `ByteToMessageHandler` does (decode
/// until nil after every chunk, decodeLast at EOF) and returns the frames and the
/// error that stopped it, if any.
func decodeStream(_ chunks: [ByteBuffer]) -> (frames: [WireFrame], error: WireProtocolError?) {
    var decoder = WireFrameDecoder()
    var buffer = ByteBuffer()
    var frames: [WireFrame] = []
    do {
        for var chunk in chunks {
            buffer.writeBuffer(&chunk)
            while let frame = try decoder.decode(buffer: &buffer) {
                frames.append(frame)
            }
        }
        while let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
            frames.append(frame)
        }
        return (frames, nil)
    } catch {
        return (frames, error)
    }
}

/// `buffer` cut at random points into 1…`maximumPieces` pieces.
func randomSplits<R: RandomNumberGenerator>(_ buffer: ByteBuffer, maximumPieces: Int, using rng: inout R) -> [ByteBuffer] {
    let total = buffer.readableBytes
    guard total > 1 else { return [buffer] }
    let cuts = Set((0..<rng.int(0...maximumPieces - 1)).map { _ in rng.int(1...total - 1) }).sorted()
    var pieces: [ByteBuffer] = []
    var start = 0
    for cut in cuts + [total] {
        pieces.append(buffer.getSlice(at: buffer.readerIndex + start, length: cut - start)!)
        start = cut
    }
    return pieces
}

// MARK: Random valid messages

struct MessageGenerator<R: RandomNumberGenerator> {
    var rng: R
    /// Upper bound of random key, value and string sizes.
    var maximumSize = 24

    mutating func size() -> Int { rng.chance(10) ? 0 : rng.int(0...maximumSize) }
    mutating func buffer() -> ByteBuffer { bb(rng.bytes(size())) }

    mutating func string() -> String {
        let pieces = ["", "a", "node-1", "é", "名前", "🚀", " ", "\u{0}", "x\ny"]
        return (0..<rng.int(0...4)).map { _ in rng.pick(pieces) }.joined()
    }

    mutating func replicationID() -> ReplicationID {
        rng.chance(20) ? .none : ReplicationID(bytes: rng.bytes(16))
    }

    mutating func change() -> ReplicatedChange {
        switch rng.int(0...6) {
        case 0: return ReplicatedChange(offset: rng.u64(), kind: .remove, key: buffer())
        case 1: return ReplicatedChange(offset: rng.u64(), kind: .flushAll, key: ByteBuffer(), stamp: rng.u64())
        case 2: return ReplicatedChange(offset: rng.u64(), kind: .delete, key: buffer(), stamp: rng.u64())
        default:
            return ReplicatedChange(offset: rng.u64(), kind: .upsert, key: buffer(), value: buffer(), flags: rng.u32(), deadlineMillis: rng.i64(), stamp: rng.u64())
        }
    }

    mutating func item() -> ReplicatedItem {
        ReplicatedItem(key: buffer(), value: buffer(), flags: rng.u32(), deadlineMillis: rng.i64(), stamp: rng.u64())
    }

    mutating func message(of type: WireMessageType) -> WireMessage {
        switch type {
        case .hello:
            var hello = Hello(minimumVersion: rng.u16(), maximumVersion: rng.u16(), role: rng.pick([.client, .peer]), nodeName: string(), nonce: rng.bytes(rng.pick([0, 16, size()])), epoch: rng.u64())
            if rng.chance(10) { hello.magic = rng.u32() }
            return .hello(hello)
        case .helloOK:
            return .helloOK(HelloOK(version: rng.u16(), nodeName: string(), nodeRole: rng.pick([.primary, .backup, .joining]), epoch: rng.u64(), authentication: rng.pick([.none, .hmacSHA256]), nonce: rng.bytes(rng.pick([0, 32, size()]))))
        case .auth: return .auth(proof: rng.bytes(rng.pick([32, size()])))
        case .authOK: return .authOK(proof: rng.bytes(rng.pick([32, size()])))
        case .error:
            let codes: [WireErrorCode] = [.unsupportedVersion, .authenticationRequired, .authenticationFailed, .unknownMessage, .malformed, .notPrimary, .protocolViolation, .tooLarge, .internalError, .notFound, .unavailable, .invalidKey, .outcomeUnknown, .unknown]
            return .error(WireError(rng.pick(codes), string()))
        case .ping: return .ping(timestampMillis: rng.i64())
        case .pong: return .pong(timestampMillis: rng.i64())
        case .replicate: return .replicate(Replicate(replicationID: replicationID(), offset: rng.u64(), epoch: rng.u64()))
        case .fullResync: return .fullResync(FullResync(replicationID: replicationID(), offset: rng.u64(), estimatedItems: rng.u64(), estimatedBytes: rng.u64()))
        case .snapshotChunk: return .snapshotChunk((0..<rng.int(0...5)).map { _ in item() })
        case .snapshotEnd: return .snapshotEnd(items: rng.u64())
        case .partialResync: return .partialResync(replicationID: replicationID(), offset: rng.u64())
        case .changes: return .changes((0..<rng.int(0...6)).map { _ in change() })
        case .ack: return .ack(offset: rng.u64())
        case .forward: return .forward(request: buffer())
        case .forwardReply: return .forwardReply(offset: rng.u64(), reply: buffer())
        case .statusRequest: return .statusRequest
        case .statsRequest: return .statsRequest
        case .properties: return .properties((0..<rng.int(0...5)).map { _ in Property(string(), string()) })
        case .reconcile: return .reconcile(Replicate(replicationID: replicationID(), offset: rng.u64(), epoch: rng.u64()))
        case .reconcileFrom: return .reconcileFrom(watermark: rng.u64())
        case .reconcileChunk: return .reconcileChunk((0..<rng.int(0...6)).map { _ in var change = change(); change.offset = 0; return change })
        case .reconcileEnd: return .reconcileEnd(count: rng.u64())
        case .reconcileDone: return .reconcileDone(ReconcileSummary(received: rng.u64(), applied: rng.u64(), conflicts: rng.u64()))
        case .promote: return .promote(reason: string())
        case .demote: return .demote(reason: string())
        case .roleChanged: return .roleChanged(role: rng.pick([.primary, .backup, .joining]), epoch: rng.u64())
        case .pairStatus: return .pairStatus
        case .pairStatusReply:
            return .pairStatusReply(PairStatus(
                nodeName: string(), role: rng.pick([.primary, .backup, .joining]), configuredRole: rng.pick([.primary, .backup, .joining]),
                epoch: rng.u64(), replicationID: replicationID(), offset: rng.u64(), previousReplicationID: replicationID(), forkOffset: rng.u64()
            ))
        case .scan:
            return .scan(ScanRequest(cursor: rng.bytes(size()), limit: rng.u32(), prefix: rng.bytes(size()), match: string(), minimumSize: rng.u32(), expiringWithinMillis: rng.i64(), options: ScanRequest.Options(rawValue: UInt8(truncatingIfNeeded: rng.u32()))))
        case .scanPage:
            return .scanPage(ScanPage(cursor: rng.bytes(size()), scanned: rng.u32(), matched: rng.u32(), records: (0..<rng.int(0...4)).map { _ in record() }))
        case .inspect: return .inspect(key: rng.bytes(size()))
        case .deleteKeys: return .deleteKeys((0..<rng.int(0...5)).map { _ in rng.bytes(size()) })
        case .deleteResult: return .deleteResult(deleted: rng.u64(), missing: rng.u64())
        case .importItems: return .importItems((0..<rng.int(0...4)).map { _ in record() })
        case .importResult: return .importResult(ImportSummary(stored: rng.u64(), unchanged: rng.u64(), expired: rng.u64()))
        case .importReport: return .importReport((0..<rng.int(0...5)).map { _ in importOutcome() })
        case .backup: return .backup(path: string())
        case .backupDone: return .backupDone(BackupSummary(path: string(), bytes: rng.u64(), items: rng.u64()))
        case .watch: return .watch(prefix: rng.bytes(size()))
        case .get: return .get(keys: (0..<rng.int(0...5)).map { _ in buffer() })
        case .items:
            return .items((0..<rng.int(0...5)).map { _ in
                DataItem(key: buffer(), value: buffer(), flags: rng.u32(), deadlineMillis: rng.i64(), stamp: rng.u64())
            })
        case .store:
            return .store(DataWrite(
                mode: rng.pick([.set, .add, .replace, .compareAndSet]), key: buffer(), value: buffer(), flags: rng.u32(),
                ttlMillis: rng.i64(), stamp: rng.u64()
            ))
        case .touch: return .touch(key: buffer(), ttlMillis: rng.i64())
        case .delete: return .delete(key: buffer())
        case .writeResult: return .writeResult(WriteResult(rng.pick([.done, .notStored, .exists, .notFound]), stamp: rng.u64()))
        case .watchEvent:
            return .watchEvent(WatchEvent(kind: rng.pick([.upsert, .remove, .flushAll, .delete, .dropped]), key: rng.bytes(size()), size: rng.u32(), deadlineMillis: rng.i64(), timeMillis: rng.i64()))
        }
    }

    mutating func importOutcome() -> ImportOutcome {
        switch rng.int(0...3) {
        case 0: return .stored
        case 1: return .unchanged
        case 2: return .expired
        default: return .rejected(ImportRejection(rng.pick([.invalidKey, .tooLarge, .notStored]), string()))
        }
    }

    mutating func record() -> SessionRecord {
        SessionRecord(key: rng.bytes(size()), value: rng.bytes(size()), flags: rng.u32(), deadlineMillis: rng.i64(), cas: rng.u64(), size: rng.u32(), lastAccessMillis: rng.i64(), writer: rng.pick([.thisNode, .peer]))
    }

    mutating func message() -> WireMessage {
        message(of: rng.pick(WireMessageType.allCases))
    }
}
