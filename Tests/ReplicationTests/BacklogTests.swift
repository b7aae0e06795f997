import Logging
import NIOCore
@testable import Replication
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
            keyLength: key.count, flags: 0, stamp: offset, deadline: .never
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

/// A promoted node's stream continues the history it followed (Protocol.md 2.2).
extension BacklogTests {
    @Suite("History continued across a promotion")
    struct ContinuedHistory {
        func upsert(_ store: SessionStore, _ key: String) {
            Array(key.utf8).withUnsafeBytes { key in
                Array("v".utf8).withUnsafeBytes { value in
                    _ = store.applyUpsert(
                        key, value: value, flags: 0, deadline: .never, cas: store.currentStamp())
                }
            }
        }

        /// A primary whose data forked from `previous` at offset `fork`, its
        /// backlog holding that history's offsets `from...fork` as received.
        func promoted(previous: ReplicationID, fork: UInt64, keptFrom from: UInt64) -> (
            PrimaryReplication, SessionStore
        ) {
            let store = SessionStore(
                configuration: StoreConfiguration(shardCount: 2, recordsChanges: true), clock: ManualClock()
            )
            let feed = ChangeFeed(store: store)
            // The store's own sequence numbers differ from the stream's offsets.
            for index in 0..<7 { upsert(store, "applied\(index)") }
            let kept = Backlog(capacity: 1 << 20)
            kept.startRecording()
            kept.reset(end: from - 1)
            var body = ByteBuffer()
            body.writeInteger(UInt32(fork - from + 1))
            for offset in from...fork {
                _ = body.writeChangeRemove(
                    offset: offset, key: UnsafeRawBufferPointer(start: nil, count: 0))
            }
            kept.appendReceived(body: body, first: from, last: fork)
            let primary = PrimaryReplication(
                store: store, feed: feed, configuration: ReplicationConfiguration(),
                logger: Logger(label: "test"),
                previous: .init(replicationID: previous, forkOffset: fork, backlog: kept)
            )
            return (primary, store)
        }

        @Test(
            "offsets go on from the fork, and the backlog serves the old history's frames before the new ones"
        )
        func offsetsContinue() throws {
            let old = ReplicationID.random()
            let (primary, store) = promoted(previous: old, fork: 100, keptFrom: 91)
            #expect(primary.offset == 100)
            upsert(store, "new")
            primary.feed.pump()
            #expect(primary.offset == 101)
            let (frames, end) = try #require(primary.backlog.frames(from: 95))
            #expect(end == 101)
            #expect(frames.count == 2)
        }

        @Test(
            "the rule: current history up to its end, previous history up to the fork, backlog permitting; past the fork the histories diverged"
        )
        func resumptionRule() {
            let old = ReplicationID.random()
            let (primary, store) = promoted(previous: old, fork: 100, keptFrom: 91)
            upsert(store, "new")
            primary.feed.pump()
            func ask(_ id: ReplicationID, _ offset: UInt64, version3: Bool = true)
                -> PrimaryReplication.Resumption
            {
                primary.resumption(
                    for: Replicate(replicationID: id, offset: offset, epoch: 0), continuingHistories: version3
                )
            }
            #expect(ask(old, 100) == .partialAfterPromotion)
            #expect(ask(old, 90) == .partialAfterPromotion)
            #expect(ask(primary.replicationID, 101) == .partial)
            #expect(ask(primary.replicationID, 100) == .partial)
            // Past the fork: the old primary took changes this node never had.
            guard case .full(let diverged) = ask(old, 101) else {
                Issue.record("past the fork resumed")
                return
            }
            #expect(diverged.contains("diverged"))
            // Before what the kept backlog reaches back to.
            guard case .full(let dropped) = ask(old, 80) else {
                Issue.record("a dropped offset resumed")
                return
            }
            #expect(dropped.contains("backlog"))
            guard case .full = ask(old, 100, version3: false) else {
                Issue.record("a version 2 backup cannot adopt the ID")
                return
            }
            guard case .full = ask(ReplicationID.random(), 50) else {
                Issue.record("another history resumed")
                return
            }
            guard case .full = ask(primary.replicationID, 102) else {
                Issue.record("a position ahead of the stream resumed")
                return
            }
        }
    }
}
