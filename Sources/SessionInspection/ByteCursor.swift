/// A read position in a range of bytes. Every read checks the bytes left first and
/// throws `truncated` instead of reading past the end, so no input can trap.
struct ByteCursor {
    private let bytes: [UInt8]
    /// The index of the next byte to read.
    private(set) var offset: Int
    /// One past the last byte this cursor may read.
    let endOffset: Int

    /// A cursor over `range` of `bytes`; the range is clamped to the array, so a bad
    /// range can only make the cursor shorter, never read out of bounds.
    init(_ bytes: [UInt8], range: Range<Int>) {
        let lower = min(max(range.lowerBound, 0), bytes.count)
        let upper = min(max(range.upperBound, lower), bytes.count)
        self.bytes = bytes
        self.offset = lower
        self.endOffset = upper
    }

    init(_ bytes: [UInt8]) {
        self.init(bytes, range: 0..<bytes.count)
    }

    var remaining: Int { endOffset - offset }
    var isAtEnd: Bool { offset >= endOffset }

    /// The next byte without consuming it, or nil at the end.
    func peekByte() -> UInt8? {
        offset < endOffset ? bytes[offset] : nil
    }

    /// Throws unless `count` more bytes can be read.
    func require(_ count: Int) throws(SessionInspectionError) {
        guard count >= 0, count <= remaining else {
            throw .truncated(offset: offset, needed: max(count, 0) - remaining)
        }
    }

    mutating func readByte() throws(SessionInspectionError) -> UInt8 {
        try require(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    /// A big-endian integer of `T`'s width (at most 8 bytes), two's complement for signed types.
    mutating func readInteger<T: FixedWidthInteger>(_: T.Type = T.self) throws(SessionInspectionError) -> T {
        let size = MemoryLayout<T>.size
        precondition(size <= 8, "ByteCursor reads integers of up to 8 bytes")
        try require(size)
        var accumulated: UInt64 = 0
        for index in offset..<(offset + size) {
            accumulated = accumulated << 8 | UInt64(bytes[index])
        }
        offset += size
        return T(truncatingIfNeeded: accumulated)
    }

    mutating func readBytes(_ count: Int) throws(SessionInspectionError) -> ArraySlice<UInt8> {
        try require(count)
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }

    /// Moves past `count` bytes.
    mutating func skip(_ count: Int) throws(SessionInspectionError) {
        try require(count)
        offset += count
    }
}
