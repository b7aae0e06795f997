import MemcacheProtocol
import NIOCore
import NIOTestUtils
import TandemTestSupport
import Testing

/// The binary protocol's request decoder: whole, byte by byte, random splits, and bad input.
@Suite struct BinaryDecoderTests {
    func request(_ opcode: UInt8, key: String = "", extras: [UInt8] = [], value: String = "", opaque: UInt32 = 0, cas: UInt64 = 0) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(0x80))
        buffer.writeInteger(opcode)
        buffer.writeInteger(UInt16(key.utf8.count))
        buffer.writeInteger(UInt8(extras.count))
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(UInt32(extras.count + key.utf8.count + value.utf8.count))
        buffer.writeInteger(opaque)
        buffer.writeInteger(cas)
        buffer.writeBytes(extras)
        buffer.writeString(key)
        buffer.writeString(value)
        return buffer
    }

    func decodeAll(_ input: ByteBuffer, limits: MemcacheDecoderLimits = MemcacheDecoderLimits(), splits: [Int]? = nil) throws -> [BinaryCommand] {
        var decoder = BinaryDecoder(limits: limits)
        var buffer = ByteBuffer()
        var commands: [BinaryCommand] = []
        var pending = input
        let pieces = splits ?? [input.readableBytes]
        for size in pieces + [pending.readableBytes] {
            guard pending.readableBytes > 0 else { break }
            var piece = pending.readSlice(length: min(size, pending.readableBytes))!
            buffer.writeBuffer(&piece)
            while let command = try decoder.next(&buffer) { commands.append(command) }
        }
        return commands
    }

    @Test func setGetDeleteAndIncrDecodeWholeByteByByteAndSplit() throws {
        var stream = request(0x01, key: "k", extras: [0, 0, 0, 7, 0, 0, 0x0E, 0x10], value: "hello", opaque: 1, cas: 9)
        var more = request(0x00, key: "k", opaque: 2)
        stream.writeBuffer(&more)
        var incr = request(0x05, key: "n", extras: [0, 0, 0, 0, 0, 0, 0, 5] + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF], opaque: 3)
        stream.writeBuffer(&incr)
        var noop = request(0x0A, opaque: 4)
        stream.writeBuffer(&noop)
        let whole = try decodeAll(stream)
        #expect(whole.count == 4)
        guard case .request(let set) = whole[0] else {
            Issue.record("expected a request")
            return
        }
        #expect(set.opcode == .set && set.key == ByteBuffer(string: "k") && set.value == ByteBuffer(string: "hello"))
        #expect(set.opaque == 1 && set.cas == 9 && set.extras.readableBytes == 8)
        #expect(try decodeAll(stream, splits: Array(repeating: 1, count: stream.readableBytes)) == whole)
        var random = SplitMix64(seed: 11)
        for _ in 0..<50 {
            var splits: [Int] = []
            var left = stream.readableBytes
            while left > 0 {
                let size = Int(random.next() % 40) + 1
                splits.append(size)
                left -= size
            }
            #expect(try decodeAll(stream, splits: splits) == whole)
        }
    }

    @Test func wrongMagicClosesTheConnection() {
        var buffer = ByteBuffer(bytes: [0x81] + [UInt8](repeating: 0, count: 23))
        var decoder = BinaryDecoder()
        #expect(throws: BinaryProtocolError.badMagic(0x81)) { try decoder.next(&buffer) }
    }

    @Test func badShapesAreRefusedAndTheStreamStaysInFrame() throws {
        // GET with extras, SET without extras, a key longer than the body, an unknown opcode.
        var stream = request(0x00, key: "k", extras: [1, 2, 3, 4], opaque: 1)
        var noExtras = request(0x01, key: "k", value: "v", opaque: 2)
        stream.writeBuffer(&noExtras)
        var unknown = request(0x7F, key: "k", opaque: 3)
        stream.writeBuffer(&unknown)
        var next = request(0x0A, opaque: 4)
        stream.writeBuffer(&next)
        let commands = try decodeAll(stream, splits: Array(repeating: 3, count: stream.readableBytes / 3 + 1))
        #expect(commands.count == 4)
        #expect(commands[0] == .refused(opcode: 0x00, opaque: 1, status: .invalidArguments, key: ByteBuffer(string: "k")))
        #expect(commands[1] == .refused(opcode: 0x01, opaque: 2, status: .invalidArguments, key: ByteBuffer(string: "k")))
        #expect(commands[2] == .refused(opcode: 0x7F, opaque: 3, status: .unknownCommand, key: ByteBuffer()))
        guard case .request(let noop) = commands[3] else {
            Issue.record("the stream lost its frame")
            return
        }
        #expect(noop.opcode == .noop && noop.opaque == 4)
    }

    @Test func anOversizedValueIsSwallowedWithoutBufferingAndAnOversizedOtherBodyCloses() throws {
        let limits = MemcacheDecoderLimits(maxItemSize: 1024)
        var decoder = BinaryDecoder(limits: limits)
        var buffer = ByteBuffer()
        // A SET header declaring a 10 MB body.
        buffer.writeBytes([0x80, 0x01, 0, 1, 8, 0, 0, 0])
        buffer.writeInteger(UInt32(10 << 20))
        buffer.writeInteger(UInt32(5))
        buffer.writeInteger(UInt64(0))
        #expect(try decoder.next(&buffer) == .refused(opcode: 0x01, opaque: 5, status: .valueTooLarge, key: ByteBuffer()))
        var sent = 0
        while sent < 10 << 20 {
            buffer.writeBytes([UInt8](repeating: 0x61, count: 65536))
            sent += 65536
            #expect(try decoder.next(&buffer) == nil)
            #expect(buffer.readableBytes == 0)
            buffer.discardReadBytes()
        }
        var noop = request(0x0A, opaque: 6)
        buffer.writeBuffer(&noop)
        guard case .request(let after)? = try decoder.next(&buffer) else {
            Issue.record("no request after the swallowed body")
            return
        }
        #expect(after.opaque == 6)

        var get = ByteBuffer(bytes: [0x80, 0x00, 0, 1, 0, 0, 0, 0])
        get.writeInteger(UInt32(10 << 20))
        get.writeInteger(UInt32(0))
        get.writeInteger(UInt64(0))
        var fresh = BinaryDecoder(limits: limits)
        #expect(throws: BinaryProtocolError.bodyTooLarge(10 << 20)) { try fresh.next(&get) }
    }

    @Test func randomBytesNeverCrash() {
        var random = SplitMix64(seed: 99)
        for _ in 0..<3000 {
            var bytes = (0..<Int(random.next() % 200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            if !bytes.isEmpty, random.next() % 2 == 0 { bytes[0] = 0x80 }
            var buffer = ByteBuffer(bytes: bytes)
            var decoder = BinaryDecoder(limits: MemcacheDecoderLimits(maxItemSize: 4096))
            var steps = 0
            while steps < 1000, let command = try? decoder.next(&buffer) {
                _ = command
                steps += 1
            }
            #expect(steps < 1000)
        }
    }
}
