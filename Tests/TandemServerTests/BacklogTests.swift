import NIOCore
import Replication
import SessionStore
import Testing
import WireProtocol

/// The primary's backlog: which frames a backup resuming at an offset gets.
@Suite("Backlog")
struct BacklogTests {
    /// One upsert of a `valueBytes`-byte value at `offset`.
    func change(_ offset: UInt64, valueBytes: Int = 100) -> Change {
        let key = Array("key:\(offset)".utf8)
        return Change(
            kind: .upsert, sequence: offset, storage: key + [UInt8](repeating: 0x61, count: valueBytes),
            keyLength: key.count, flags: 0, cas: offset, deadline: .never
        )
    }

    /// The offsets of the changes in a `changes` frame.
    func offsets(in frame: ByteBuffer) throws -> [UInt64] {
        var buffer = frame
        var decoder = WireFrameDecoder()
        let decoded = try #require(try decoder.decode(buffer: &buffer))
        #expect(buffer.readableBytes == 0)
        guard case .changes(let changes) = try WireMessage(frame: decoded) else {
            Issue.record("not a changes frame")
            return []
        }
        return changes.map(\.offset)
    }

    /// 1,000 releases of one change each (as sync replication makes them).
    func filledBacklog(capacity: Int = 1 << 20) -> Backlog {
        let backlog = Backlog(capacity: capacity)
        backlog.startRecording()
        for offset in UInt64(1)...1000 { backlog.append([change(offset)]) }
        return backlog
    }

    @Test func framesFromAnOffsetStartAtTheSegmentHoldingIt() throws {
        let backlog = filledBacklog()
        for from: UInt64 in [1, 2, 500, 999, 1000] {
            let (frames, end) = try #require(backlog.frames(from: from))
            #expect(end == 1000)
            let sent = try frames.flatMap { try offsets(in: $0) }
            #expect(sent == Array(from...1000))
        }
    }

    @Test func pastTheEndGivesNothingOrNil() throws {
        let backlog = filledBacklog()
        let next = try #require(backlog.frames(from: 1001))
        #expect(next.frames.isEmpty && next.end == 1000)
        #expect(backlog.frames(from: 1002) == nil)
        #expect(backlog.covers(1001))
        #expect(!backlog.covers(1002))
    }

    @Test func batchesSpanningAnOffsetAreSentWhole() throws {
        let backlog = Backlog(capacity: 1 << 20)
        backlog.startRecording()
        backlog.append((1...10).map { change($0) })
        backlog.append((11...20).map { change($0) })
        let (frames, end) = try #require(backlog.frames(from: 15))
        #expect(end == 20)
        // The receiver skips 11...14, which it has.
        #expect(try frames.flatMap { try offsets(in: $0) } == Array(11...20))
    }

    @Test func droppedOffsetsAreNotCovered() throws {
        // Each segment is about 150 bytes: 20 KB keeps the newest hundred or so.
        let backlog = filledBacklog(capacity: 20_000)
        let oldest = backlog.extent.first
        #expect(oldest > 1 && oldest < 1000)
        #expect(backlog.frames(from: 1) == nil)
        #expect(!backlog.covers(oldest - 1))
        #expect(backlog.covers(oldest))
        let sent = try #require(backlog.frames(from: oldest)).frames.flatMap { try offsets(in: $0) }
        #expect(sent == Array(oldest...1000))
    }

    @Test func aSegmentHoldsNoMoreMemoryThanItsChanges() throws {
        // A release of one small change must not pin a large buffer for as
        // long as it stays in the backlog.
        let backlog = filledBacklog()
        let (frames, _) = try #require(backlog.frames(from: 1))
        for frame in frames {
            #expect(frame.storageCapacity <= 2 * frame.readableBytes + 256, "capacity \(frame.storageCapacity) for \(frame.readableBytes) bytes")
        }
    }
}
