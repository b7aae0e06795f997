import CSQLite
import Dispatch
import Foundation
import Logging
import Synchronization

/// Folds the WAL into the database file on a thread of its own.
///
/// A checkpoint copies the pages committed since the last one from the WAL
/// into the database file, then fdatasyncs the file: tens of milliseconds
/// under a write load (measured with the one-row-per-key layout: 76 ms for
/// 32 MB of WAL in 8,192 pages of 4 KB; the log asks at the same 32 MB, in
/// 512 pages of 64 KB, appended rather than scattered). Run inside
/// the writer's commit, as SQLite's autocheckpoint does, that wait holds up
/// the next batch; the uncommitted changes then pass the lag bound and
/// writing clients are paused. Here the writer only asks, and this thread
/// checkpoints through a connection of its own while the writer goes on
/// appending to the WAL (SQLite lets one checkpoint run beside a writer).
/// The WAL starts over from its beginning at the writer's first commit after
/// a checkpoint has caught up with it.
final class Checkpointer: Sendable {
    let path: String
    private let logger: Logger
    private let wakeSignal = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    /// Set by `request()` until the thread takes it: many requests, one wake.
    private let requested = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)

    /// Passes per request: the frames committed during one pass are copied
    /// by the next; a reader holding an old snapshot can keep some back, so
    /// the passes are bounded rather than repeated until none is left.
    static let passesPerRequest = 4
    /// While checkpoints keep failing, at most one log line per this interval.
    static let errorLogInterval = Duration.seconds(10)

    init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    func start() {
        guard !started.exchange(true, ordering: .relaxed) else { return }
        let thread = Thread { [self] in
            // Named from inside: on Linux a name set before start is not
            // given to the system thread, which then shows in top -H and
            // /proc under the name of the thread that started it.
            // At most 15 bytes: Linux refuses a longer thread name.
            Thread.current.name = "tandem-checkpt"
            run()
        }
        thread.start()
    }

    /// Asks for a checkpoint soon. Never blocks.
    func request() {
        guard !requested.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wakeSignal.signal()
    }

    /// Ends the thread after the pass under way, if any.
    func stop() {
        guard started.load(ordering: .relaxed), !stopping.exchange(true, ordering: .relaxed) else { return }
        wakeSignal.signal()
        finished.wait()
    }

    private func run() {
        var connection: SQLiteConnection?
        var lastErrorLog: ContinuousClock.Instant?
        while true {
            wakeSignal.wait()
            if stopping.load(ordering: .relaxed) { break }
            requested.store(false, ordering: .releasing)
            do throws(SQLiteError) {
                if connection == nil {
                    // `.existing`: if the file was removed, the writer makes
                    // the new one; this connection must not create it empty.
                    let opened = try SQLiteConnection(path: path, mode: .existing)
                    try opened.execute("PRAGMA synchronous = NORMAL")
                    connection = opened
                }
                guard let connection else { continue }
                for _ in 0..<Self.passesPerRequest {
                    let result = try connection.checkpoint(mode: SQLITE_CHECKPOINT_PASSIVE)
                    if result.busy || result.framesCheckpointed >= result.framesInWAL { break }
                    if stopping.load(ordering: .relaxed) { break }
                }
            } catch {
                // The writer sees storage faults on its own commits and reports
                // them; here a fresh connection is tried at the next request.
                connection?.close()
                connection = nil
                let now = ContinuousClock.now
                if lastErrorLog.map({ now - $0 >= Self.errorLogInterval }) ?? true {
                    lastErrorLog = now
                    logger.warning("checkpoint failed; the WAL keeps the changes and grows until one succeeds", metadata: [
                        "file": "\(path)", "error": "\(error)",
                    ])
                }
            }
        }
        connection?.close()
        finished.signal()
    }
}
