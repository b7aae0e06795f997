import NIOCore
import NIOEmbedded
import TandemTestSupport
import Testing
import WireProtocol

@Suite("Bad frames")
struct BadFrameTests {
    /// Only the 4 bytes of `length`, nothing after them.
    static func lengthOnly(_ length: UInt32) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(length)
        return buffer
    }

    @Test("a length under 8 throws as soon as its 4 bytes are there", arguments: [0, 1, 7] as [UInt32])
    func tooShort(length: UInt32) {
        var decoder = WireFrameDecoder()
        var buffer = Self.lengthOnly(length)
        #expect(throws: WireProtocolError.frameTooShort) {
            try decoder.decode(buffer: &buffer)
        }
    }

    @Test("a length over the maximum throws as soon as its 4 bytes are there",
          arguments: [UInt32(WireFrame.maximumFrameLength + 1), 0x0100_0001 + 100, 0x7FFF_FFFF, 0xFFFF_FFFF] as [UInt32])
    func tooLarge(length: UInt32) {
        var decoder = WireFrameDecoder()
        var buffer = Self.lengthOnly(length)
        #expect(throws: WireProtocolError.frameTooLarge(length: length)) {
            try decoder.decode(buffer: &buffer)
        }
        // The same at EOF.
        var again = Self.lengthOnly(length)
        #expect(throws: WireProtocolError.frameTooLarge(length: length)) {
            try decoder.decodeLast(buffer: &again, seenEOF: true)
        }
    }

    @Test("a too-large length fails the channel without buffering the body")
    func tooLargeThroughChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(WireFrameDecoder()))
        // A valid frame first: it is delivered before the error.
        var bytes = ByteBuffer()
        try bytes.writeWireMessage(.ack(offset: 3))
        bytes.writeInteger(UInt32(0xFFFF_FFFF))
        #expect(throws: WireProtocolError.frameTooLarge(length: 0xFFFF_FFFF)) {
            try channel.writeInbound(bytes)
        }
        let first = try channel.readInbound(as: WireFrame.self)
        #expect(try first?.message() == .ack(offset: 3))
        _ = try? channel.finish()
    }

    @Test("an HTTP request or a memcached command on the wire port is refused at once")
    func otherProtocols() {
        for text in ["GET / HTTP/1.1\r\n", "get k\r\n", "\u{16}\u{03}\u{01}\u{02}\u{00}"] {
            var decoder = WireFrameDecoder()
            var buffer = bb(text)
            #expect(throws: WireProtocolError.self) { try decoder.decode(buffer: &buffer) }
        }
    }

    @Test("fewer than 4 bytes: wait")
    func lengthIncomplete() throws {
        var decoder = WireFrameDecoder()
        for count in 0..<4 {
            var buffer = bb([UInt8](repeating: 0xFF, count: count))
            #expect(try decoder.decode(buffer: &buffer) == nil)
        }
    }

    @Test("EOF inside a frame throws truncatedFrame", arguments: [1, 3, 4, 11, 12, 19])
    func truncatedAtEOF(count: Int) throws {
        var full = ByteBuffer()
        try full.writeWireMessage(.ping(timestampMillis: 1))
        #expect(full.readableBytes == 20)
        var decoder = WireFrameDecoder()
        var partial = full.getSlice(at: 0, length: count)!
        #expect(try decoder.decode(buffer: &partial) == nil)
        #expect(throws: WireProtocolError.truncatedFrame) {
            try decoder.decodeLast(buffer: &partial, seenEOF: true)
        }
    }

    @Test("EOF after whole frames delivers them and then nothing")
    func cleanEOF() throws {
        var stream = ByteBuffer()
        try stream.writeWireMessage(.ping(timestampMillis: 1))
        try stream.writeWireMessage(.pong(timestampMillis: 1))
        var decoder = WireFrameDecoder()
        #expect(try decoder.decodeLast(buffer: &stream, seenEOF: true)?.messageType == .ping)
        #expect(try decoder.decodeLast(buffer: &stream, seenEOF: true)?.messageType == .pong)
        #expect(try decoder.decodeLast(buffer: &stream, seenEOF: true) == nil)
    }

    @Test("a truncated frame then EOF through the channel")
    func truncatedThroughChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(WireFrameDecoder()))
        var bytes = ByteBuffer()
        try bytes.writeWireMessage(.ping(timestampMillis: 1))
        try bytes.writeWireMessage(.pong(timestampMillis: 2))
        bytes.moveWriterIndex(to: bytes.writerIndex - 3)
        try channel.writeInbound(bytes)
        #expect(try channel.readInbound(as: WireFrame.self)?.messageType == .ping)
        #expect(try channel.readInbound(as: WireFrame.self) == nil)
        channel.pipeline.fireChannelInactive()
        #expect(throws: WireProtocolError.truncatedFrame) {
            try channel.throwIfErrorCaught()
        }
        _ = try? channel.finish()
    }

    @Test("error descriptions say what happened")
    func descriptions() {
        #expect(WireProtocolError.frameTooShort.description.contains("minimum of 8"))
        #expect(WireProtocolError.frameTooLarge(length: 0xFFFF_FFFF).description == "wire frame length 4294967295 over the maximum of 16777216 bytes")
        #expect(WireProtocolError.truncatedFrame.description.contains("ended inside"))
        #expect(WireProtocolError.malformed("ping: `timestamp` needs 8 bytes").description == "malformed wire message: ping: `timestamp` needs 8 bytes")
        #expect(WireProtocolError.unknownMessageType(0x0099).description == "unknown wire message type 0x0099")
        #expect(WireProtocolError.malformed("x").wireErrorCode == .malformed)
        #expect(WireProtocolError.unknownMessageType(1).wireErrorCode == .unknownMessage)
        #expect(WireProtocolError.frameTooShort.wireErrorCode == .malformed)
        #expect(WireProtocolError.frameTooLarge(length: 1 << 25).wireErrorCode == .malformed)
        #expect(WireProtocolError.truncatedFrame.wireErrorCode == nil)
    }
}

@Suite("Bad bodies")
struct BadBodyTests {
    /// Samples small enough to try every truncation of.
    static let smallSamples = samples.filter { encodedBody($0.message).readableBytes <= 2048 }

    @Test("unknown message types", arguments: [0x0000, 0x0006, 0x000F, 0x0012, 0x002C, 0x0043, 0x0055, 0x8000, 0xFFFF] as [UInt16])
    func unknownType(type: UInt16) {
        #expect(throws: WireProtocolError.unknownMessageType(type)) {
            try WireMessage(type: type, body: ByteBuffer())
        }
        #expect(throws: WireProtocolError.unknownMessageType(type)) {
            try WireFrame(type: type, body: bb("anything")).message()
        }
    }

    @Test("every strict prefix of a valid body is malformed", arguments: smallSamples)
    func truncations(sample: Sample) {
        let body = encodedBody(sample.message)
        for count in 0..<body.readableBytes {
            expectMalformed(sample.message.type, body.getSlice(at: 0, length: count)!)
        }
    }

    @Test("a valid body with bytes left over is malformed", arguments: smallSamples)
    func trailingBytes(sample: Sample) {
        for extra in [[0x00], [0xFF], [0, 0, 0, 0], Array("trailing".utf8)] as [[UInt8]] {
            var body = encodedBody(sample.message)
            body.writeBytes(extra)
            expectMalformed(sample.message.type, body, mentioning: "\(extra.count) bytes left over")
        }
    }

    @Test("garbage bodies of every type throw only malformed", arguments: WireMessageType.allCases)
    func garbage(type: WireMessageType) {
        var rng = SplitMix64(seed: UInt64(type.rawValue))
        var decoded = 0
        for _ in 0..<300 {
            let body = bb(rng.bytes(rng.int(0...64)))
            do {
                let message = try WireMessage(type: type.rawValue, body: body)
                #expect(message.type == type)
                decoded += 1
            } catch {
                guard case .malformed = error else {
                    Issue.record("\(error)")
                    return
                }
            }
        }
        // Fixed-size bodies only decode at their exact size.
        let fixedSizes: [WireMessageType: Int] = [.ping: 8, .pong: 8, .snapshotEnd: 8, .ack: 8, .replicate: 32, .fullResync: 40, .partialResync: 24, .statusRequest: 0, .statsRequest: 0, .pairStatus: 0]
        if let size = fixedSizes[type] {
            for count in 0...64 where count != size {
                expectMalformed(type, bb(rng.bytes(count)))
            }
            #expect(throws: Never.self) { try WireMessage(type: type.rawValue, body: bb(rng.bytes(size))) }
        }
    }

    @Test("undefined enumerated values")
    func undefinedEnumerations() {
        for role: UInt8 in [0, 3, 0xFF] {
            let hello = body { $0.u32(Hello.magic).u16(1).u16(1).u8(role).string("n").bytes([]).u64(0) }
            expectMalformed(.hello, hello, mentioning: "`role` has the undefined value \(role)")
        }
        for nodeRole: UInt8 in [0, 4, 0xFF] {
            let ok = body { $0.u16(1).string("n").u8(nodeRole).u64(1).u8(0).bytes([]) }
            expectMalformed(.helloOK, ok, mentioning: "`node_role` has the undefined value \(nodeRole)")
        }
        for auth: UInt8 in [2, 0xFF] {
            let ok = body { $0.u16(1).string("n").u8(1).u64(1).u8(auth).bytes([]) }
            expectMalformed(.helloOK, ok, mentioning: "`auth` has the undefined value \(auth)")
        }
        for kind: UInt8 in [0, 5, 0xFF] {
            let changes = body { $0.u32(1).u64(1).u8(kind).bytes([]) }
            expectMalformed(.changes, changes, mentioning: "changes element 0: `kind` has the undefined value \(kind)")
        }
        for outcome: UInt8 in [0, 5, 0xFF] {
            expectMalformed(.importReport, body { $0.u32(1).u8(outcome) }, mentioning: "importReport element 0: `outcome` has the undefined value \(outcome)")
        }
        for reason: UInt8 in [0, 4, 0xFF] {
            expectMalformed(.importReport, body { $0.u32(2).u8(1).u8(4).u8(reason).string("why") }, mentioning: "importReport element 1: `reason` has the undefined value \(reason)")
        }
        for role: UInt8 in [0, 4, 0xFF] {
            expectMalformed(.pairStatusReply, Self.pairStatusBody(role: role), mentioning: "`role` has the undefined value \(role)")
            expectMalformed(.pairStatusReply, Self.pairStatusBody(configuredRole: role), mentioning: "`configured_role` has the undefined value \(role)")
        }
        // The defined values decode.
        for role: UInt8 in 1...3 {
            #expect(throws: Never.self) { try WireMessage(type: WireMessageType.pairStatusReply.rawValue, body: Self.pairStatusBody(role: role, configuredRole: role)) }
        }
        let ok = body { $0.u16(1).string("n").u8(2).u64(1).u8(1).bytes([]) }
        #expect(throws: Never.self) { try WireMessage(type: WireMessageType.helloOK.rawValue, body: ok) }
    }

    /// A `pairStatusReply` body field by field, with any bytes for the enumerations and the name.
    static func pairStatusBody(role: UInt8 = 1, configuredRole: UInt8 = 2, name: [UInt8] = Array("b".utf8)) -> ByteBuffer {
        body { $0.u8(role).u8(configuredRole).u64(3).raw(Array(0..<16)).u64(4).raw([UInt8](repeating: 0, count: 16)).u64(0).bytes(name) }
    }

    @Test("a pairStatusReply has its fixed fields first, then the node name; pairStatus has an empty body")
    func pairStatusLayout() throws {
        let status = PairStatus(
            nodeName: "b", role: .primary, configuredRole: .backup, epoch: 3, replicationID: ReplicationID(bytes: Array(0..<16)), offset: 4
        )
        #expect(encodedBody(.pairStatusReply(status)) == Self.pairStatusBody())
        #expect(encodedBody(.pairStatusReply(status)).readableBytes == WireEncodedSize.pairStatus + 1)
        #expect(try WireMessage(type: WireMessageType.pairStatusReply.rawValue, body: Self.pairStatusBody()) == .pairStatusReply(status))
        // The name's length is checked against what is left, and the name must be UTF-8.
        var lying = Self.pairStatusBody(name: [])
        lying.moveWriterIndex(to: lying.writerIndex - 4)
        lying.writeInteger(UInt32(2))
        lying.writeBytes([0x41])
        expectMalformed(.pairStatusReply, lying, mentioning: "`node_name` has length 2")
        expectMalformed(.pairStatusReply, Self.pairStatusBody(name: [0xC0, 0x80]), mentioning: "`node_name` is not valid UTF-8")
        // A body that stops inside a fixed field names it.
        expectMalformed(.pairStatusReply, body { $0.u8(1).u8(2).u64(3).raw(Array(0..<10)) }, mentioning: "`replication_id`")
        expectMalformed(.pairStatus, bb([0]), mentioning: "1 bytes left over")
    }

    @Test("counts that cannot fit are refused before anything is reserved")
    func lyingCounts() {
        for count: UInt32 in [.max, 0x8000_0000, 1_000_000, 2] {
            expectMalformed(.changes, body { $0.u32(count) }, mentioning: "`count` is \(count)")
            expectMalformed(.snapshotChunk, body { $0.u32(count) }, mentioning: "`count` is \(count)")
            expectMalformed(.properties, body { $0.u32(count) }, mentioning: "`count` is \(count)")
            // One real element, then the count lies about the rest.
            expectMalformed(.changes, body { $0.u32(count).u64(1).u8(2).bytes(Array("k".utf8)) })
            expectMalformed(.snapshotChunk, body { $0.u32(count).bytes([1]).bytes([2]).u32(0).u64(0).u64(0) })
            expectMalformed(.properties, body { $0.u32(count).string("a").string("b") })
        }
        for count: UInt32 in [.max, 2] {
            expectMalformed(.importReport, body { $0.u32(count).u8(1) }, mentioning: "`count` is \(count)")
        }
        // A rejection needs its reason and message: a count of 3 one-byte outcomes is not enough for one.
        expectMalformed(.importReport, body { $0.u32(3).u8(4).u8(1).u8(0) }, mentioning: "importReport element 0: `message`")
        // A count that fits the minimum element size but not the real elements.
        expectMalformed(.changes, body { $0.u32(2).u64(1).u8(1).bytes([]).bytes([]).u32(0).u64(0).u64(0) }, mentioning: "changes element 1")
        // Fewer elements than the count says, the rest is stray bytes.
        expectMalformed(.changes, body { $0.u32(1).u64(1).u8(2).bytes([]).raw([0xAA]) }, mentioning: "left over")
        // A count lower than the elements that follow.
        expectMalformed(.properties, body { $0.u32(1).string("a").string("b").string("c").string("d") }, mentioning: "left over")
        // 2^32 - 1 properties in a 4 GB-looking body must not allocate: the body is 8 bytes.
        expectMalformed(.properties, body { $0.u32(.max).u32(0) }, mentioning: "`count`")
    }

    @Test("bytes lengths that run past the body")
    func lyingLengths() {
        expectMalformed(.auth, body { $0.u32(33).raw(Array(repeating: 1, count: 32)) }, mentioning: "`proof` has length 33")
        expectMalformed(.auth, body { $0.u32(.max) }, mentioning: "`proof` has length 4294967295")
        expectMalformed(.forward, body { $0.u32(.max).raw([1, 2, 3]) }, mentioning: "`request`")
        expectMalformed(.forwardReply, body { $0.u64(1).u32(5).raw([1, 2, 3, 4]) }, mentioning: "`reply`")
        expectMalformed(.hello, body { $0.u32(Hello.magic).u16(1).u16(1).u8(1).u32(100).raw([0x41]) }, mentioning: "`node_name`")
        expectMalformed(.changes, body { $0.u32(1).u64(1).u8(1).u32(0xFFFF_FFF0) }, mentioning: "`key`")
        expectMalformed(.changes, body { $0.u32(1).u64(1).u8(1).bytes([]).u32(0xFFFF_FFF0).raw(Array(repeating: 0, count: 20)) }, mentioning: "`value`")
        expectMalformed(.snapshotChunk, body { $0.u32(1).u32(0x7FFF_FFFF).raw(Array(repeating: 0, count: 30)) }, mentioning: "`key`")
        expectMalformed(.error, body { $0.u16(5).u32(2).raw([0x41]) }, mentioning: "`message`")
        expectMalformed(.properties, body { $0.u32(1).string("a").u32(10).raw([0x41]) }, mentioning: "`value`")
    }

    @Test("strings must be UTF-8")
    func invalidUTF8() {
        for bad: [UInt8] in [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0x41, 0xE2, 0x82], [0xF8, 0x88, 0x80, 0x80, 0x80]] {
            expectMalformed(.hello, body { $0.u32(Hello.magic).u16(1).u16(1).u8(1).bytes(bad).bytes([]) }, mentioning: "`node_name` is not valid UTF-8")
            expectMalformed(.helloOK, body { $0.u16(1).bytes(bad).u8(1).u64(0).u8(0).bytes([]) }, mentioning: "`node_name`")
            expectMalformed(.error, body { $0.u16(9).bytes(bad) }, mentioning: "`message`")
            expectMalformed(.properties, body { $0.u32(1).string("ok").bytes(bad) }, mentioning: "properties element 0: `value`")
        }
        // Non-ASCII UTF-8 and NUL are fine.
        #expect(throws: Never.self) { try WireMessage(type: WireMessageType.error.rawValue, body: body { $0.u16(9).bytes(Array("ünïcode \u{0} 🚀".utf8)) }) }
    }

    @Test("statusRequest and statsRequest have empty bodies")
    func emptyBodies() {
        expectMalformed(.statusRequest, bb([0]), mentioning: "1 bytes left over")
        expectMalformed(.statsRequest, bb("x"))
    }

    @Test("an unknown error code decodes to .unknown with the code in the message")
    func unknownErrorCode() throws {
        let decoded = try WireMessage(type: WireMessageType.error.rawValue, body: body { $0.u16(42).string("something new") })
        #expect(decoded == .error(WireError(.unknown, "unknown error code 42: something new")))
        let zero = try WireMessage(type: WireMessageType.error.rawValue, body: body { $0.u16(0).string("") })
        #expect(zero == .error(WireError(.unknown, "unknown error code 0")))
        // 0xFFFF is what `.unknown` encodes to; it decodes back unchanged.
        let sentinel = try WireMessage(type: WireMessageType.error.rawValue, body: body { $0.u16(0xFFFF).string("m") })
        #expect(sentinel == .error(WireError(.unknown, "m")))
    }

    @Test("a wrong magic is the session's business, not the decoder's")
    func wrongMagic() throws {
        let decoded = try WireMessage(type: WireMessageType.hello.rawValue, body: body { $0.u32(0x4854_5450).u16(1).u16(1).u8(1).string("").bytes([]).u64(0) })
        guard case .hello(let hello) = decoded else {
            Issue.record("not hello")
            return
        }
        #expect(hello.magic == 0x4854_5450)
        #expect(hello.magic != Hello.magic)
    }
}
