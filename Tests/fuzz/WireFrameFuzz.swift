// libFuzzer harness for the wire protocol's frame decoder and message parser.
// Not part of the SwiftPM package: Tests/fuzz/run-wire.sh compiles it against
// the WireProtocol target built with `--sanitize=fuzzer --sanitize=address`
// and runs it.
//
// Input layout: byte 0 seeds the read splits, byte 1 picks a message type for
// the direct body parse, the rest is the byte stream a peer sends (and, for
// the direct parse, a message body).
//
// Checked for every input:
// - no crash, trap or memory error (ASan); typed throws guarantee only
//   `WireProtocolError` comes out;
// - decoding the stream whole, in random splits and byte by byte gives the
//   same frames and the same error; a frame error is never thrown by the
//   message parser and a message error never by the frame decoder;
// - every message that parses re-encodes to exactly its body (the encoding is
//   canonical; unknown error codes are the one documented exception), and
//   `encodedBodySize` is its size.

import NIOCore
import WireProtocol

struct SplitMix64 {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

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
        switch error {
        case .frameTooShort, .frameTooLarge, .truncatedFrame: break
        case .malformed, .unknownMessageType: fatalError("the frame decoder threw a message error: \(error)")
        }
        return (frames, error)
    }
}

func checkMessage(type: UInt16, body: ByteBuffer) {
    do {
        let message = try WireMessage(type: type, body: body)
        precondition(message.type.rawValue == type)
        var encoded = ByteBuffer()
        message.encodeBody(into: &encoded)
        precondition(encoded.readableBytes == message.encodedBodySize, "encodedBodySize is wrong for \(message.type)")
        if case .error(let error) = message, error.code == .unknown { return }
        precondition(encoded == body, "\(message.type) does not re-encode to its body")
    } catch {
        switch error {
        case .malformed, .unknownMessageType: break
        default: fatalError("the message parser threw a frame error: \(error)")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    var rng = SplitMix64(state: UInt64(data[0]))
    let typeChoice = Int(data[1])
    let stream = ByteBuffer(bytes: UnsafeBufferPointer(start: data + 2, count: size - 2))

    // The whole input as the body of one message type.
    let types = WireMessageType.allCases
    let type = typeChoice < types.count * 12 ? types[typeChoice % types.count].rawValue : UInt16(typeChoice) << 4
    checkMessage(type: type, body: stream)

    // The stream as frames: whole, random splits, byte by byte.
    let whole = decodeStream([stream])
    var pieces: [ByteBuffer] = []
    var start = 0
    while start < stream.readableBytes {
        let length = min(stream.readableBytes - start, 1 + rng.below(32))
        pieces.append(stream.getSlice(at: start, length: length)!)
        start += length
    }
    let split = decodeStream(pieces)
    let bytewise = decodeStream((0..<stream.readableBytes).map { stream.getSlice(at: $0, length: 1)! })
    precondition(whole.frames == split.frames && whole.error == split.error, "split decoding differs")
    precondition(whole.frames == bytewise.frames && whole.error == bytewise.error, "byte-by-byte decoding differs")

    for frame in whole.frames {
        checkMessage(type: frame.type, body: frame.body)
        var reencoded = ByteBuffer()
        do {
            try reencoded.writeWireFrame(frame)
        } catch {
            fatalError("a received frame does not re-encode: \(error)")
        }
    }
    return 0
}
