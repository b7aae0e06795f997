import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import SessionStore
import Synchronization

/// How a node persists its items.
public struct PersistenceConfiguration: Sendable {
    /// Where the database and lock file live.
    public var dataDirectory: String
    /// How often the writer commits a batch, in milliseconds: the most a
    /// `kill -9` can lose.
    public var flushIntervalMillis: Int
    /// Past this many changes waiting for the writer, connections that write
    /// are paused until it catches up (backpressure instead of unbounded memory).
    public var maxPendingChanges: Int
    /// When the oldest uncommitted change is older than this, connections that
    /// write are paused until the writer catches up: under a write load SQLite
    /// cannot keep up with, this (not the flush interval) bounds what a
    /// `kill -9` can lose. Storage failures are exempt: the node keeps serving.
    public var maxLagMillis: Int
    /// The writer commits early once this many changes are waiting.
    public var earlyFlushThreshold: Int
    /// A log segment is sealed once its rows hold this many bytes (tests use tiny ones).
    public var segmentBytes: Int = 16 << 20
    /// Compaction runs while the log's rows exceed this multiple of the live
    /// bytes: 1.8 keeps the file within about 2× the live data (docs/storage.md).
    public var compactionRatio: Double = 1.8
    /// At most this many rows are re-appended by compaction per commit, so
    /// that no commit grows long however large a segment is.
    public var compactionRowsPerCommit: Int = 1000
    /// Threads reading values that are not in RAM back from the log.
    public var readerThreads: Int = 2
    /// The live data the log may hold (`--disk-limit`); past it the least
    /// recently used items are evicted (or, without evictions, new data is
    /// refused). The log's file stays within about twice this.
    public var diskLimit: DiskLimit = .automatic

    public enum DiskLimit: Sendable, Equatable {
        /// Half of what the file system offers at start: its free space plus
        /// the database file's own size.
        case automatic
        case bytes(Int)
        case unlimited
    }

    public init(
        dataDirectory: String, flushIntervalMillis: Int = 50, maxPendingChanges: Int = 200_000, earlyFlushThreshold: Int = 20_000,
        maxLagMillis: Int? = nil
    ) {
        self.dataDirectory = dataDirectory
        self.flushIntervalMillis = flushIntervalMillis
        self.maxLagMillis = maxLagMillis ?? max(4 * flushIntervalMillis, 100)
        self.maxPendingChanges = maxPendingChanges
        self.earlyFlushThreshold = earlyFlushThreshold
    }
}

/// A value of the database's meta table (replication position, epoch, …).
public enum MetaValue: Sendable, Equatable {
    case integer(Int64)
    case blob([UInt8])
}

/// What recovery loaded at start.
public struct RecoveryReport: Sendable {
    public var items: Int
    public var seconds: Double
}

/// Figures for `stats`.
public struct PersistenceStatistics: Sendable {
    /// Changes not yet committed (waiting in the store or in a failed batch).
    public var pending: Int = 0
    /// Failed commit attempts since start.
    public var errors: UInt64 = 0
    /// The most recent error, if any commit has failed.
    public var lastError: String?
    /// Successful commits.
    public var flushes: UInt64 = 0
    /// Distinct keys written by the last successful commit.
    public var lastBatch: Int = 0
    /// Upper bound on the age of the oldest uncommitted change, in milliseconds.
    public var lagMillis: Int64 = 0
    /// Whether the last commit attempt failed (the node then serves from memory and retries).
    public var failing = false
    /// How long the successful commits took.
    public var flushDurations = FlushDurations()
    public var recovery = RecoveryReport(items: 0, seconds: 0)
    /// The log's segment tables, their rows' bytes, and the bytes of rows
    /// still their key's newest version.
    public var segments = 0
    public var logBytes = 0
    public var liveBytes = 0
    /// Segments dropped by compaction since start.
    public var compactions: UInt64 = 0
    /// The live bytes the log may hold (nil: no limit), and whether the
    /// last commit found them over it.
    public var diskLimit: Int?
    public var diskFull = false
}

/// Write-behind persistence of a store into SQLite, and recovery from it.
///
/// A dedicated writer thread (never an event loop) takes the store's change
/// stream every flush interval, keeps only the newest change per key, and
/// commits the batch in one transaction. A failed batch is kept and retried;
/// changes are never dropped while the process lives.
public final class Persistence: Sendable {
    public let configuration: PersistenceConfiguration
    public let recovery: RecoveryReport
    /// The meta table as it was at start (replication position, epoch, …).
    public let recoveredMeta: [String: MetaValue]
    private let directory: DataDirectory
    private let writer: Writer
    private let store: SessionStore
    /// Reads the values of cold items (not in RAM) back from the log.
    public let values: ValueReader

    /// The values recovery left in the log to be read after the port opens.
    private let warmUp: WarmUp?
    private let warming = Atomic<Bool>(false)

    /// Whether the values recovery left in the log are still being read into RAM.
    public var isWarmingUp: Bool { warming.load(ordering: .relaxed) }
    private let logger: Logger

    private init(
        configuration: PersistenceConfiguration, recovery: RecoveryReport, recoveredMeta: [String: MetaValue], directory: DataDirectory,
        writer: Writer, store: SessionStore, values: ValueReader, warmUp: WarmUp?, logger: Logger
    ) {
        self.warmUp = warmUp
        self.logger = logger
        self.configuration = configuration
        self.recovery = recovery
        self.recoveredMeta = recoveredMeta
        self.directory = directory
        self.writer = writer
        self.store = store
        self.values = values
    }

    /// Opens the data directory, loads every unexpired item into `store`
    /// (which must record changes), and prepares the writer, which will take
    /// the change stream from `source` (the store itself unless given). Call
    /// `start()` next.
    public static func open(
        configuration: PersistenceConfiguration, store: SessionStore, source: (any ChangeSource)? = nil, logger: Logger
    ) throws(PersistenceError) -> Persistence {
        precondition(store.configuration.recordsChanges, "a persisted store must record changes")
        let directory = try DataDirectory(path: configuration.dataDirectory)
        let database = try ItemDatabase(path: directory.databasePath, segmentBytes: configuration.segmentBytes, logger: logger)
        let meta: [String: MetaValue]
        do {
            meta = try database.allMeta()
        } catch {
            throw .unreadable(path: database.path, error: error)
        }
        let (report, warmUp) = try recover(database: database, meta: meta, into: store, logger: logger)
        let segments = SegmentDirectory()
        let diskLimit = Self.resolve(configuration.diskLimit, directory: directory.path, database: database.path)
        if let diskLimit {
            logger.info("disk budget for live data", metadata: [
                "bytes": "\(diskLimit)", "directory": "\(directory.path)",
                "source": configuration.diskLimit == .automatic ? "half of the free space and the file, checked again every 10 s" : "--disk-limit",
            ])
        }
        let writer = Writer(
            database: database, store: store, source: source ?? store, configuration: configuration,
            logger: logger, recovery: report, segments: segments, diskLimit: diskLimit
        )
        let values = ValueReader(path: database.path, directory: segments, threads: configuration.readerThreads)
        return Persistence(
            configuration: configuration, recovery: report, recoveredMeta: meta, directory: directory, writer: writer, store: store,
            values: values, warmUp: warmUp, logger: logger
        )
    }

    /// Values to store in the meta table with every commit. The writer reads
    /// them just before it takes a batch, so they describe the store at or
    /// before the changes that commit with them (a replication offset saved
    /// this way is never ahead of the items saved).
    public func setMetaProvider(_ provider: @escaping @Sendable () -> [String: MetaValue]) {
        writer.setMetaProvider(provider)
    }

    /// Values recovery left in the log, to be read into RAM in the background.
    struct WarmUp: Sendable {
        let shape: ItemDatabase.LogShape
    }

    private static func recover(
        database: ItemDatabase, meta: [String: MetaValue], into store: SessionStore, logger: Logger
    ) throws(PersistenceError) -> (RecoveryReport, WarmUp?) {
        let started = ContinuousClock.now
        let now = store.now()
        do {
            let total = database.rowCount
            logger.info("recovering items", metadata: ["rows": "\(total)", "segments": "\(database.segments.count)", "file": "\(database.path)"])
            let progress = RecoveryProgress()
            var warmUp: WarmUp?
            if store.configuration.valuesLeaveRAM {
                // Every header, oldest row first, straight into the store,
                // cold: a newer row replaces an older one, a tombstone
                // removes it. The values are read after the port opens.
                try recoverHeaders(database: database, into: store, now: now, progress: progress, started: started, logger: logger)
                warmUp = WarmUp(shape: database.logShape)
            } else {
                try recoverWithValues(database: database, into: store, now: now, progress: progress, started: started, logger: logger)
            }
            var highestCas = progress.totals.highestCas
            let read = Int(total)
            let loaded = store.statistics().currentItems
            // Deletes the node remembers, and the last flush_all's stamp: a
            // peer's older versions of those keys must not come back.
            let cutoff = Self.tombstoneCutoff(now)
            try database.deleteTombstones(below: cutoff)
            try database.forEachTombstone(from: cutoff) { key, stamp in
                store.restoreTombstone(key, stamp: stamp)
                highestCas = max(highestCas, stamp)
            }
            if case .integer(let flushStamp)? = meta["flush_stamp"] {
                store.restoreFlushStamp(UInt64(bitPattern: flushStamp))
                highestCas = max(highestCas, UInt64(bitPattern: flushStamp))
            }
            // Every shard's next CAS must be above every recovered one, not only its own.
            store.raiseCas(above: highestCas)
            let seconds = Self.seconds(ContinuousClock.now - started)
            logger.info("recovery done", metadata: [
                "items": "\(loaded)", "rows": "\(read)", "seconds": "\(String(format: "%.3f", seconds))",
                "rows_per_second": "\(Int(Double(read) / max(seconds, 0.001)))",
            ])
            return (RecoveryReport(items: loaded, seconds: seconds), warmUp)
        } catch {
            throw .unreadable(path: database.path, error: error)
        }
    }

    /// Recovery when values stay in the log: one pass over the headers.
    private static func recoverHeaders(
        database: ItemDatabase, into store: SessionStore, now: Int64, progress: RecoveryProgress, started: ContinuousClock.Instant,
        logger: Logger
    ) throws(SQLiteError) {
        let total = database.rowCount
        store.reserve(items: total)
        var headersSeen = 0
        try database.forEachHeader { header in
            headersSeen += 1
            if let length = header.valueLength {
                store.restoreCold(
                    header.key, flags: header.flags, deadline: Deadline(millis: header.deadline), cas: header.cas,
                    seq: header.seq, length: UInt32(truncatingIfNeeded: length)
                )
            } else {
                store.forgetRestored(header.key)
            }
            if progress.loaded(cas: header.cas) {
                logger.info("recovery progress", metadata: [
                    "rows": "\(headersSeen)", "of": "\(total)", "percent": "\(total == 0 ? 100 : min(100, headersSeen * 100 / total))",
                    "rows_per_second": "\(Int(Double(headersSeen) / max(Self.seconds(ContinuousClock.now - started), 0.001)))",
                ])
            }
        }
        let statistics = store.statistics()
        let headerBytes = statistics.bytes
        if headerBytes > store.configuration.memoryLimit / 2 {
            logger.warning("the items' headers alone take more than half of the memory limit; raise -m, or items will be evicted", metadata: [
                "headers_bytes": "\(headerBytes)", "memory_limit": "\(store.configuration.memoryLimit)", "items": "\(statistics.currentItems)",
            ])
        }
    }

    /// Recovery with every value in RAM (a store whose values may not leave
    /// it): the newest row of each key from the headers, then only those
    /// rows' values, from several threads, so no value is copied into memory
    /// to be replaced a moment later.
    private static func recoverWithValues(
        database: ItemDatabase, into store: SessionStore, now: Int64, progress: RecoveryProgress, started: ContinuousClock.Instant,
        logger: Logger
    ) throws(SQLiteError) {
        let newest = try database.newestRows()
        logger.info("recovery: newest rows found", metadata: [
            "keys": "\(newest.count)", "seconds": "\(String(format: "%.3f", Self.seconds(ContinuousClock.now - started)))",
        ])
        store.reserve(items: newest.count)
        // A newest row that has expired loads nothing, but its stamp stays
        // as a tombstone (`SessionStore.forgetExpired`).
        if store.configuration.remembersExpiries {
            for (key, header) in newest where header.valueLength != nil && header.deadline != 0 && header.deadline <= now {
                key.withUnsafeBytes { store.forgetExpired($0, stamp: header.cas) }
            }
        }
        let load = newest.mapValues(\.seq)
        let parts = load.count >= Self.parallelRecoveryKeys ? ProcessInfo.processInfo.activeProcessorCount : 1
        try database.forEachNewestRow(load, now: now, parts: parts) { seq, key, value, flags, deadline, cas in
            store.restore(key, value: value, flags: flags, deadline: deadline, cas: cas, seq: seq)
            if progress.loaded(cas: cas) {
                let loaded = progress.totals.loaded
                let elapsed = Self.seconds(ContinuousClock.now - started)
                logger.info("recovery progress", metadata: [
                    "items": "\(loaded)", "of": "\(newest.count)",
                    "percent": "\(newest.isEmpty ? 100 : min(100, loaded * 100 / newest.count))",
                    "items_per_second": "\(Int(Double(loaded) / max(elapsed, 0.001)))",
                ])
            }
        }
    }

    /// The disk budget in bytes of live rows, nil for none.
    static func resolve(_ limit: PersistenceConfiguration.DiskLimit, directory: String, database: String) -> Int? {
        switch limit {
        case .unlimited:
            return nil
        case .bytes(let bytes):
            return bytes
        case .automatic:
            var info = statvfs()
            guard statvfs(directory, &info) == 0 else { return nil }
            let free = Int(info.f_bavail) &* Int(info.f_frsize)
            var file = stat()
            let own = stat(database, &file) == 0 ? Int(file.st_size) : 0
            // The log's file may reach twice its live rows: half fits.
            return (free + own) / 2
        }
    }

    /// Below this many keys one thread recovers as fast as several start.
    static let parallelRecoveryKeys = 50_000

    /// Tombstones stamped below this, at `now`, are past the retention.
    static func tombstoneCutoff(_ now: Int64) -> UInt64 {
        HybridTimestamp.floor(millis: now - SessionStore.tombstoneRetentionMillis)
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// Starts the writer thread.
    public func start() {
        writer.start()
        values.start()
        if let warmUp { startWarmUp(warmUp) }
    }

    /// Reads the values recovery left in the log into RAM, newest row first,
    /// on a thread of its own while the node serves, until one does not fit
    /// in nine tenths of `-m`: each is installed only if its item is still
    /// cold with that version (older rows of a key find it warm or changed)
    /// and there is room without evicting anything. A segment compaction
    /// dropped meanwhile ends it early; those values are read when asked for.
    private func startWarmUp(_ warmUp: WarmUp) {
        let (store, logger) = (self.store, self.logger)
        warming.store(true, ordering: .relaxed)
        let thread = Thread { [self] in
            defer { warming.store(false, ordering: .relaxed) }
            // At most 15 bytes: Linux refuses a longer thread name.
            Thread.current.name = "tandem-warmup"
            let started = ContinuousClock.now
            let installed = Atomic<Int>(0)
            let room = store.configuration.memoryLimit / 10 * 9
            do {
                var used = store.statistics().bytes
                try ItemDatabase.forEachValueNewestFirst(in: warmUp.shape) { key, value, cas in
                    // Checked by what was installed, not by asking every shard each time.
                    guard used + value.count <= room else { return false }
                    if store.install(key, value: value, cas: cas) {
                        installed.wrappingAdd(1, ordering: .relaxed)
                        used += value.count
                    }
                    return true
                }
            } catch {
                logger.notice("reading values into memory stopped early; the rest are read when asked for", metadata: ["error": "\(error)"])
            }
            logger.info("values read into memory after recovery", metadata: [
                "values": "\(installed.load(ordering: .relaxed))", "cold_items": "\(store.statistics().coldItems)",
                "seconds": "\(String(format: "%.3f", Self.seconds(ContinuousClock.now - started)))",
            ])
        }
        thread.start()
    }

    /// Commits everything pending and stops the writer. Returns once done
    /// (or once storage has kept failing past the stop timeout, which is logged).
    public func stop() {
        writer.stop()
        values.stop()
        directory.release()
    }

    /// Asks the writer to commit now rather than at the end of its interval.
    public func wake() {
        writer.wake()
    }

    /// Whether the writer lags, so writing connections should pause: the
    /// oldest uncommitted change is older than the lag bound, or too many
    /// changes wait. Never
    /// while storage is failing: then the node serves from memory.
    public var writerLags: Bool {
        guard !writer.failing.load(ordering: .relaxed) else { return false }
        let pending = writer.source.pendingChanges
        guard pending > 0 else { return false }
        if pending > configuration.maxPendingChanges { return true }
        return store.now() - writer.lastCommittedTake.load(ordering: .relaxed) > Int64(configuration.maxLagMillis)
    }

    /// Whether commits are failing (storage fault): nothing gets committed
    /// until it recovers, so nothing should wait for a commit meanwhile.
    public var isFailing: Bool { writer.failing.load(ordering: .relaxed) }

    /// Whether enough changes wait that the writer should commit early.
    public var wantsEarlyFlush: Bool {
        writer.source.pendingChanges > configuration.earlyFlushThreshold
    }

    public func statistics() -> PersistenceStatistics {
        writer.statistics()
    }

    public var dataDirectory: String { directory.path }

    /// Commits now (with the meta provider's current values) and returns
    /// whether that commit succeeded: a promotion's epoch must be on disk
    /// before the node takes writes.
    public func commitNow() async -> Bool {
        await writer.commitNow()
    }

    /// Writes a consistent copy of the database, as committed when the copy
    /// begins, into `directory` (created; it must not exist or be empty, and
    /// its parent must exist; a relative path is relative to this process's
    /// working directory). The copy is one self-contained file, usable as
    /// `--data-dir`. Changes not yet committed by the writer are not in it.
    ///
    /// Blocks for as long as the copy takes: call it from a thread that may
    /// block (see `copyDatabaseInBackground(to:)`), never from an event loop. It uses
    /// its own read connection and never stops the writer (SQLite's WAL lets
    /// both go on at once).
    public func copyDatabase(to directory: String) throws(PersistenceError) -> DatabaseCopyReport {
        try DatabaseCopy.run(from: self.directory.databasePath, into: directory, now: store.now())
    }

    /// `copyDatabase(to:)` on a thread of its own, so that neither an event loop
    /// nor Swift's cooperative pool is blocked for the minutes a large copy takes.
    public func copyDatabaseInBackground(to directory: String) async throws(PersistenceError) -> DatabaseCopyReport {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<DatabaseCopyReport, PersistenceError>, Never>) in
            let thread = Thread { [self] in
                continuation.resume(returning: Result { () throws(PersistenceError) in try copyDatabase(to: directory) })
            }
            thread.name = "tandem-dbcopy"
            thread.start()
        }
        return try result.get()
    }
}

/// The writer thread and the state only it touches.
final class Writer: @unchecked Sendable {
    // @unchecked: `database`, `carry`, `flushPending`, `flushDropsTombstones`, `flushedThrough`,
    // `needsRewrite`, `lastErrorLog` and `failingSince` are touched only by the
    // writer thread (and by `init` before it starts); everything shared
    // is in `shared` (a Mutex) or an Atomic.

    /// What the writer shares with `stats` and `stop()`.
    struct Shared {
        var statistics = PersistenceStatistics()
        /// Changes taken from the store but not yet committed.
        var uncommitted = 0
        var lastSuccessfulTake: Int64 = 0
    }

    private var database: ItemDatabase
    /// The file replaced `database` had: open until the rewrite from memory
    /// has read the cold values it holds.
    private var retired: ItemDatabase?
    /// Where the value readers find a seq's segment; published after every commit.
    private let segmentDirectory: SegmentDirectory
    /// The live bytes the log may hold; nil: no limit. `auto` is computed
    /// again every 10 s: a disk that grew (or that others filled) moves it.
    private var diskLimit: Int?
    private var diskLimitCheckedAt = ContinuousClock.now
    /// Items evicted for the disk budget whose removals have not committed
    /// yet: the live bytes still count them, so no more go meanwhile.
    private var diskEvictionsInFlight = false
    private var lastDiskLog: ContinuousClock.Instant?
    /// Folds the WAL into `database`'s file.
    private var checkpointer: Checkpointer
    /// Whether a checkpoint was asked for since the last commit while idle.
    private var idleCheckpointRequested = false
    private let store: SessionStore
    /// Where the changes come from: the store, or a feed shared with replication.
    let source: any ChangeSource
    private let configuration: PersistenceConfiguration
    /// In a struct, not as a bare closure: `Mutex.withLock` hands its value
    /// on `inout` through a generic parameter, and a bare function value is
    /// re-wrapped in two reabstraction thunks on every such access. Read
    /// once per commit, the provider grew by two thunks per commit until a
    /// call walked a chain of hundreds of thousands of them (seen as the
    /// writer burning a core hours after start, and heading for a stack
    /// overflow).
    private struct MetaProvider: Sendable {
        let values: @Sendable () -> [String: MetaValue]
    }

    private let metaProvider = Mutex<MetaProvider?>(nil)
    private let logger: Logger
    private let shared: Mutex<Shared>
    private let wakeSignal = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)
    /// Commits asked for by `commitNow()`, numbered; a flush that began after
    /// request N answers every waiter up to N.
    private let requestedCommits = Atomic<UInt64>(0)
    private let commitWaiters = Mutex<[(generation: UInt64, continuation: CheckedContinuation<Bool, Never>)]>([])
    /// When the batch of the last successful commit was taken (ms since the epoch):
    /// every change older than that is on disk.
    let lastCommittedTake: Atomic<Int64>
    /// Whether the last commit attempt failed (storage fault): no backpressure then.
    let failing = Atomic<Bool>(false)

    /// The newest change per key not yet committed.
    private var carry: [ChangeKey: Change] = [:]
    /// A flush_all to apply before `carry`.
    private var flushPending = false
    /// Whether the pending flush drops the tombstones: a client's flush_all
    /// does (its stamp stands for every delete before it), a full resync's
    /// (stamp 0) does not (`SessionStore.flushAll(stamp:)`).
    private var flushDropsTombstones = false
    /// Changes at or before the newest applied flush_all are void.
    private var flushedThrough: UInt64 = 0
    /// The database file vanished: write the whole store into the new one.
    private var needsRewrite = false
    private var failingSince: ContinuousClock.Instant?
    /// The meta values of the last commit, to commit changed ones even without item changes.
    private var lastWrittenMeta: [String: MetaValue] = [:]
    private var metaDirty = false
    private var lastErrorLog: ContinuousClock.Instant?

    /// How long `stop()` keeps retrying a failing storage before giving up.
    static let stopRetryLimit = Duration.seconds(10)
    /// While storage keeps failing, at most one log line per this interval.
    static let errorLogInterval = Duration.seconds(10)

    init(
        database: ItemDatabase, store: SessionStore, source: any ChangeSource, configuration: PersistenceConfiguration, logger: Logger,
        recovery: RecoveryReport, segments: SegmentDirectory, diskLimit: Int?
    ) {
        self.database = database
        self.diskLimit = diskLimit
        self.segmentDirectory = segments
        segments.publish(database.segments, file: database.inode)
        self.checkpointer = Checkpointer(path: database.path, logger: logger)
        self.store = store
        self.source = source
        self.configuration = configuration
        self.logger = logger
        var initial = Shared()
        initial.statistics.recovery = recovery
        initial.lastSuccessfulTake = store.now()
        self.shared = Mutex(initial)
        self.lastCommittedTake = Atomic(initial.lastSuccessfulTake)
        rebuildLive()
        shared.withLock {
            $0.statistics.segments = database.segments.count
            $0.statistics.logBytes = database.totalBytes
            $0.statistics.liveBytes = database.liveBytes
        }
    }

    func start() {
        guard !started.exchange(true, ordering: .relaxed) else { return }
        checkpointer.start()
        let thread = Thread { [self] in
            // Named from inside: on Linux a name set before start is not
            // given to the system thread, which then shows in top -H and
            // /proc under the name of the thread that started it.
            Thread.current.name = "tandem-writer"
            run()
        }
        thread.start()
    }

    func wake() {
        wakeSignal.signal()
    }

    func commitNow() async -> Bool {
        guard started.load(ordering: .relaxed), !stopping.load(ordering: .relaxed) else { return false }
        return await withCheckedContinuation { continuation in
            commitWaiters.withLock { waiters in
                let generation = requestedCommits.wrappingAdd(1, ordering: .relaxed).newValue
                waiters.append((generation, continuation))
            }
            wakeSignal.signal()
        }
    }

    /// Answers the `commitNow()` callers a flush that began at `generation` covers.
    private func answerCommitWaiters(upTo generation: UInt64, committed: Bool) {
        let answered = commitWaiters.withLock { waiters -> [CheckedContinuation<Bool, Never>] in
            let due = waiters.filter { $0.generation <= generation }.map(\.continuation)
            waiters.removeAll { $0.generation <= generation }
            return due
        }
        for continuation in answered { continuation.resume(returning: committed) }
    }

    func setMetaProvider(_ provider: @escaping @Sendable () -> [String: MetaValue]) {
        metaProvider.withLock { $0 = MetaProvider(values: provider) }
    }

    func stop() {
        guard started.load(ordering: .relaxed) else { return }
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        wakeSignal.signal()
        finished.wait()
    }

    func statistics() -> PersistenceStatistics {
        let now = store.now()
        return shared.withLock { shared in
            var statistics = shared.statistics
            // Read under the lock the writer holds while it takes changes, so a
            // batch is always counted once: in the store or as uncommitted.
            statistics.pending = source.pendingChanges + shared.uncommitted
            statistics.lagMillis = statistics.pending > 0 ? max(0, now - shared.lastSuccessfulTake) : 0
            statistics.failing = failing.load(ordering: .relaxed)
            return statistics
        }
    }

    private func run() {
        let interval = DispatchTimeInterval.milliseconds(configuration.flushIntervalMillis)
        while !stopping.load(ordering: .relaxed) {
            _ = wakeSignal.wait(timeout: .now() + interval)
            let generation = commitWaiters.withLock { _ in requestedCommits.load(ordering: .relaxed) }
            let committed = flush()
            answerCommitWaiters(upTo: generation, committed: committed)
            returnFreedMemory()
        }
        drainForStop()
        answerCommitWaiters(upTo: .max, committed: false)
        checkpointer.stop()
        database.close()
        finished.signal()
    }

    /// Past the disk budget: the store refuses data that would add to it
    /// (without evictions), or evicts its least recently used items, cold
    /// ones first, whose removals free their rows at the next commits.
    /// Returns whether the live bytes are over the budget.
    private func enforceDiskLimit(liveBytes: Int) -> Bool {
        if configuration.diskLimit == .automatic, ContinuousClock.now - diskLimitCheckedAt >= .seconds(10) {
            diskLimitCheckedAt = ContinuousClock.now
            diskLimit = Persistence.resolve(.automatic, directory: (database.path as NSString).deletingLastPathComponent, database: database.path)
        }
        guard let limit = diskLimit else { return false }
        let over = liveBytes - limit
        store.setDiskFull(over > 0)
        guard over > 0 else {
            diskEvictionsInFlight = false
            return false
        }
        if lastDiskLog.map({ ContinuousClock.now - $0 >= Self.errorLogInterval }) ?? true {
            lastDiskLog = ContinuousClock.now
            logger.warning("the log's live data is over the disk budget", metadata: [
                "live_bytes": "\(liveBytes)", "disk_limit": "\(limit)",
                "action": store.configuration.evictionsEnabled ? "evicting the least recently used items" : "refusing new data (-M)",
            ])
        }
        guard store.configuration.evictionsEnabled else { return true }
        // The previous evictions' removals have committed once the pending
        // changes are gone; until then the live bytes still count them.
        if diskEvictionsInFlight, source.pendingChanges > 0 { return true }
        diskEvictionsInFlight = store.evictForDisk(bytes: over, rowOverhead: ItemDatabase.rowOverhead) > 0
        return true
    }

    /// When freed memory was last handed back, and how many values had left RAM then.
    private var lastTrim = ContinuousClock.now
    private var valuesEvictedAtTrim: UInt64 = 0

    /// Values that leave RAM, and the changes that carried them here, are
    /// freed in many threads' malloc arenas, which keep the pages: the
    /// process would stay at its peak (measured: 128 MB after 128 MB of
    /// writes at -m 32, 91 MB once trimmed). Every 10 s, if values left RAM
    /// since, the free pages go back to the system (a few milliseconds, here
    /// rather than on an event loop).
    private func returnFreedMemory() {
        guard ContinuousClock.now - lastTrim >= .seconds(10) else { return }
        lastTrim = ContinuousClock.now
        let evicted = store.statistics().valuesEvicted
        guard evicted != valuesEvictedAtTrim else { return }
        valuesEvictedAtTrim = evicted
        _ = Self.mallocTrim?(0)
    }

    /// glibc's `malloc_trim`, which Swift's Glibc module does not export
    /// (nil on other C libraries).
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        #if canImport(Glibc)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
        #else
        return nil
        #endif
    }()

    /// The final flush: everything acknowledged reaches the file, retrying a
    /// failing storage for a bounded time.
    private func drainForStop() {
        let deadline = ContinuousClock.now + Self.stopRetryLimit
        while true {
            if flush() && source.pendingChanges == 0 { return }
            if ContinuousClock.now >= deadline {
                logger.error("stopping with changes not written to storage", metadata: [
                    "pending": "\(carry.count + source.pendingChanges)", "file": "\(database.path)",
                ])
                return
            }
            Thread.sleep(forTimeInterval: Double(configuration.flushIntervalMillis) / 1000)
        }
    }

    /// When tombstones past the retention were last dropped from the file.
    private var lastPrune = ContinuousClock.now

    /// Drops tombstones past the retention, about once a minute (inside the open transaction).
    private func pruneTombstones() {
        guard ContinuousClock.now - lastPrune >= .seconds(60) else { return }
        lastPrune = ContinuousClock.now
        let cutoff = Persistence.tombstoneCutoff(store.now())
        try? database.deleteTombstones(below: cutoff)
    }

    /// Takes the store's new changes and commits everything pending. Returns
    /// whether the commit succeeded (or there was nothing to commit).
    @discardableResult
    private func flush() -> Bool {
        let takenAt = store.now()
        let meta = metaProvider.withLock { $0 }?.values() ?? [:]
        let taken = shared.withLock { shared in
            let taken = source.takeChanges()
            shared.uncommitted += taken.count
            return taken
        }
        absorb(taken)
        // Writing on into a removed file would lose the changes: wait for a new one.
        guard checkFile() else { return false }
        if !meta.isEmpty && meta != lastWrittenMeta { metaDirty = true }
        guard !carry.isEmpty || flushPending || needsRewrite || metaDirty else {
            shared.withLock { $0.lastSuccessfulTake = takenAt }
            lastCommittedTake.store(takenAt, ordering: .relaxed)
            maintainWAL(idle: true)
            return true
        }
        let batch = carry.count
        let commitStarted = ContinuousClock.now
        // The rows this commit writes, for the headers once it has committed.
        var rows: [CommittedRow] = []
        var dropped = 0
        // Compaction never takes a segment holding rows of this commit: their
        // headers learn their seqs only once it has committed.
        let firstSeqOfCommit = database.nextSeq
        let rewrote = needsRewrite
        let now = store.now()
        let tombstoneCutoff = Persistence.tombstoneCutoff(now)
        let remembersExpiries = store.configuration.remembersExpiries
        do {
            try database.begin()
            do {
                if needsRewrite {
                    // The store holds every carried change already (and
                    // newer ones): writing the carry after it would append
                    // older versions with newer seqs.
                    try rewriteFromMemory(&rows)
                } else if flushPending {
                    try database.flushAll(keepingTombstones: !flushDropsTombstones)
                    victim = nil
                }
                for change in RowPlacement.ordered(carry.values) {
                    switch change.kind {
                    case .upsert:
                        guard !rewrote else { continue }
                        let seq = try database.append(change)
                        rows.append(CommittedRow(storage: change.storage, keyLength: change.keyLength, seq: seq, length: UInt32(change.valueCount), cas: change.stamp))
                        countLive(seq: seq, keyLength: change.keyLength, valueLength: change.valueCount)
                    case .remove:
                        // A tombstone row, unless the expired version is the
                        // committed row's own, which then expires by its
                        // deadline: the key's last committed row may carry a
                        // later deadline than the version that expired (a
                        // touch not yet committed), or there may be an older
                        // row where the removal names none (seq 0).
                        if !rewrote, !change.committedRowExpires { _ = try database.append(change) }
                        // An expiry's stamp stays a tombstone, as in memory
                        // (`ShardState.expire`), across a restart; an
                        // eviction's does not.
                        if remembersExpiries, change.deadline.hasPassed(at: now), change.stamp >= tombstoneCutoff {
                            try database.insertTombstone(key: change.key, stamp: change.stamp)
                        }
                    case .delete:
                        if !rewrote { _ = try database.append(change) }
                        try database.insertTombstone(key: change.key, stamp: change.stamp)
                    case .flushAll: break
                    }
                }
                dropped = try compact(&rows, below: firstSeqOfCommit)
                try database.setMeta("last_sequence", Int64(bitPattern: store.lastSequence))
                try database.setMeta("flush_stamp", Int64(bitPattern: store.flushStamp))
                pruneTombstones()
                for (name, value) in meta { try database.setMeta(name, value) }
                try database.commit()
            } catch {
                // The log's shape and the accounting are read again: the
                // transaction's seals, drops and appends never happened.
                database.rollback()
                victim = nil
                rebuildLive()
                throw error
            }
        } catch {
            recordFailure(error, pending: batch)
            return false
        }
        if rewrote {
            retired?.close(checkpoint: false)
            retired = nil
        }
        // Before the headers name the new rows: a reader sent to one finds its segment.
        segmentDirectory.publish(database.segments, file: database.inode)
        publish(rows)
        if rewrote { rebuildLive() }
        compactions += UInt64(dropped)
        let commitDuration = ContinuousClock.now - commitStarted
        carry.removeAll(keepingCapacity: true)
        flushPending = false
        flushDropsTombstones = false
        needsRewrite = false
        if !meta.isEmpty { lastWrittenMeta = meta }
        metaDirty = false
        if let since = failingSince {
            logger.notice("storage works again; pending changes written", metadata: [
                "file": "\(database.path)", "keys": "\(batch)",
                "outage_seconds": "\(String(format: "%.1f", Persistence.seconds(ContinuousClock.now - since)))",
            ])
            failingSince = nil
            lastErrorLog = nil
        }
        let (segments, logBytes, liveBytes, compactions) = (database.segments.count, database.totalBytes, database.liveBytes, compactions)
        let diskFull = enforceDiskLimit(liveBytes: liveBytes)
        shared.withLock {
            $0.statistics.diskLimit = diskLimit
            $0.statistics.diskFull = diskFull
            $0.statistics.segments = segments
            $0.statistics.logBytes = logBytes
            $0.statistics.liveBytes = liveBytes
            $0.statistics.compactions = compactions
            $0.statistics.flushes += 1
            $0.statistics.lastBatch = batch
            $0.statistics.flushDurations.record(commitDuration)
            $0.uncommitted = 0
            $0.lastSuccessfulTake = takenAt
        }
        lastCommittedTake.store(takenAt, ordering: .relaxed)
        failing.store(false, ordering: .relaxed)
        maintainWAL(idle: false)
        return true
    }

    /// Asks for a checkpoint once the WAL is long enough, and once after the
    /// writes stop (so a quiet node's file holds everything by itself); past
    /// the limit, when the checkpointer has fallen behind, checkpoints here.
    private func maintainWAL(idle: Bool) {
        let frames = database.framesInWAL
        if !idle { idleCheckpointRequested = false }
        if frames >= ItemDatabase.walPageLimit {
            // A failure here shows again on the next commit, which reports it.
            try? database.checkpointNow()
        } else if frames >= ItemDatabase.checkpointPages || (idle && frames > 0 && !idleCheckpointRequested) {
            idleCheckpointRequested = idle
            checkpointer.request()
        }
    }

    /// Folds new changes into the carry: the newest change per key wins, and a
    /// flush_all voids everything before it.
    private func absorb(_ changes: [Change]) {
        for change in changes {
            switch change.kind {
            case .flushAll:
                // Every shard records the same flush; apply it once.
                guard change.sequence > flushedThrough else { continue }
                flushedThrough = change.sequence
                if change.stamp == 0 {
                    // A full resync replaces the items, not the deletes seen:
                    // those carried are still written, with their tombstones.
                    carry = carry.filter { $0.value.kind == .delete }
                } else {
                    carry.removeAll(keepingCapacity: true)
                    flushDropsTombstones = true
                }
                flushPending = true
            case .upsert, .remove, .delete:
                guard change.sequence > flushedThrough else { continue }
                if change.kind != .upsert, change.committedSeq != 0, let index = database.segmentIndex(holding: change.committedSeq) {
                    // The row the removed item's header named is dead now,
                    // whatever the carry keeps for the key.
                    database.addLive(-ItemDatabase.rowBytes(keyLength: change.keyLength, valueLength: Int(change.committedLength)), at: index)
                }
                carry[ChangeKey(change)] = change
            }
        }
    }

    /// Notices the database file being removed or replaced, and opens a new
    /// one. Returns whether the open database is still the file at its path.
    private func checkFile() -> Bool {
        let current = ItemDatabase.inode(of: database.path)
        guard current != database.inode else { return true }
        do {
            let replacement = try ItemDatabase(path: database.path, segmentBytes: configuration.segmentBytes, logger: logger)
            // The headers name seqs of the old file: the new one's must not collide with them.
            replacement.raiseNextSeq(above: database.nextSeq)
            checkpointer.stop()
            // Kept open: the cold values are read from it for the rewrite.
            retired?.close(checkpoint: false)
            retired = database
            database = replacement
            checkpointer = Checkpointer(path: replacement.path, logger: logger)
            checkpointer.start()
            needsRewrite = true
            logger.warning("database file was removed or replaced; recreating it from memory", metadata: ["file": "\(database.path)"])
            return true
        } catch {
            recordFailure(error, pending: carry.count)
            return false
        }
    }

    /// Writes every live item into the (new, empty) database; a cold item's
    /// value comes from the file that was replaced (still open), and one
    /// that cannot be read there is gone: the item is removed and counted.
    private func rewriteFromMemory(_ rows: inout [CommittedRow]) throws(SQLiteError) {
        try database.deleteAll()
        victim = nil
        var lost = 0
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.items(inShard: shard, from: from, limit: 1024)
                for item in page.items {
                    let seq: UInt64
                    if item.isCold {
                        guard let value = try? retired?.value(at: item.seq), value.count == item.valueCount else {
                            item.storage.withUnsafeBytes { _ = store.applyRemove(UnsafeRawBufferPointer(rebasing: $0[..<item.keyLength])) }
                            lost += 1
                            continue
                        }
                        seq = try database.append(item, value: value)
                    } else {
                        seq = try database.append(item)
                    }
                    rows.append(CommittedRow(storage: item.storage, keyLength: item.keyLength, seq: seq, length: UInt32(item.valueCount), cas: item.cas))
                    countLive(seq: seq, keyLength: item.keyLength, valueLength: item.valueCount)
                }
                cursor = page.next
            }
        }
        if lost > 0 {
            logger.error("values not in memory could not be read from the replaced file; those items are gone", metadata: ["items": "\(lost)"])
        }
    }

    // MARK: The log's accounting and compaction

    /// The segment being compacted, its rows' headers, and how far the
    /// re-appends have got (a segment may take several commits).
    private struct Victim {
        let id: Int
        let headers: [ItemDatabase.RowHeader]
        var cursor = 0
    }

    private var victim: Victim?
    /// Segments dropped by compaction since start.
    private var compactions: UInt64 = 0

    /// Counts a row appended in the open transaction as live: its header
    /// learns of it only after the commit, and until then the accounting
    /// must not make compaction more eager than the rows warrant.
    private func countLive(seq: UInt64, keyLength: Int, valueLength: Int) {
        if let index = database.segmentIndex(holding: seq) {
            database.addLive(ItemDatabase.rowBytes(keyLength: keyLength, valueLength: valueLength), at: index)
        }
    }

    /// Tells the headers which rows committed, and moves the live bytes: a
    /// key's previous row stops being live; a row whose key has gone (or,
    /// moved by compaction, whose header names another row) was never live.
    private func publish(_ rows: [CommittedRow]) {
        guard !rows.isEmpty else { return }
        let marks = store.markCommitted(rows)
        for (row, mark) in zip(rows, marks) {
            if mark.applied {
                if mark.previousSeq != 0, let index = database.segmentIndex(holding: mark.previousSeq) {
                    database.addLive(-ItemDatabase.rowBytes(keyLength: row.keyLength, valueLength: Int(mark.previousLength)), at: index)
                }
            } else if let index = database.segmentIndex(holding: row.seq) {
                database.addLive(-ItemDatabase.rowBytes(keyLength: row.keyLength, valueLength: Int(row.length)), at: index)
            }
        }
    }

    /// The live bytes per segment, from the headers: at start, and after a
    /// rolled-back commit or a rewrite.
    private func rebuildLive() {
        database.resetLive()
        let database = self.database
        store.forEachCommittedRow { seq, keyLength, rowLength in
            if let index = database.segmentIndex(holding: seq) {
                database.addLive(ItemDatabase.rowBytes(keyLength: keyLength, valueLength: rowLength), at: index)
            }
        }
    }

    /// Compaction, inside the open transaction: while the log's rows exceed
    /// `compactionRatio` × the live bytes, the oldest sealed segment's live
    /// rows are appended again and the segment is dropped, in the
    /// transaction of its last re-append. A row is live if the key's header
    /// names it and the item has not expired; it is re-appended with the
    /// store's current version (the newest there is: if it is not committed
    /// yet, it is the acknowledged state all the same), never one older than
    /// a committed row. A key with a change in this batch is skipped: its new
    /// row commits with the drop. Oldest first, so a dead row dropped can
    /// revive nothing older. Returns the segments dropped.
    private func compact(_ rows: inout [CommittedRow], below firstSeqOfCommit: UInt64) throws(SQLiteError) -> Int {
        var budget = configuration.compactionRowsPerCommit
        var dropped = 0
        while database.segments.count > 1, database.segments[0].last < firstSeqOfCommit,
            Double(database.totalBytes) > configuration.compactionRatio * Double(database.liveBytes)
        {
            let oldest = database.segments[0].id
            if victim?.id != oldest { victim = Victim(id: oldest, headers: try database.headers(ofSegment: oldest)) }
            while var current = victim, current.cursor < current.headers.count {
                guard budget > 0 else { return dropped }
                let header = current.headers[current.cursor]
                current.cursor += 1
                victim = current
                guard header.valueLength != nil, header.seq >= database.flushSeq else { continue }
                guard carry[ChangeKey(key: header.key)] == nil else { continue }
                guard let item = header.key.withUnsafeBytes({ store.committedItem($0) }), item.seq == header.seq else { continue }
                let seq: UInt64
                if item.isCold {
                    // Clean by definition: this very row holds its value.
                    guard let value = try database.value(at: header.seq) else { continue }
                    seq = try database.append(item, value: value)
                } else {
                    seq = try database.append(item)
                }
                rows.append(CommittedRow(
                    storage: item.storage, keyLength: item.keyLength, seq: seq, length: UInt32(item.valueCount), cas: item.cas, replacing: header.seq
                ))
                countLive(seq: seq, keyLength: item.keyLength, valueLength: item.valueCount)
                budget -= 1
            }
            try database.dropOldest()
            victim = nil
            dropped += 1
        }
        return dropped
    }

    private func recordFailure(_ error: any Error, pending: Int) {
        let message = "\(error)"
        shared.withLock {
            $0.statistics.errors += 1
            $0.statistics.lastError = message
        }
        failing.store(true, ordering: .relaxed)
        let now = ContinuousClock.now
        if failingSince == nil { failingSince = now }
        if lastErrorLog.map({ now - $0 >= Self.errorLogInterval }) ?? true {
            lastErrorLog = now
            logger.error("cannot write to storage; serving from memory and retrying", metadata: [
                "file": "\(database.path)", "error": "\(message)", "pending": "\(pending)",
            ])
        }
    }
}

/// Counts the items recovery loaded, and the highest CAS among them, from
/// several threads.
final class RecoveryProgress: Sendable {
    private struct Counts {
        var loaded = 0
        var highestCas: UInt64 = 0
    }

    private let counts = Mutex(Counts())
    private let lastReport = Mutex(ContinuousClock.now)

    /// Counts one item; true at most once a second, when a progress line is due.
    func loaded(cas: UInt64) -> Bool {
        let due = counts.withLock { counts -> Bool in
            counts.loaded += 1
            if cas > counts.highestCas { counts.highestCas = cas }
            return counts.loaded % 65_536 == 0
        }
        guard due else { return false }
        return lastReport.withLock { last in
            let now = ContinuousClock.now
            guard now - last >= .seconds(1) else { return false }
            last = now
            return true
        }
    }

    var totals: (loaded: Int, highestCas: UInt64) {
        counts.withLock { ($0.loaded, $0.highestCas) }
    }
}

/// A change's key as a dictionary key, hashed and compared where it lies in
/// the change's storage: the carry takes tens of thousands of changes a
/// second, and copying each key into an array of its own cost an allocation
/// and a free per change.
private struct ChangeKey: Hashable {
    let storage: [UInt8]
    let length: Int

    init(_ change: Change) {
        storage = change.storage
        length = change.keyLength
    }

    init(key: [UInt8]) {
        storage = key
        length = key.count
    }

    static func == (lhs: ChangeKey, rhs: ChangeKey) -> Bool {
        guard lhs.length == rhs.length else { return false }
        guard lhs.length > 0 else { return true }
        return lhs.storage.withUnsafeBytes { left in
            rhs.storage.withUnsafeBytes { right in memcmp(left.baseAddress!, right.baseAddress!, lhs.length) == 0 }
        }
    }

    func hash(into hasher: inout Hasher) {
        storage.withUnsafeBytes { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0[..<length])) }
    }
}
