import Logging
import NIOConcurrencyHelpers
import NIOCore
import SessionPersistence
import SessionStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// State shared by every connection of a node: the store, configuration,
/// counters and the few server-wide settings commands can change.
final class ServerContext: Sendable {
    static let version = "1.6.21-tandem-0.1.0"

    let configuration: ServerConfiguration
    let store: SessionStore
    /// The write-behind, when the node persists.
    let persistence: Persistence?
    let counters: CounterSet
    let logger: Logger
    /// Unix seconds when the node started.
    let startedAt: Int64
    let currentConnections = Synchronization.Atomic<Int>(0)
    let totalConnections = Synchronization.Atomic<UInt64>(0)
    let rejectedConnections = Synchronization.Atomic<UInt64>(0)
    /// memcached's `verbosity`, settable at run time.
    let verbosity: Synchronization.Atomic<Int>
    /// A pending delayed `flush_all`; a newer one replaces it.
    private let pendingFlush = NIOLockedValueBox<Scheduled<Void>?>(nil)

    init(configuration: ServerConfiguration, store: SessionStore, persistence: Persistence?, counters: CounterSet, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.persistence = persistence
        self.counters = counters
        self.logger = logger
        self.startedAt = store.now() / 1000
        self.verbosity = Synchronization.Atomic(configuration.verbosity)
    }

    /// `flush_all [delay]`: now, or at the deadline on `eventLoop`. memcached
    /// invalidates everything stored before the deadline, which is what
    /// flushing at the deadline does.
    func scheduleFlush(delay: Int64, on eventLoop: any EventLoop) {
        let now = store.now()
        let deadline = Deadline.memcached(exptime: delay, now: now)
        pendingFlush.withLockedValue { pending in
            pending?.cancel()
            pending = nil
            guard delay > 0, !deadline.hasPassed(at: now) else {
                store.flushAll()
                return
            }
            let store = self.store
            pending = eventLoop.scheduleTask(in: .milliseconds(deadline.millis - now)) {
                store.flushAll()
            }
        }
    }

    func cancelPendingFlush() {
        pendingFlush.withLockedValue { $0?.cancel() }
    }
}
