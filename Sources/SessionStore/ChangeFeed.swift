import Synchronization

/// Something that hands out the change stream in order: the store itself,
/// or a subscription of a `ChangeFeed`.
public protocol ChangeSource: Sendable {
    /// Takes the changes available since the last call, in sequence order.
    func takeChanges() -> [Change]
    /// Changes recorded but not yet taken through this source.
    var pendingChanges: Int { get }
}

extension SessionStore: ChangeSource {}

/// Releases the store's change stream in strict sequence order, without gaps,
/// to several consumers: pulled by persistence, pushed to replication.
///
/// Shards are drained one after another, so a batch may hold sequence 101
/// while 100 is still in a shard drained before it was recorded. The feed
/// holds such changes back until the gap is filled (by the next pump), so
/// every consumer sees offsets 1, 2, 3, … in order; the replication offsets
/// rest on this.
public final class ChangeFeed: Sendable {
    /// A consumer that pulls (persistence).
    public final class Subscription: ChangeSource, Sendable {
        let feed: ChangeFeed
        let index: Int
        /// The length of this subscription's queue, kept beside it so that
        /// `pendingChanges` takes no lock: every writing connection asks
        /// after each burst, and the feed's lock is held through a pump.
        let queued: QueueLength

        init(feed: ChangeFeed, index: Int, queued: QueueLength) {
            self.feed = feed
            self.index = index
            self.queued = queued
        }

        public func takeChanges() -> [Change] {
            feed.pump()
            return feed.state.withLock { state in
                var taken: [Change] = []
                swap(&taken, &state.queues[index])
                queued.value.store(0, ordering: .relaxed)
                return taken
            }
        }

        /// A momentary figure (changes move between the store, the held-back
        /// list and the queue while it is read): for pacing, not accounting.
        public var pendingChanges: Int {
            feed.store.pendingChanges + feed.heldBackCount.load(ordering: .relaxed) + queued.value.load(ordering: .relaxed)
        }
    }

    struct State {
        /// Changes taken from the store but not yet released (waiting for a gap to fill).
        var heldBack: [Change] = []
        /// The sequence number of the last released change.
        var lastReleased: UInt64 = 0
        /// Released changes not yet pulled, one queue per pull subscription.
        var queues: [[Change]] = []
        /// The length of each queue, shared with its subscription.
        var queueLengths: [QueueLength] = []
        /// Called with every released batch, in order, under the feed's lock.
        var pushSubscribers: [Int: @Sendable ([Change]) -> Void] = [:]
        var nextToken = 0
    }

    let store: SessionStore
    let state = Mutex(State())
    /// A queue's length, readable without the feed's lock.
    final class QueueLength: Sendable {
        let value = Atomic<Int>(0)
    }

    /// `state.heldBack.count`, readable without the lock.
    let heldBackCount = Atomic<Int>(0)

    public init(store: SessionStore) {
        precondition(store.configuration.recordsChanges, "a change feed needs a store that records changes")
        self.store = store
    }

    /// A new pull subscription; it receives changes released from now on.
    public func subscribe() -> Subscription {
        state.withLock { state in
            let queued = QueueLength()
            state.queues.append([])
            state.queueLengths.append(queued)
            return Subscription(feed: self, index: state.queues.count - 1, queued: queued)
        }
    }

    /// Calls `handler` with every batch released from now on, in order. It runs
    /// under the feed's lock: it must only hand the batch on, not block.
    /// Returns a token for `unsubscribe(_:)`.
    @discardableResult
    public func subscribe(push handler: @escaping @Sendable ([Change]) -> Void) -> Int {
        state.withLock { state in
            state.nextToken += 1
            state.pushSubscribers[state.nextToken] = handler
            return state.nextToken
        }
    }

    /// Stops calling a push subscriber.
    public func unsubscribe(_ token: Int) {
        _ = state.withLock { $0.pushSubscribers.removeValue(forKey: token) }
    }

    /// The sequence number of the last change released to consumers.
    public var lastReleased: UInt64 {
        state.withLock { $0.lastReleased }
    }

    /// Takes the store's new changes and releases the in-order prefix to every
    /// consumer. Safe to call from any thread; returns how many were released.
    @discardableResult
    public func pump() -> Int {
        state.withLock { state in
            let taken = store.takeChanges()
            if taken.isEmpty && state.heldBack.isEmpty { return 0 }
            var candidates = state.heldBack
            if candidates.isEmpty {
                candidates = taken
            } else {
                candidates += taken
                candidates.sort { $0.sequence < $1.sequence }
            }
            var released: [Change] = []
            var next = state.lastReleased + 1
            var index = 0
            while index < candidates.count {
                let change = candidates[index]
                if change.sequence < next {
                    // The other shards' copies of a flush_all already released.
                    index += 1
                    continue
                }
                guard change.sequence == next else { break }
                released.append(change)
                next += 1
                index += 1
            }
            state.heldBack = Array(candidates[index...])
            heldBackCount.store(state.heldBack.count, ordering: .relaxed)
            guard !released.isEmpty else { return 0 }
            state.lastReleased = next - 1
            for queue in state.queues.indices {
                state.queues[queue] += released
                state.queueLengths[queue].value.store(state.queues[queue].count, ordering: .relaxed)
            }
            for subscriber in state.pushSubscribers.values { subscriber(released) }
            return released.count
        }
    }
}
