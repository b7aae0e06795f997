import NIOCore

/// Splits a byte stream into `WireFrame`s (Protocol.md 1.1).
///
/// The `length` field is checked as soon as its 4 bytes are there: a value under 8
/// throws `.frameTooShort` and one over `WireFrame.maximumFrameLength` throws
/// `.frameTooLarge` at once, so a bad or hostile length never makes the channel
/// wait for, or buffer, a body. A frame's body is a slice of the receive buffer.
/// Bytes of an incomplete frame left at the end of the stream throw `.truncatedFrame`.
/// After an error the stream is out of frame: close the connection.
public struct WireFrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = WireFrame

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws(WireProtocolError) -> WireFrame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            return nil
        }
        guard length >= WireFrame.minimumFrameLength else {
            throw .frameTooShort
        }
        guard length <= WireFrame.maximumFrameLength else {
            throw .frameTooLarge(length: length)
        }
        guard buffer.readableBytes >= WireFrame.lengthFieldSize + Int(length) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: WireFrame.lengthFieldSize)
        // The three reads and the slice cannot fail: the bytes were counted above.
        let type = buffer.readInteger(as: UInt16.self)!
        let flags = buffer.readInteger(as: UInt16.self)!
        let requestID = buffer.readInteger(as: UInt32.self)!
        let body = buffer.readSlice(length: Int(length) - WireFrame.minimumFrameLength)!
        return WireFrame(type: type, flags: flags, requestID: requestID, body: body)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(WireProtocolError) -> WireFrame? {
        if let frame = try decode(buffer: &buffer) {
            return frame
        }
        if buffer.readableBytes > 0 {
            throw .truncatedFrame
        }
        return nil
    }
}

/// Writes `WireFrame`s (Protocol.md 1.1). A frame whose body is over
/// `WireFrame.maximumBodySize` throws `.frameTooLarge` and writes nothing.
public struct WireFrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = WireFrame

    public init() {}

    public func encode(data: WireFrame, out: inout ByteBuffer) throws(WireProtocolError) {
        try out.writeWireFrame(data)
    }
}

/// Where a frame being written with `ByteBuffer.beginWireFrame` starts.
public struct WireFrameStart: Sendable, Hashable {
    /// Index of the frame's `length` field in the buffer.
    public let lengthIndex: Int

    /// The value the frame's `length` field gets if it is finished now.
    public func length(in buffer: ByteBuffer) -> Int {
        buffer.writerIndex - lengthIndex - WireFrame.lengthFieldSize
    }
}

/// Where a `changes` or `snapshotChunk` frame being written starts, and where its
/// `count` field is.
public struct WireListFrameStart: Sendable, Hashable {
    public let frame: WireFrameStart
    /// Index of the `count u32` that `finishWireFrame(_:count:)` fills in.
    public let countIndex: Int

    /// The value the frame's `length` field gets if it is finished now.
    public func length(in buffer: ByteBuffer) -> Int { frame.length(in: buffer) }
}

extension ByteBuffer {
    /// Writes `frame`: length, type, flags, request id and body.
    /// Throws `.frameTooLarge` (writing nothing) if the body is over `WireFrame.maximumBodySize`.
    @discardableResult
    public mutating func writeWireFrame(_ frame: WireFrame) throws(WireProtocolError) -> Int {
        let length = frame.length
        guard length <= WireFrame.maximumFrameLength else {
            throw .frameTooLarge(length: UInt32(clamping: length))
        }
        reserveCapacity(minimumWritableBytes: WireFrame.lengthFieldSize + length)
        writeInteger(UInt32(length))
        writeInteger(frame.type)
        writeInteger(frame.flags)
        writeInteger(frame.requestID)
        writeImmutableBuffer(frame.body)
        return WireFrame.lengthFieldSize + length
    }

    /// Writes `message` as a whole frame, its body encoded straight into this buffer.
    /// Throws `.frameTooLarge` (writing nothing) if it does not fit a frame.
    @discardableResult
    public mutating func writeWireMessage(_ message: WireMessage, flags: UInt16 = 0, requestID: UInt32 = 0) throws(WireProtocolError) -> Int {
        reserveCapacity(minimumWritableBytes: WireFrame.headerSize + message.encodedBodySize)
        let start = beginWireFrame(type: message.type, flags: flags, requestID: requestID)
        message.encodeBody(into: &self)
        try finishWireFrame(start)
        return writerIndex - start.lengthIndex
    }

    /// Starts a frame whose body the caller writes next: writes a placeholder `length`,
    /// then type, flags and request id. Finish it with `finishWireFrame(_:)`; do not
    /// move or discard this buffer's bytes in between.
    public mutating func beginWireFrame(type: WireMessageType, flags: UInt16 = 0, requestID: UInt32 = 0) -> WireFrameStart {
        let start = WireFrameStart(lengthIndex: writerIndex)
        writeInteger(UInt32(0))
        writeInteger(type.rawValue)
        writeInteger(flags)
        writeInteger(requestID)
        return start
    }

    /// Fills in the `length` of the frame started at `start` from what was written since.
    /// If the frame is over `WireFrame.maximumFrameLength` it throws `.frameTooLarge` and
    /// removes the whole frame (the writer index goes back to `start`).
    public mutating func finishWireFrame(_ start: WireFrameStart) throws(WireProtocolError) {
        let length = start.length(in: self)
        precondition(length >= WireFrame.minimumFrameLength, "finishWireFrame without a matching beginWireFrame")
        guard length <= WireFrame.maximumFrameLength else {
            moveWriterIndex(to: start.lengthIndex)
            throw .frameTooLarge(length: UInt32(clamping: length))
        }
        setInteger(UInt32(length), at: start.lengthIndex)
    }

    /// Starts a `changes` frame: header and a placeholder `count`. Write the changes with
    /// `writeChangeUpsert`, `writeChangeRemove` and `writeChangeFlush`, then call
    /// `finishWireFrame(_:count:)`. Unsolicited, so the request id is 0 by default.
    public mutating func beginChangesFrame(flags: UInt16 = 0, requestID: UInt32 = 0) -> WireListFrameStart {
        let frame = beginWireFrame(type: .changes, flags: flags, requestID: requestID)
        return WireListFrameStart(frame: frame, countIndex: writeWireCountPlaceholder())
    }

    /// Starts a `snapshotChunk` frame: header and a placeholder `count`. Write the items
    /// with `writeSnapshotItem`, then call `finishWireFrame(_:count:)`.
    public mutating func beginSnapshotChunkFrame(flags: UInt16 = 0, requestID: UInt32 = 0) -> WireListFrameStart {
        let frame = beginWireFrame(type: .snapshotChunk, flags: flags, requestID: requestID)
        return WireListFrameStart(frame: frame, countIndex: writeWireCountPlaceholder())
    }

    /// Fills in `count` and `length` of a frame started with `beginChangesFrame` or
    /// `beginSnapshotChunkFrame`. Throws `.frameTooLarge` like `finishWireFrame(_:)`,
    /// removing the whole frame.
    public mutating func finishWireFrame(_ start: WireListFrameStart, count: UInt32) throws(WireProtocolError) {
        setWireCount(count, at: start.countIndex)
        try finishWireFrame(start.frame)
    }

    /// Writes a `count u32` of 0 to be filled in later with `setWireCount(_:at:)`;
    /// returns its index. For bodies built outside `beginChangesFrame`.
    public mutating func writeWireCountPlaceholder() -> Int {
        let index = writerIndex
        writeInteger(UInt32(0))
        return index
    }

    /// Sets the `count u32` written by `writeWireCountPlaceholder()`.
    public mutating func setWireCount(_ count: UInt32, at index: Int) {
        setInteger(count, at: index)
    }
}
