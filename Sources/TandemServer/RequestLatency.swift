import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How long memcached requests take inside the node, in fixed buckets: the
/// `tandem_request_duration_seconds` histogram. A connection stamps the clock
/// at a read when nothing is held or waiting to be flushed, and at each flush
/// records every request answered since with the time elapsed: two clock
/// readings per read burst, however many requests it carries (measured: about
/// 50 ns a burst, against 5 to 25 microseconds of server CPU per request).
/// A request sent in pieces counts from its last piece.
///
/// One instance per event loop (it lives in that loop's `CommandCounters`),
/// written only by that loop's connections: every update is a relaxed load
/// and a relaxed store of the loop's own slots, i.e. plain moves with no lock
/// and no read-modify-write instruction. A scrape reads every loop's slots
/// and sums them; it may see a burst half recorded (bucket counted, sum not
/// yet), which the next scrape corrects. `stats reset` leaves it alone:
/// Prometheus expects histograms to only grow.
final class RequestLatency: @unchecked Sendable {
    // @unchecked: `slots` is only touched through `Atomic`, allocated once in
    // init and freed in deinit; the pointer itself never changes.

    /// Requests are told apart by whether their burst wrote: writes on a sync
    /// primary wait for the backup, writes on a backup for the primary.
    enum Kind: Int, CaseIterable {
        case read
        case write

        var label: String {
            switch self {
            case .read: return "read"
            case .write: return "write"
            }
        }
    }

    /// Upper bounds of the buckets in nanoseconds (a last, unbounded bucket follows):
    /// from a get served from memory to a write held for the sync timeout (1 s).
    static let boundsNanos: [UInt64] = [
        25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
        100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000,
    ]

    /// Per kind: a slot per bucket (not cumulative) plus the unbounded one, then
    /// the sum in ns. The count is the buckets' total.
    private static let slotsPerKind = boundsNanos.count + 2
    private let slots: UnsafeMutablePointer<Atomic<UInt64>>

    init() {
        let total = Self.slotsPerKind * Kind.allCases.count
        slots = .allocate(capacity: total)
        for index in 0..<total {
            (slots + index).initialize(to: Atomic(0))
        }
    }

    deinit {
        slots.deinitialize(count: Self.slotsPerKind * Kind.allCases.count)
        slots.deallocate()
    }

    /// The monotonic clock in nanoseconds (the vDSO's `clock_gettime`, no system call).
    @inline(__always)
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// Records `requests` requests that each took `nanos`. Only ever called on
    /// the owning event loop (one writer), hence load-then-store.
    @inline(__always)
    func record(nanos: UInt64, requests: Int, kind: Kind) {
        let base = slots + kind.rawValue * Self.slotsPerKind
        var bucket = 0
        let bounds = Self.boundsNanos
        while bucket < bounds.count, nanos > bounds[bucket] { bucket &+= 1 }
        let weight = UInt64(truncatingIfNeeded: requests)
        Self.add(weight, to: base + bucket)
        Self.add(nanos &* weight, to: base + bounds.count + 1)
    }

    @inline(__always)
    private static func add(_ amount: UInt64, to slot: UnsafeMutablePointer<Atomic<UInt64>>) {
        slot.pointee.store(slot.pointee.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    /// One kind's figures, as a scrape sums them.
    struct Snapshot {
        /// Per bucket, not cumulative; the last is the unbounded one.
        var counts: [UInt64]
        var sumNanos: UInt64

        init() {
            counts = Array(repeating: 0, count: RequestLatency.boundsNanos.count + 1)
            sumNanos = 0
        }
    }

    /// Adds this loop's figures for `kind` to `snapshot`.
    func add(_ kind: Kind, into snapshot: inout Snapshot) {
        let base = slots + kind.rawValue * Self.slotsPerKind
        for bucket in 0...Self.boundsNanos.count {
            snapshot.counts[bucket] &+= base[bucket].load(ordering: .relaxed)
        }
        snapshot.sumNanos &+= base[Self.boundsNanos.count + 1].load(ordering: .relaxed)
    }
}
