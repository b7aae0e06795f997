import NIOCore
import NIOEmbedded
import NIOTestUtils
import TandemTestSupport
import Testing
import WireProtocol

@Suite("Frame codec")
struct FrameCodecTests {
    /// Frames of assorted shapes, with the bytes they arrive as.
    static func frames() -> [(ByteBuffer, [WireFrame])] {
        let ping = WireFrame(.ping(timestampMillis: 1_795_323_600_000), requestID: 7)
        let pong = WireFrame(.pong(timestampMillis: 1_795_323_600_000), flags: WireFrame.Flags.response, requestID: 7)
        let empty = WireFrame(type: WireMessageType.statusRequest, requestID: 1, body: ByteBuffer())
        let unknownType = WireFrame(type: 0xBEEF, flags: 0xFFFF, requestID: .max, body: bb("whatever"))
        let changes = WireFrame(.changes([
            ReplicatedChange(offset: 42, kind: .upsert, key: bb("k"), value: bb("hi"), stamp: 7),
            ReplicatedChange(offset: 43, kind: .remove, key: bb("k")),
        ]))
        let forward = WireFrame(.forward(request: bb("set session:1 0 60 5\r\nhello\r\n")), requestID: 9)
        let binary = WireFrame(type: WireMessageType.forwardReply, requestID: 3, body: bb((0...255).map { UInt8($0) }))

        func bytes(_ frames: [WireFrame]) -> ByteBuffer {
            var buffer = ByteBuffer()
            for frame in frames {
                try! buffer.writeWireFrame(frame)
            }
            return buffer
        }
        return [
            (bytes([ping]), [ping]),
            (bytes([pong, empty]), [pong, empty]),
            (bytes([unknownType]), [unknownType]),
            (bytes([changes, forward, binary]), [changes, forward, binary]),
            (bytes([empty, empty, empty]), [empty, empty, empty]),
        ]
    }

    @Test("ByteToMessageDecoderVerifier: whole, byte by byte, all at once")
    func verifier() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: Self.frames()) {
            WireFrameDecoder()
        }
    }

    @Test("random splits through ByteToMessageHandler give the same frames", arguments: [11, 12, 13] as [UInt64])
    func randomSplits(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let pairs = Self.frames()
        // A large frame too, so that splits land inside a big body.
        let large = WireFrame(.forward(request: largeValue), requestID: 77)
        var largeBytes = ByteBuffer()
        try largeBytes.writeWireFrame(large)

        for _ in 0..<50 {
            var stream = ByteBuffer()
            var expected: [WireFrame] = []
            for _ in 0..<rng.int(1...8) {
                if rng.chance(10) {
                    stream.writeImmutableBuffer(largeBytes)
                    expected.append(large)
                } else {
                    let (bytes, frames) = rng.pick(pairs)
                    stream.writeImmutableBuffer(bytes)
                    expected += frames
                }
            }
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(WireFrameDecoder()))
            for piece in SupportSplits.split(stream, using: &rng) {
                try channel.writeInbound(piece)
            }
            var received: [WireFrame] = []
            while let frame = try channel.readInbound(as: WireFrame.self) {
                received.append(frame)
            }
            #expect(received == expected)
            #expect(try channel.finish().isClean)

            // The same through the plain decoder loop.
            let direct = decodeStream(SupportSplits.split(stream, using: &rng))
            #expect(direct.error == nil)
            #expect(direct.frames == expected)
        }
    }

    @Test("a frame's body is a slice of the receive buffer")
    func bodyIsASlice() throws {
        var stream = ByteBuffer()
        try stream.writeWireFrame(WireFrame(type: 0x0030, body: bb("0123456789")))
        let base = stream.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        var decoder = WireFrameDecoder()
        let frame = try #require(try decoder.decode(buffer: &stream))
        let bodyBase = frame.body.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(bodyBase == base + 12)
    }

    @Test("nil until the whole frame is there")
    func waitsForWholeFrame() throws {
        var full = ByteBuffer()
        try full.writeWireMessage(.ping(timestampMillis: 5), requestID: 1)
        var decoder = WireFrameDecoder()
        for count in 0..<full.readableBytes {
            var partial = full.getSlice(at: 0, length: count)!
            #expect(try decoder.decode(buffer: &partial) == nil)
            #expect(partial.readableBytes == count, "a partial frame must not be consumed")
        }
        #expect(try decoder.decode(buffer: &full) != nil)
    }

    @Test("a frame of exactly the maximum length is accepted")
    func maximumLength() throws {
        let body = ByteBuffer(repeating: 0xA5, count: WireFrame.maximumBodySize)
        let frame = WireFrame(type: WireMessageType.forward, body: body)
        #expect(frame.length == WireFrame.maximumFrameLength)
        var stream = ByteBuffer()
        try stream.writeWireFrame(frame)
        // (Computed outside #expect: Swift Testing 6.3 mis-evaluates `x == 16 * 1024 * 1024` on an optional.)
        let sixteenMiB: UInt32 = 16 * 1024 * 1024
        #expect(stream.getInteger(at: 0, as: UInt32.self) == sixteenMiB)
        var decoder = WireFrameDecoder()
        var header = stream.getSlice(at: 0, length: 12)!
        #expect(try decoder.decode(buffer: &header) == nil)
        #expect(try decoder.decode(buffer: &stream) == frame)
    }

    @Test("the encoder refuses a body over the maximum and writes nothing")
    func encoderRefusesTooLarge() throws {
        let frame = WireFrame(type: WireMessageType.forward, body: ByteBuffer(repeating: 0, count: WireFrame.maximumBodySize + 1))
        var out = ByteBuffer(string: "before")
        #expect(throws: WireProtocolError.frameTooLarge(length: UInt32(WireFrame.maximumFrameLength + 1))) {
            try out.writeWireFrame(frame)
        }
        #expect(out == bb("before"))
        #expect(throws: WireProtocolError.frameTooLarge(length: UInt32(WireFrame.maximumFrameLength + 1))) {
            try WireFrameEncoder().encode(data: frame, out: &out)
        }
        let message = WireMessage.forward(request: ByteBuffer(repeating: 0, count: WireFrame.maximumBodySize - 3))
        #expect(throws: WireProtocolError.frameTooLarge(length: UInt32(WireFrame.maximumFrameLength + 1))) {
            try out.writeWireMessage(message)
        }
        #expect(out == bb("before"))
    }

    @Test("the response flag")
    func responseFlag() {
        var frame = WireFrame(type: WireMessageType.pong, flags: 0b1010, body: ByteBuffer())
        #expect(!frame.isResponse)
        frame.isResponse = true
        #expect(frame.flags == 0b1011)
        #expect(frame.isResponse)
        frame.isResponse = false
        #expect(frame.flags == 0b1010)
        #expect(WireFrame.Flags.response == 1)
        #expect(WireFrame.headerSize == 12)
        #expect(WireFrame.maximumFrameLength == 16_777_216)
        #expect(WireFrame(type: 0x7777, body: ByteBuffer()).messageType == nil)
    }
}

/// Hot-path writers produce exactly what `encodeBody` does.
@Suite("Hot-path writers")
struct HotPathTests {
    static let changes: [ReplicatedChange] = [
        ReplicatedChange(offset: 42, kind: .upsert, key: bb("k"), value: bb("hi"), flags: 0, deadlineMillis: 0, stamp: 7),
        ReplicatedChange(offset: 43, kind: .remove, key: bb("session:xyz")),
        ReplicatedChange(offset: 44, kind: .flushAll, key: ByteBuffer()),
        ReplicatedChange(offset: .max, kind: .upsert, key: ByteBuffer(), value: ByteBuffer(), flags: .max, deadlineMillis: .min, stamp: .max),
        ReplicatedChange(offset: 46, kind: .upsert, key: bb("big"), value: largeValue, flags: 12, deadlineMillis: 1_795_323_600_000, stamp: 99),
    ]

    static func write(_ change: ReplicatedChange, into buffer: inout ByteBuffer) -> Int {
        change.key.withUnsafeReadableBytes { key in
            change.value.withUnsafeReadableBytes { value in
                switch change.kind {
                case .upsert:
                    return buffer.writeChangeUpsert(offset: change.offset, key: key, value: value, flags: change.flags, deadlineMillis: change.deadlineMillis, cas: change.stamp)
                case .remove:
                    return buffer.writeChangeRemove(offset: change.offset, key: key)
                case .flushAll:
                    return buffer.writeChangeFlush(offset: change.offset, stamp: change.stamp)
                case .delete:
                    return buffer.writeChangeDelete(offset: change.offset, key: key, stamp: change.stamp)
                }
            }
        }
    }

    @Test("a changes frame written change by change equals the encoded message")
    func changesFrame() throws {
        var buffer = ByteBuffer(string: "previous frame bytes")
        let start = buffer.beginChangesFrame()
        var sizes = 0
        for change in Self.changes {
            sizes += Self.write(change, into: &buffer)
        }
        #expect(start.length(in: buffer) == 8 + 4 + sizes)
        try buffer.finishWireFrame(start, count: UInt32(Self.changes.count))

        var expected = ByteBuffer(string: "previous frame bytes")
        try expected.writeWireMessage(.changes(Self.changes))
        #expect(buffer == expected)

        buffer.moveReaderIndex(forwardBy: 20)
        var decoder = WireFrameDecoder()
        let frame = try #require(try decoder.decode(buffer: &buffer))
        #expect(try frame.message() == .changes(Self.changes))
        #expect(frame.requestID == 0)
    }

    @Test("a snapshotChunk frame written item by item equals the encoded message")
    func snapshotChunkFrame() throws {
        let items = [
            ReplicatedItem(key: bb("a"), value: bb("1"), flags: 1, deadlineMillis: 2, stamp: 3),
            ReplicatedItem(key: ByteBuffer(), value: ByteBuffer(), flags: 0, deadlineMillis: 0, stamp: 0),
            ReplicatedItem(key: bb("big"), value: largeValue, flags: .max, deadlineMillis: .max, stamp: .max),
        ]
        var buffer = ByteBuffer()
        let start = buffer.beginSnapshotChunkFrame(requestID: 5)
        for item in items {
            let written = item.key.withUnsafeReadableBytes { key in
                item.value.withUnsafeReadableBytes { value in
                    buffer.writeSnapshotItem(key: key, value: value, flags: item.flags, deadlineMillis: item.deadlineMillis, cas: item.stamp)
                }
            }
            #expect(written == WireEncodedSize.snapshotItem(keyCount: item.key.readableBytes, valueCount: item.value.readableBytes))
        }
        try buffer.finishWireFrame(start, count: UInt32(items.count))
        var expected = ByteBuffer()
        try expected.writeWireMessage(.snapshotChunk(items), requestID: 5)
        #expect(buffer == expected)
    }

    @Test("a body built with a count placeholder")
    func countPlaceholder() throws {
        var body = ByteBuffer()
        let countIndex = body.writeWireCountPlaceholder()
        for change in Self.changes.prefix(3) {
            _ = Self.write(change, into: &body)
        }
        body.setWireCount(3, at: countIndex)
        #expect(body == encodedBody(.changes(Array(Self.changes.prefix(3)))))
        #expect(try WireFrame(type: .changes, body: body).message() == .changes(Array(Self.changes.prefix(3))))
    }

    @Test("an empty changes frame")
    func emptyChangesFrame() throws {
        var buffer = ByteBuffer()
        let start = buffer.beginChangesFrame()
        try buffer.finishWireFrame(start, count: 0)
        #expect(hex(buffer) == "00 00 00 0c 00 25 00 00 00 00 00 00 00 00 00 00")
    }

    @Test("finishing an oversized frame throws and removes it")
    func oversizedFrameIsRemoved() throws {
        var buffer = ByteBuffer(string: "keep")
        let start = buffer.beginChangesFrame()
        let value = ByteBuffer(repeating: 1, count: 4 * 1024 * 1024)
        var count: UInt32 = 0
        value.withUnsafeReadableBytes { value in
            for offset in 0..<5 as Range<UInt64> {
                "k".utf8CString.withUnsafeBytes { key in
                    _ = buffer.writeChangeUpsert(offset: offset, key: UnsafeRawBufferPointer(rebasing: key.dropLast()), value: value, flags: 0, deadlineMillis: 0, cas: 0)
                }
                count += 1
            }
        }
        #expect(start.length(in: buffer) > WireFrame.maximumFrameLength)
        #expect(throws: WireProtocolError.self) {
            try buffer.finishWireFrame(start, count: count)
        }
        #expect(buffer == bb("keep"))
    }
}

enum SupportSplits {
    static func split(_ buffer: ByteBuffer, using rng: inout SplitMix64) -> [ByteBuffer] {
        randomSplits(buffer, maximumPieces: rng.pick([2, 5, 40]), using: &rng)
    }
}
