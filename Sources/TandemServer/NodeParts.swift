import Logging
import NIOCore
import NIOPosix
import Replication
import SessionPersistence
import SessionStore
import Synchronization

/// The write-behind: its writer thread commits the change stream into the
/// data directory. Recovery happened before the parts were made (the pair
/// is made from what it found); starting runs the writer.
///
/// The node starts it first and stops it last: every change the other parts
/// acknowledged reaches the file before the process exits.
struct PersistencePart: NodePart {
    let name = "persistence"
    let persistence: Persistence
    let logger: Logger

    func start() async throws {
        persistence.start()
    }

    func stop() async {
        // Commits everything pending (retrying a failing storage for a
        // bounded time), ends the writer thread and releases the directory.
        persistence.stop()
        logger.info("persistence flushed", metadata: ["file": "\(persistence.dataDirectory)"])
    }
}

/// The node's event loops (listeners, connections, the pair's timers and
/// links). Stopping them closes every connection still open, such as
/// replication links and tandemctl's; the node does this just before the
/// write-behind's last commit, so that nothing writes after it.
struct EventLoopsPart: NodePart {
    let name = "event loops"
    let group: MultiThreadedEventLoopGroup

    func start() async throws {}

    func stop() async {
        try? await group.shutdownGracefully()
    }
}

/// `--metrics-port`: /metrics, /health and /live, on an event loop of its own.
///
/// It comes up before the node settles its role, so that /health can tell
/// it is still joining (503) until the memcached port opens.
final class MetricsPart: NodePart {
    let name = "metrics listener"
    private let host: String
    private let port: Int
    private let context: ServerContext
    private let server = Mutex<MetricsServer?>(nil)

    init(host: String, port: Int, context: ServerContext) {
        self.host = host
        self.port = port
        self.context = context
    }

    /// The port bound, once started.
    var boundPort: Int? { server.withLock { $0?.port } }

    func start() async throws {
        let started = try await MetricsServer.start(host: host, port: port, context: context, logger: context.logger)
        server.withLock { $0 = started }
    }

    /// Where the node is, for /health: serving once the memcached port
    /// opens, stopping once it closes.
    func announce(_ phase: MetricsServer.Phase) {
        guard let server = server.withLock({ $0 }) else { return }
        switch phase {
        case .starting: break
        case .serving: server.markServing()
        case .stopping: server.markStopping()
        }
    }

    func stop() async {
        await server.withLock({ $0 })?.stop()
    }
}

/// The node's place in its pair (`PairRole`): settling the role at start,
/// the timers that fail over or check the peer, and the release of the change
/// stream to replication.
///
/// The node starts it once the wire port accepts (the peer compares data
/// with this node over it) and before the memcached port (which serves
/// nothing until the role is settled).
final class PairPart: NodePart {
    let name = "pair"
    private let pair: PairRole
    private let feed: ChangeFeed
    /// The node's wire connections, told to stop taking data writes.
    private let context: ServerContext
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    /// Releases the change stream to replication between the writer's commits.
    private let pump = Mutex<RepeatedTask?>(nil)

    /// How often the change stream is released to replication when no write triggers it
    /// (expiry, eviction, and changes whose predecessor was still being recorded).
    static let pumpInterval = TimeAmount.milliseconds(5)

    /// How long a stopping primary waits for its backup to acknowledge the rest of the stream.
    static let backupCatchUpTimeout = TimeAmount.seconds(2)

    init(pair: PairRole, feed: ChangeFeed, context: ServerContext, group: MultiThreadedEventLoopGroup, logger: Logger) {
        self.pair = pair
        self.feed = feed
        self.context = context
        self.group = group
        self.logger = logger
    }

    func start() async throws {
        let feed = self.feed
        let task = group.next().scheduleRepeatedTask(initialDelay: Self.pumpInterval, delay: Self.pumpInterval) { _ in feed.pump() }
        pump.withLock { $0 = task }
        await pair.join()
        pair.startTimers()
    }

    /// Stops changing roles and following, lets a connected backup receive
    /// what is still on its way (the memcached connections have drained and
    /// the wire port's clients take no more data writes, so no client write
    /// arrives any more), then stops releasing the stream.
    func stop() async {
        pair.stopTimers()
        pair.replica?.stop()
        await context.stopWireDataWrites()
        if let primary = pair.primary {
            // When the backup takes over, it has everything.
            switch await primary.waitForBackupToCatchUp(timeout: Self.backupCatchUpTimeout, on: group.next()) {
            case .noBackup:
                break
            case .caughtUp(let offset):
                logger.info("backup has every change", metadata: ["offset": "\(offset)"])
            case .behind(let acknowledged, let end):
                logger.warning("backup did not catch up before the stop", metadata: [
                    "acknowledged": "\(acknowledged)", "offset": "\(end)",
                    "waited_ms": "\(Self.backupCatchUpTimeout.nanoseconds / 1_000_000)",
                ])
            }
        }
        pump.withLock { $0.take() }?.cancel()
    }
}
