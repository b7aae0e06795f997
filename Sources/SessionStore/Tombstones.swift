/// The deletes a shard remembers, so that a write arriving late from the
/// other node of a pair (reconciliation after a failover) cannot bring back a
/// key deleted after that write was made.
///
/// A tombstone is the key and the HLC stamp of its delete. They are kept in
/// insertion order (which is stamp order within a shard) and dropped oldest
/// first once there are too many or they are older than the retention: a
/// reconciliation older than that may resurrect a deleted key, which the
/// retention is chosen to make unlikely (partitions heal in minutes).
struct Tombstones {
    private var stamps: [[UInt8]: UInt64] = [:]
    /// Keys in insertion order with the stamp they had then; an entry whose
    /// stamp no longer matches `stamps` was superseded and is skipped.
    private var order: [(key: [UInt8], stamp: UInt64)] = []
    private var head = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { stamps.count }

    func stamp(of key: UnsafeRawBufferPointer) -> UInt64? {
        stamps[Array(key)]
    }

    mutating func insert(_ key: [UInt8], stamp: UInt64, olderThanDropped cutoff: UInt64) {
        if let existing = stamps[key], existing >= stamp { return }
        stamps[key] = stamp
        order.append((key, stamp))
        while let first = oldest, stamps.count > capacity || first.stamp < cutoff {
            dropOldest()
        }
        if head > 1024, head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    mutating func removeAll() {
        stamps = [:]
        order = []
        head = 0
    }

    private var oldest: (key: [UInt8], stamp: UInt64)? {
        head < order.count ? order[head] : nil
    }

    private mutating func dropOldest() {
        let entry = order[head]
        head += 1
        if stamps[entry.key] == entry.stamp { stamps[entry.key] = nil }
    }

    /// Tombstones whose stamp is above `stamp`.
    func newer(than stamp: UInt64) -> [(key: [UInt8], stamp: UInt64)] {
        stamps.filter { $0.value > stamp }.map { ($0.key, $0.value) }
    }
}

/// Hybrid logical clock stamps: the physical time in microseconds in the
/// high 51 bits, a counter in the low 12. A node's CAS tokens are such stamps,
/// so every version of an item carries the time it was written, ordered
/// across nodes: a node that applies a stamp from its peer never hands out a
/// smaller one afterwards, whatever its own clock says. Stamps stay below
/// 2^63, so they fit SQLite's signed integers as they are.
public enum HybridTimestamp {
    public static let logicalBits: UInt64 = 12

    /// The smallest stamp of a physical microsecond.
    @inline(__always)
    public static func floor(micros: Int64) -> UInt64 {
        UInt64(max(0, micros)) << logicalBits
    }

    /// The smallest stamp of a physical millisecond (also: a duration in stamp units).
    @inline(__always)
    public static func floor(millis: Int64) -> UInt64 {
        floor(micros: millis &* 1000)
    }

    /// The physical milliseconds of a stamp.
    @inline(__always)
    public static func millis(_ stamp: UInt64) -> Int64 {
        Int64(stamp >> logicalBits) / 1000
    }
}
