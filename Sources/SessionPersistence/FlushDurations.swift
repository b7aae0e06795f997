/// How long the writer's successful commits took, in fixed buckets, for the
/// `tandem_persistence_flush_duration_seconds` histogram.
///
/// The writer records one commit per flush interval (50 ms by default) under
/// the lock it already takes to publish its statistics, so keeping a
/// histogram costs two clock readings per commit and nothing on the event loops.
public struct FlushDurations: Sendable, Equatable {
    /// Upper bounds of the buckets, in seconds (a last, unbounded bucket follows).
    /// From a commit of a few keys on a fast disk (well under a millisecond)
    /// to a stalled one the backpressure bound (4 flush intervals) cares about.
    public static let bounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    /// Commits per bucket, not cumulative; one more than `bounds` (the last counts those above every bound).
    public private(set) var counts: [UInt64]
    /// The total of every recorded duration, in seconds.
    public private(set) var sum: Double = 0
    /// Commits recorded.
    public private(set) var count: UInt64 = 0

    public init() {
        counts = Array(repeating: 0, count: Self.bounds.count + 1)
    }

    public mutating func record(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) + Double(attoseconds) / 1e18
        let index = Self.bounds.firstIndex { value <= $0 } ?? Self.bounds.count
        counts[index] &+= 1
        sum += value
        count &+= 1
    }
}
