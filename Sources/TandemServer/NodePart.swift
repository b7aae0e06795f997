import ServiceLifecycle
import Synchronization

/// One part of a node (persistence, a listener, the pair): started in the
/// node's order, after the part before it, and stopped in the reverse order.
///
/// `start` returns once the part does its job (a port accepts connections,
/// the writer runs) or throws; a part that threw is not stopped, so `start`
/// leaves nothing behind when it fails. `stop` undoes a successful `start`.
protocol NodePart: Sendable {
    /// How logs and the node's service group name the part.
    var name: String { get }
    func start() async throws
    func stop() async
}

/// Whether a part of the node has started: the part after it waits here
/// before it starts itself.
final class StartGate: Sendable {
    /// How a part's start ended.
    enum Outcome: Sendable, Equatable {
        /// The part runs: the next one may start.
        case started
        /// The part did not start (it failed, or a part before it did, or the
        /// node was stopped first): the parts after it do not start either.
        case abandoned
    }

    private struct State {
        /// How the start ended, once it has.
        var outcome: Outcome?
        /// Who waits for the outcome, by the number of their wait.
        var waiters: [Int: CheckedContinuation<Outcome?, Never>] = [:]
        /// Waits cancelled before they were registered.
        var cancelled: Set<Int> = []
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    /// Records how the part's start ended (the first call counts) and wakes
    /// everyone waiting.
    func settle(_ outcome: Outcome) {
        let waiters = state.withLock { state -> [CheckedContinuation<Outcome?, Never>] in
            guard state.outcome == nil else { return [] }
            state.outcome = outcome
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: outcome) }
    }

    /// Waits until the part's start has ended; nil when the waiting task is
    /// cancelled first.
    func wait() async -> Outcome? {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Outcome?, Never>) in
                let answer = state.withLock { state -> Outcome?? in
                    if let outcome = state.outcome { return .some(outcome) }
                    if state.cancelled.remove(id) != nil { return .some(nil) }
                    state.waiters[id] = continuation
                    return .none
                }
                if let answer { continuation.resume(returning: answer) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Outcome?, Never>? in
                guard state.outcome == nil else { return nil }
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume(returning: nil)
        }
    }
}

/// Runs one part of a node as a service of the node's `ServiceGroup`.
///
/// The group runs every service at once and stops them in the reverse of
/// their order; this service adds the ordered start: it waits for the part
/// before it (`after`) to start, starts its own part, and opens its gate
/// (`started`) for the part after it. When the part before it does not start,
/// this one does not either; it then only waits for its turn to stop, so the
/// group still stops the parts that did start in reverse order. Stopping is
/// `stop()` at this service's turn: there is nothing else to undo.
struct NodePartService: Service, CustomStringConvertible {
    let part: any NodePart
    /// The previous part's gate; nil for the first part.
    let after: StartGate?
    /// This part's gate.
    let started: StartGate

    var description: String { part.name }

    func run() async throws {
        if let after {
            // A stop requested meanwhile ends the wait: a part that is asked
            // to stop before it started never starts.
            let outcome = await cancelWhenGracefulShutdown { await after.wait() }
            guard outcome == .started else {
                started.settle(.abandoned)
                try? await gracefulShutdown()
                return
            }
        }
        do {
            try await part.start()
        } catch {
            // The group stops the parts before this one, last started first,
            // and rethrows this error from `run`.
            started.settle(.abandoned)
            throw error
        }
        started.settle(.started)
        // Cancellation (rather than a graceful stop) ends this wait too: the
        // part is stopped either way.
        try? await gracefulShutdown()
        await part.stop()
    }
}
