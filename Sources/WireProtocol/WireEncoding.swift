import NIOCore

// Field encodings of Protocol.md 1.2, and the hot-path writers the replication
// sender uses to put many changes or snapshot items straight into one buffer
// (see `beginChangesFrame` / `beginSnapshotChunkFrame`).

/// Encoded sizes of the fixed parts of list elements.
public enum WireEncodedSize {
    /// `bytes` length prefix.
    public static let bytesPrefix = 4
    /// A `changes` element without key and value: offset u64, kind u8, key length u32.
    public static let changeRemove = 8 + 1 + 4
    /// A `changes` upsert without key and value: also value length u32, flags u32, deadline i64, cas u64.
    public static let changeUpsert = changeRemove + 4 + 4 + 8 + 8
    /// A `snapshotChunk` item without key and value: key and value lengths, flags, deadline, cas.
    public static let snapshotItem = 4 + 4 + 4 + 8 + 8
    /// A `properties` pair without its text: two length prefixes.
    public static let property = 4 + 4

    /// Encoded size of a `changes` upsert with a key and a value of these sizes.
    @inlinable public static func changeUpsert(keyCount: Int, valueCount: Int) -> Int {
        changeUpsert + keyCount + valueCount
    }

    /// Encoded size of a `changes` remove with a key of this size.
    @inlinable public static func changeRemove(keyCount: Int) -> Int {
        changeRemove + keyCount
    }

    /// Encoded size of a `changes` delete (or flush_all) with a key of this size: a remove plus its stamp.
    @inlinable public static func changeDelete(keyCount: Int) -> Int {
        changeRemove + keyCount + 8
    }

    /// Encoded size of a `snapshotChunk` item with a key and a value of these sizes.
    @inlinable public static func snapshotItem(keyCount: Int, valueCount: Int) -> Int {
        snapshotItem + keyCount + valueCount
    }
}

extension ByteBuffer {
    // MARK: Hot path: changes and snapshot items

    /// Appends one `upsert` element of a `changes` body (Protocol.md 1.4); returns the
    /// bytes written. Count it in the frame's `count` (`finishWireFrame(_:count:)`).
    @inlinable
    @discardableResult
    public mutating func writeChangeUpsert(
        offset: UInt64, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer,
        flags: UInt32, deadlineMillis: Int64, cas: UInt64
    ) -> Int {
        let size = WireEncodedSize.changeUpsert(keyCount: key.count, valueCount: value.count)
        reserveCapacity(minimumWritableBytes: size)
        writeInteger(offset)
        writeInteger(ReplicatedChange.Kind.upsert.rawValue)
        writeWireBytes(key)
        writeWireBytes(value)
        writeInteger(flags)
        writeInteger(deadlineMillis)
        writeInteger(cas)
        return size
    }

    /// Appends one `remove` element of a `changes` body; returns the bytes written.
    @inlinable
    @discardableResult
    public mutating func writeChangeRemove(offset: UInt64, key: UnsafeRawBufferPointer) -> Int {
        let size = WireEncodedSize.changeRemove(keyCount: key.count)
        reserveCapacity(minimumWritableBytes: size)
        writeInteger(offset)
        writeInteger(ReplicatedChange.Kind.remove.rawValue)
        writeWireBytes(key)
        return size
    }

    /// Appends one `flush_all` element of a `changes` body (its key is empty); returns the bytes written.
    @inlinable
    @discardableResult
    public mutating func writeChangeFlush(offset: UInt64, stamp: UInt64) -> Int {
        let size = WireEncodedSize.changeDelete(keyCount: 0)
        reserveCapacity(minimumWritableBytes: size)
        writeInteger(offset)
        writeInteger(ReplicatedChange.Kind.flushAll.rawValue)
        writeInteger(UInt32(0))
        writeInteger(stamp)
        return size
    }

    /// Appends one `delete` element of a `changes` body; returns the bytes written.
    @inlinable
    @discardableResult
    public mutating func writeChangeDelete(offset: UInt64, key: UnsafeRawBufferPointer, stamp: UInt64) -> Int {
        let size = WireEncodedSize.changeDelete(keyCount: key.count)
        reserveCapacity(minimumWritableBytes: size)
        writeInteger(offset)
        writeInteger(ReplicatedChange.Kind.delete.rawValue)
        writeWireBytes(key)
        writeInteger(stamp)
        return size
    }

    /// Appends one item of a `snapshotChunk` body (Protocol.md 1.4); returns the bytes
    /// written. Count it in the frame's `count` (`finishWireFrame(_:count:)`).
    @inlinable
    @discardableResult
    public mutating func writeSnapshotItem(
        key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer,
        flags: UInt32, deadlineMillis: Int64, cas: UInt64
    ) -> Int {
        let size = WireEncodedSize.snapshotItem(keyCount: key.count, valueCount: value.count)
        reserveCapacity(minimumWritableBytes: size)
        writeWireBytes(key)
        writeWireBytes(value)
        writeInteger(flags)
        writeInteger(deadlineMillis)
        writeInteger(cas)
        return size
    }

    // MARK: Field encodings

    /// `bytes`: u32 length, then the bytes.
    @inlinable
    @discardableResult
    mutating func writeWireBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
        return WireEncodedSize.bytesPrefix + bytes.count
    }

    /// `bytes` from the readable bytes of `bytes`.
    @discardableResult
    mutating func writeWireBytes(_ bytes: ByteBuffer) -> Int {
        writeInteger(UInt32(bytes.readableBytes))
        writeImmutableBuffer(bytes)
        return WireEncodedSize.bytesPrefix + bytes.readableBytes
    }

    @discardableResult
    mutating func writeWireBytes(_ bytes: [UInt8]) -> Int {
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
        return WireEncodedSize.bytesPrefix + bytes.count
    }

    /// `string`: `bytes` holding UTF-8.
    @discardableResult
    mutating func writeWireString(_ string: String) -> Int {
        let count = string.utf8.count
        writeInteger(UInt32(count))
        writeString(string)
        return WireEncodedSize.bytesPrefix + count
    }

    /// `id16`: the 16 bytes, no prefix.
    mutating func writeReplicationID(_ id: ReplicationID) {
        precondition(id.bytes.count == 16, "a replication ID has 16 bytes")
        writeBytes(id.bytes)
    }
}

/// Reads the fields of one message body, turning every way it can be short or wrong
/// into `WireProtocolError.malformed` naming the message and field.
struct WireBodyReader {
    private var buffer: ByteBuffer
    private let type: WireMessageType
    /// The list element being read, for error messages.
    var element: Int?

    init(_ body: ByteBuffer, type: WireMessageType) {
        self.buffer = body
        self.type = type
    }

    var remaining: Int { buffer.readableBytes }

    func malformed(_ field: StaticString, _ problem: String) -> WireProtocolError {
        var location = type.name
        if let element { location += " element \(element)" }
        return .malformed("\(location): `\(field)` \(problem)")
    }

    private func ends(_ field: StaticString, needing count: Int) -> WireProtocolError {
        malformed(field, "needs \(count) bytes, the body has \(remaining) left")
    }

    mutating func integer<T: FixedWidthInteger>(_ field: StaticString, as: T.Type = T.self) throws(WireProtocolError) -> T {
        guard let value = buffer.readInteger(as: T.self) else {
            throw ends(field, needing: MemoryLayout<T>.size)
        }
        return value
    }

    /// The length prefix of a `bytes` field, checked against what is left.
    private mutating func length(_ field: StaticString) throws(WireProtocolError) -> Int {
        let length = Int(try integer(field, as: UInt32.self))
        guard length <= remaining else {
            throw malformed(field, "has length \(length), the body has \(remaining) left")
        }
        return length
    }

    /// A `bytes` field as a slice of the body.
    mutating func bytes(_ field: StaticString) throws(WireProtocolError) -> ByteBuffer {
        let length = try length(field)
        return buffer.readSlice(length: length)!
    }

    /// A `bytes` field copied out.
    mutating func byteArray(_ field: StaticString) throws(WireProtocolError) -> [UInt8] {
        let length = try length(field)
        return buffer.readBytes(length: length)!
    }

    /// A `string` field; its bytes must be valid UTF-8.
    mutating func string(_ field: StaticString) throws(WireProtocolError) -> String {
        let length = try length(field)
        let string = buffer.withUnsafeReadableBytes { raw in
            raw.withMemoryRebound(to: UInt8.self) { bytes in
                String(validating: UnsafeBufferPointer(rebasing: bytes[..<length]), as: UTF8.self)
            }
        }
        guard let string else {
            throw malformed(field, "is not valid UTF-8")
        }
        buffer.moveReaderIndex(forwardBy: length)
        return string
    }

    mutating func replicationID(_ field: StaticString) throws(WireProtocolError) -> ReplicationID {
        guard let bytes = buffer.readBytes(length: 16) else {
            throw ends(field, needing: 16)
        }
        return ReplicationID(bytes: bytes)
    }

    /// A `count u32` of elements that take at least `minimumElementSize` bytes each,
    /// checked against what is left before anyone reserves memory for it.
    mutating func count(_ field: StaticString, minimumElementSize: Int) throws(WireProtocolError) -> Int {
        let count = Int(try integer(field, as: UInt32.self))
        guard count <= remaining / minimumElementSize else {
            throw malformed(field, "is \(count), but \(count) elements need at least \(count * minimumElementSize) bytes and the body has \(remaining) left")
        }
        return count
    }

    /// An enumerated `u8` field.
    mutating func enumeration<E: RawRepresentable>(_ field: StaticString, as: E.Type) throws(WireProtocolError) -> E where E.RawValue == UInt8 {
        let raw = try integer(field, as: UInt8.self)
        guard let value = E(rawValue: raw) else {
            throw malformed(field, "has the undefined value \(raw)")
        }
        return value
    }

    /// Checks that nothing is left over.
    func finish() throws(WireProtocolError) {
        guard remaining == 0 else {
            throw WireProtocolError.malformed("\(type.name): \(remaining) bytes left over after the last field")
        }
    }
}
