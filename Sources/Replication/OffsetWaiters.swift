import NIOCore
import Synchronization

/// Futures that complete once a stream position is reached: writes waiting
/// for the backup's acknowledgement on a primary, forwarded replies waiting
/// for the stream to be applied on a backup.
public final class OffsetWaiters: Sendable {
    /// Why a wait ended without the position being reached.
    public enum Failure: Error, Sendable {
        case timedOut
        case cancelled
    }

    struct Waiter {
        var offset: UInt64
        var promise: EventLoopPromise<Void>
        var timeout: Scheduled<Void>?
    }

    struct State {
        var reached: UInt64 = 0
        var waiters: [Waiter] = []
    }

    private let state = Mutex(State())

    public init() {}

    /// The highest position reached so far.
    public var reached: UInt64 { state.withLock { $0.reached } }

    /// A future that succeeds once `offset` is reached (at once if it is), or
    /// fails with `.timedOut` after `timeout`.
    public func wait(for offset: UInt64, on eventLoop: any EventLoop, timeout: TimeAmount?) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let registered = state.withLock { state -> Bool in
            guard offset > state.reached else { return false }
            var waiter = Waiter(offset: offset, promise: promise, timeout: nil)
            if let timeout {
                waiter.timeout = eventLoop.scheduleTask(in: timeout) { promise.fail(Failure.timedOut) }
            }
            state.waiters.append(waiter)
            return true
        }
        if !registered { promise.succeed() }
        return promise.futureResult
    }

    /// Records progress and releases the waiters it satisfies.
    public func reach(_ offset: UInt64) {
        let released = state.withLock { state -> [Waiter] in
            guard offset > state.reached else { return [] }
            state.reached = offset
            var released: [Waiter] = []
            state.waiters.removeAll { waiter in
                guard waiter.offset <= offset else { return false }
                released.append(waiter)
                return true
            }
            return released
        }
        for waiter in released {
            waiter.timeout?.cancel()
            waiter.promise.succeed()
        }
    }

    /// Sets the position without releasing anyone early (a new history starts).
    public func reset(to offset: UInt64) {
        let dropped = state.withLock { state -> [Waiter] in
            state.reached = offset
            let dropped = state.waiters
            state.waiters = []
            return dropped
        }
        for waiter in dropped {
            waiter.timeout?.cancel()
            waiter.promise.fail(Failure.cancelled)
        }
    }

    /// Completes every waiter now: succeeded (stop waiting) or failed.
    public func releaseAll(failing: Bool) {
        let all = state.withLock { state -> [Waiter] in
            let all = state.waiters
            state.waiters = []
            return all
        }
        for waiter in all {
            waiter.timeout?.cancel()
            if failing { waiter.promise.fail(Failure.cancelled) } else { waiter.promise.succeed() }
        }
    }
}
