/// An absolute expiry time, in milliseconds since the Unix epoch.
///
/// Deadlines are absolute so that they mean the same thing after a restart and
/// on the other node of a pair. Zero is reserved for "never expires".
public struct Deadline: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Milliseconds since the Unix epoch; `0` means the item never expires.
    public var millis: Int64

    public init(millis: Int64) {
        self.millis = millis
    }

    /// The item never expires.
    public static let never = Deadline(millis: 0)

    /// A deadline that is in the past for every clock reading after the epoch.
    public static let alreadyExpired = Deadline(millis: 1)

    /// The longest relative expiry memcached accepts; larger values are absolute Unix times.
    public static let maximumRelativeSeconds: Int64 = 60 * 60 * 24 * 30

    /// Converts a memcached `exptime` into a deadline:
    /// 0 never; up to 30 days relative to `now`; larger is an absolute Unix time;
    /// negative is already expired.
    public static func memcached(exptime: Int64, now: Int64) -> Deadline {
        if exptime == 0 { return .never }
        if exptime < 0 { return .alreadyExpired }
        if exptime <= maximumRelativeSeconds { return Deadline(millis: now + exptime * 1000) }
        let (absolute, overflow) = exptime.multipliedReportingOverflow(by: 1000)
        return Deadline(millis: overflow ? Int64.max : absolute)
    }

    /// Whether an item with this deadline is expired at `now`.
    @inlinable
    public func hasPassed(at now: Int64) -> Bool {
        millis != 0 && millis <= now
    }

    /// Whole seconds left, rounded up, as memcached reports a TTL; `-1` for `.never`.
    public func remainingSeconds(at now: Int64) -> Int64 {
        if millis == 0 { return -1 }
        let left = millis - now
        if left <= 0 { return 0 }
        return (left + 999) / 1000
    }

    public static func < (lhs: Deadline, rhs: Deadline) -> Bool {
        // `.never` sorts after every real deadline.
        switch (lhs.millis == 0, rhs.millis == 0) {
        case (true, _): return false
        case (false, true): return true
        case (false, false): return lhs.millis < rhs.millis
        }
    }

    public var description: String {
        millis == 0 ? "never" : "\(millis)ms"
    }
}

/// Where the store reads the time. Tests inject a manual clock.
public protocol StoreClock: Sendable {
    /// Wall-clock milliseconds since the Unix epoch.
    func nowMillis() -> Int64
    /// Wall-clock microseconds since the Unix epoch: the resolution writes are
    /// stamped with, so that a client's consecutive writes through the two
    /// nodes of a pair order by time even within one millisecond.
    func nowMicros() -> Int64
}

extension StoreClock {
    public func nowMicros() -> Int64 { nowMillis() &* 1000 }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The system's real-time clock. Wall time, not monotonic: deadlines are absolute
/// Unix times that must agree across restarts and between nodes.
public struct SystemClock: StoreClock {
    public init() {}

    @inlinable
    public func nowMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    @inlinable
    public func nowMicros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }
}

import Synchronization

/// A clock that moves only when told to: store and server tests use it to
/// check expiry without sleeping.
public final class ManualClock: StoreClock {
    private let millis: Atomic<Int64>

    public init(millis: Int64 = 1_700_000_000_000) {
        self.millis = Atomic(millis)
    }

    public func nowMillis() -> Int64 {
        millis.load(ordering: .relaxed)
    }

    /// Moves the clock forward.
    public func advance(millis delta: Int64) {
        millis.wrappingAdd(delta, ordering: .relaxed)
    }

    /// Moves the clock forward by whole seconds.
    public func advance(seconds: Int64) {
        advance(millis: seconds * 1000)
    }
}
