import Logging
import NIOConcurrencyHelpers
import MemcacheProtocol
import NIOCore
import Replication
import SessionPersistence
import SessionStore
import Synchronization
import WireProtocol

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
    /// The node's role in its pair over time; nil for a standalone node.
    let pair: PairRole?
    /// Writes this node forwarded to the primary (backup) or ran for the backup (primary).
    let forwardedWrites = Synchronization.Atomic<UInt64>(0)
    /// Each event loop's counters, for dispatchers created outside a memcached connection.
    let countersByLoop: [ObjectIdentifier: CommandCounters]
    let counters: CounterSet
    let logger: Logger
    /// Unix seconds when the node started.
    let startedAt: Int64
    let currentConnections = Synchronization.Atomic<Int>(0)
    let totalConnections = Synchronization.Atomic<UInt64>(0)
    let rejectedConnections = Synchronization.Atomic<UInt64>(0)
    /// Wire connections streaming changes (`tandemctl watch`).
    let watchers = Synchronization.Atomic<Int>(0)
    /// The port actually bound (the configured one may be 0).
    let boundPort = Synchronization.Atomic<Int>(0)
    /// memcached's `verbosity`, settable at run time.
    let verbosity: Synchronization.Atomic<Int>
    /// Open wire connections, told when the node stops (`DrainRequest`) so
    /// that they stop taking data writes before the backup's last catch-up.
    let wireConnections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    /// A pending delayed `flush_all`; a newer one replaces it.
    private let pendingFlush = NIOLockedValueBox<Scheduled<Void>?>(nil)

    init(
        configuration: ServerConfiguration, store: SessionStore, persistence: Persistence?,
        pair: PairRole?, countersByLoop: [ObjectIdentifier: CommandCounters], logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.persistence = persistence
        self.pair = pair
        self.countersByLoop = countersByLoop
        self.counters = CounterSet(perLoop: Array(countersByLoop.values))
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

    /// Tells every open wire connection to stop taking data writes (from now
    /// on they are answered `unavailable`: not run). Returns once each
    /// connection has taken it in, so that every data write this node
    /// acknowledges from then on was already in the change stream.
    func stopWireDataWrites() async {
        let open = wireConnections.withLockedValue { Array($0.values) }
        for channel in open {
            try? await channel.eventLoop.submit {
                channel.pipeline.fireUserInboundEventTriggered(DrainRequest())
            }.get()
        }
    }
}

extension ServerContext {
    /// Set while this node is the primary: its history, backlog and connected backup.
    var primary: PrimaryReplication? { pair?.primary }

    /// Set while this node is a backup: its link to the primary.
    var replica: ReplicaClient? { pair?.replica }

    /// The node's role now (a standalone node is a primary of its own).
    var role: NodeRole { pair?.nodeRole ?? .primary }

    /// The node's name in the pair (`--node-name`, or the memcached address).
    var nodeName: String {
        if let pair { return pair.nodeName() }
        return "\(configuration.host):\(boundPort.load(ordering: .relaxed))"
    }

    var decoderLimits: MemcacheDecoderLimits {
        MemcacheDecoderLimits(maxItemSize: configuration.store.maxItemSize)
    }

    /// A dispatcher for requests that arrive outside a memcached connection (forwarded writes).
    func dispatcher(on eventLoop: any EventLoop) -> Dispatcher {
        Dispatcher(context: self, counters: countersByLoop[ObjectIdentifier(eventLoop)] ?? CommandCounters(), eventLoop: eventLoop)
    }

    func countForwardedWrite() {
        forwardedWrites.wrappingAdd(1, ordering: .relaxed)
    }

    /// Everything `stats` reports, for the wire protocol's status and stats requests.
    func properties() -> [(String, String)] {
        generalStats()
    }
}

