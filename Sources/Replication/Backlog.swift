import NIOCore
import SessionStore
import Synchronization
import WireProtocol

/// The newest part of a primary's change stream, kept as ready-to-send
/// `changes` frames so that a backup that was away can resume (partial
/// resync) and a connected one is fed without re-encoding.
public final class Backlog: Sendable {
    /// One encoded `changes` frame and the offsets it holds.
    struct Segment {
        var first: UInt64
        var last: UInt64
        var frame: ByteBuffer
    }

    struct State {
        /// Oldest first.
        var segments: [Segment] = []
        /// Index of the oldest live segment in `segments` (dropped ones are compacted lazily).
        var head = 0
        var bytes = 0
        /// The offset of the newest change appended.
        var end: UInt64 = 0
        /// Off until a backup first attaches: before that, no backup can ask
        /// for an offset of this history (its replication ID is new), so
        /// keeping frames would cost a copy of every write and up to
        /// `capacity` of memory for nothing.
        var recording = false

        /// The index of the oldest live segment holding offsets at or after
        /// `offset` (at most `end`), or nil when `offset` was dropped.
        /// Segments hold consecutive, increasing offsets.
        func firstSegment(holdingFrom offset: UInt64) -> Int? {
            guard head < segments.count, segments[head].first <= offset else { return nil }
            var low = head
            var high = segments.count - 1
            while low < high {
                let middle = (low + high) / 2
                if segments[middle].last >= offset { high = middle } else { low = middle + 1 }
            }
            return low
        }

        /// Adds segments holding offsets `first` to `last` and trims the
        /// oldest beyond `capacity`. Offsets must run on without a gap: a
        /// gap (a release missed while a promoted node took over the stream)
        /// drops what is held, so that no backup is ever served a stream with
        /// a hole in it.
        mutating func keep(_ new: [Segment], first: UInt64, last: UInt64, capacity: Int) {
            if first > end &+ 1 {
                let recording = self.recording
                self = State()
                self.recording = recording
            }
            for segment in new {
                segments.append(segment)
                bytes += segment.frame.readableBytes
            }
            end = last
            // Keep at least the newest segment, whatever the capacity.
            while bytes > capacity, segments.count - head > 1 {
                bytes -= segments[head].frame.readableBytes
                head += 1
            }
            if head > 64, head * 2 > segments.count {
                segments.removeFirst(head)
                head = 0
            }
        }
    }

    /// Frames are cut at about this many body bytes, far below the frame limit.
    static let targetFrameBytes = 1 << 20
    /// More than a change record adds to its key and value (offset, lengths, flags, deadline, CAS).
    static let changeOverheadBytes = 64

    public let capacity: Int
    private let state = Mutex(State())

    public init(capacity: Int) {
        self.capacity = capacity
    }

    /// Encodes released changes (consecutive offsets) onto the end. A
    /// change's offset is its store sequence plus `offsetShift` (wrapping):
    /// a promoted node's stream goes on from the offset where the history it
    /// followed ended, whatever its own store's sequence numbers are.
    public func append(_ changes: [Change], offsetShift: UInt64 = 0) {
        guard !changes.isEmpty else { return }
        let first = changes[0].sequence &+ offsetShift
        let last = changes[changes.count - 1].sequence &+ offsetShift
        let recording = state.withLock { state in
            if !state.recording { state.end = last }
            return state.recording
        }
        guard recording else { return }
        var segments: [Segment] = []
        var buffer = ByteBuffer()
        var index = 0
        while index < changes.count {
            // Sized to what this frame will hold: a segment keeps its whole
            // buffer alive for as long as it stays in the backlog, and a
            // release is often one small change (a fixed 64 KB buffer per
            // release held many times the backlog's nominal capacity).
            var estimate = 64
            for change in changes[index...] {
                estimate += change.storage.count + Self.changeOverheadBytes
                if estimate >= Self.targetFrameBytes { break }
            }
            buffer.reserveCapacity(minimumWritableBytes: estimate)
            let start = buffer.beginChangesFrame()
            let first = changes[index].sequence &+ offsetShift
            var count: UInt32 = 0
            var bodyBytes = 0
            while index < changes.count, count == 0 || bodyBytes < Self.targetFrameBytes {
                let change = changes[index]
                switch change.kind {
                case .upsert:
                    bodyBytes += change.storage.withUnsafeBytes { all in
                        buffer.writeChangeUpsert(
                            offset: change.sequence &+ offsetShift,
                            key: UnsafeRawBufferPointer(rebasing: all[..<change.keyLength]),
                            value: UnsafeRawBufferPointer(rebasing: all[change.keyLength...]),
                            flags: change.flags, deadlineMillis: change.deadline.millis, cas: change.stamp
                        )
                    }
                case .remove:
                    bodyBytes += change.withKeyBytes { buffer.writeChangeRemove(offset: change.sequence &+ offsetShift, key: $0) }
                case .delete:
                    bodyBytes += change.withKeyBytes { buffer.writeChangeDelete(offset: change.sequence &+ offsetShift, key: $0, stamp: change.stamp) }
                case .flushAll:
                    bodyBytes += buffer.writeChangeFlush(offset: change.sequence &+ offsetShift, stamp: change.stamp)
                }
                count += 1
                index += 1
            }
            // An item is at most the item size limit, which tandemd keeps well below a frame.
            try! buffer.finishWireFrame(start, count: count)
            let frame = buffer.readSlice(length: buffer.readableBytes)!
            segments.append(Segment(first: first, last: changes[index - 1].sequence &+ offsetShift, frame: frame))
            buffer = ByteBuffer()
        }
        state.withLock { state in
            state.keep(segments, first: first, last: last, capacity: capacity)
        }
    }

    /// Keeps a `changes` frame received from this node's primary (a backup
    /// records the stream it applies, so that once promoted it can serve it
    /// to a node that followed the same history: Protocol.md 2.2). `body` is
    /// the frame's body; its offsets run from `first` to `last`. Offsets
    /// already held are skipped by whoever is sent the frame.
    public func appendReceived(body: ByteBuffer, first: UInt64, last: UInt64) {
        let recording = state.withLock { state in
            if !state.recording { state.end = max(state.end, last) }
            return state.recording
        }
        guard recording else { return }
        var frame = ByteBuffer()
        frame.reserveCapacity(body.readableBytes + 16)
        let start = frame.beginWireFrame(type: .changes)
        frame.writeImmutableBuffer(body)
        // It arrived as one frame, so it fits one.
        guard (try? frame.finishWireFrame(start)) != nil else { return }
        let segment = Segment(first: first, last: last, frame: frame)
        state.withLock { state in
            guard last > state.end else { return }
            state.keep([segment], first: first, last: last, capacity: capacity)
        }
    }

    /// Whether a backup needing `offset` next can be served from here.
    public func covers(_ offset: UInt64) -> Bool {
        state.withLock { state in
            if offset > state.end { return offset == state.end + 1 }
            return state.firstSegment(holdingFrom: offset) != nil
        }
    }


    /// The frames holding every change from `offset` on (a frame may start
    /// before it: receivers skip offsets they have), and the offset of the
    /// newest change they hold. No frames when `offset` is past the end; nil
    /// when the backlog no longer holds `offset`.
    ///
    /// Called for every release while a backup streams, so it must not walk
    /// the whole backlog (tens of thousands of segments, one per release,
    /// under the lock every writer takes): a binary search finds the first
    /// segment needed, and usually it is the last one.
    public func frames(from offset: UInt64) -> (frames: [ByteBuffer], end: UInt64)? {
        state.withLock { state in
            if offset > state.end { return offset == state.end + 1 ? ([], state.end) : nil }
            guard let first = state.firstSegment(holdingFrom: offset) else { return nil }
            return (state.segments[first...].map(\.frame), state.end)
        }
    }

    /// Keeps every change appended from now on (a backup attached).
    /// Changes appended before are not kept: a backup attaching for the first
    /// time takes a full copy, which starts after this point.
    public func startRecording() {
        state.withLock { $0.recording = true }
    }

    /// Marks `offset` as the end of the stream without changes (a primary that
    /// starts from recovered data: nothing before it can be served).
    public func reset(end: UInt64) {
        state.withLock { state in
            let recording = state.recording
            state = State()
            state.end = end
            state.recording = recording
        }
    }

    /// (oldest offset held, newest offset, bytes).
    public var extent: (first: UInt64, last: UInt64, bytes: Int) {
        state.withLock { state in
            let first = state.head < state.segments.count ? state.segments[state.head].first : state.end + 1
            return (first, state.end, state.bytes)
        }
    }
}
