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
        var deadline: NIODeadline?
    }

    struct State {
        var reached: UInt64 = 0
        var waiters: [Waiter] = []
        /// When the earliest sweep for expired waiters is scheduled (nil: none is).
        var sweepAt: NIODeadline?
    }

    private let state = Mutex(State())

    public init() {}

    /// The highest position reached so far.
    public var reached: UInt64 { state.withLock { $0.reached } }

    /// A future that succeeds once `offset` is reached (at once if it is), or
    /// fails with `.timedOut` after `timeout`.
    ///
    /// Every write of a sync primary waits here, so a wait costs one promise
    /// and no timer of its own: a sweep fails the waiters whose deadline
    /// passed (a timer per wait, armed and cancelled from another event
    /// loop, cost more than the rest of the wait). A wait whose deadline
    /// comes before the next sweep schedules one of its own.
    public func wait(for offset: UInt64, on eventLoop: any EventLoop, timeout: TimeAmount?) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let deadline = timeout.map { eventLoop.now + $0 }
        let (registered, sweep) = state.withLock { state -> (Bool, Bool) in
            guard offset > state.reached else { return (false, false) }
            state.waiters.append(Waiter(offset: offset, promise: promise, deadline: deadline))
            guard let deadline, state.sweepAt.map({ deadline < $0 }) ?? true else { return (true, false) }
            state.sweepAt = deadline
            return (true, true)
        }
        if !registered { promise.succeed() }
        if sweep, let deadline { scheduleSweep(at: deadline, on: eventLoop) }
        return promise.futureResult
    }

    private func scheduleSweep(at deadline: NIODeadline, on eventLoop: any EventLoop) {
        eventLoop.scheduleTask(deadline: deadline) { [self] in sweep(on: eventLoop) }
            .futureResult.whenFailure { [self] _ in
                // A loop that shut down runs no sweep: the next wait schedules one.
                state.withLock { $0.sweepAt = nil }
            }
    }

    /// Fails the waiters whose deadline passed, and sweeps again at the
    /// earliest deadline left (unless a sweep still to come is the earliest:
    /// this one ran for a wait that was since answered, or late).
    private func sweep(on eventLoop: any EventLoop) {
        let now = eventLoop.now
        let (expired, reschedule) = state.withLock { state -> ([Waiter], NIODeadline?) in
            var expired: [Waiter] = []
            var next: NIODeadline?
            state.waiters.removeAll { waiter in
                guard let deadline = waiter.deadline else { return false }
                if deadline <= now {
                    expired.append(waiter)
                    return true
                }
                next = next.map { min($0, deadline) } ?? deadline
                return false
            }
            // Every deadline left is after the earliest sweep to come, if any.
            if let sweepAt = state.sweepAt, sweepAt > now { return (expired, nil) }
            state.sweepAt = next
            return (expired, next)
        }
        for waiter in expired { waiter.promise.fail(Failure.timedOut) }
        if let reschedule { scheduleSweep(at: reschedule, on: eventLoop) }
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
        Self.complete(released, failing: nil)
    }

    /// Sets the position without releasing anyone early (a new history starts).
    public func reset(to offset: UInt64) {
        let dropped = state.withLock { state -> [Waiter] in
            state.reached = offset
            let dropped = state.waiters
            state.waiters = []
            return dropped
        }
        Self.complete(dropped, failing: .cancelled)
    }

    /// Completes every waiter now: succeeded (stop waiting) or failed.
    public func releaseAll(failing: Bool) {
        let all = state.withLock { state -> [Waiter] in
            let all = state.waiters
            state.waiters = []
            return all
        }
        Self.complete(all, failing: failing ? .cancelled : nil)
    }

    /// Succeeds (or fails) the waiters' promises with one task per event
    /// loop rather than one per promise: an acknowledgement that releases
    /// the writes of fifty connections wakes each loop once.
    private static func complete(_ waiters: [Waiter], failing failure: Failure?) {
        guard !waiters.isEmpty else { return }
        var groups: [(loop: any EventLoop, promises: [EventLoopPromise<Void>])] = []
        for waiter in waiters {
            let loop = waiter.promise.futureResult.eventLoop
            if let index = groups.firstIndex(where: { $0.loop === loop }) {
                groups[index].promises.append(waiter.promise)
            } else {
                groups.append((loop, [waiter.promise]))
            }
        }
        for (loop, promises) in groups {
            let resolve = {
                for promise in promises {
                    if let failure { promise.fail(failure) } else { promise.succeed() }
                }
            }
            if loop.inEventLoop { resolve() } else { loop.execute(resolve) }
        }
    }
}
