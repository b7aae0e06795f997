import CSQLite
import Dispatch
import Foundation
import SessionStore
import Synchronization

/// Where each segment of the log begins: published by the writer after every
/// commit that sealed or dropped one, read by the value readers to find the
/// table holding a seq. A reader that looks a seq up in a directory older
/// than the commit that dropped its segment finds no row, and says so: the
/// item's header names the row's new place by then.
final class SegmentDirectory: Sendable {
    private struct Entry {
        let first: UInt64
        let id: Int
    }

    private struct Published {
        var entries: [Entry] = []
        /// The file's inode: a reader whose connection was opened on another
        /// file (it was replaced and rewritten) opens the path again.
        var file: UInt64?
    }

    private let published = Mutex(Published())

    func publish(_ segments: [ItemDatabase.Segment], file: UInt64?) {
        let entries = segments.map { Entry(first: $0.first, id: $0.id) }
        published.withLock { $0 = Published(entries: entries, file: file) }
    }

    /// The file the directory describes.
    var file: UInt64? { published.withLock { $0.file } }

    /// The id of the segment that holds `seq` if any does (the last one that
    /// begins at or before it), and the file it is in.
    func segment(holding seq: UInt64) -> (id: Int?, file: UInt64?) {
        published.withLock { published in
            let entries = published.entries
            var low = 0
            var high = entries.count
            while low < high {
                let middle = (low + high) / 2
                if entries[middle].first <= seq { low = middle + 1 } else { high = middle }
            }
            return (low == 0 ? nil : entries[low - 1].id, published.file)
        }
    }
}

/// One connection reading rows by seq, with a prepared statement per
/// segment. Used by one thread at a time.
final class RowReader {
    let connection: SQLiteConnection
    /// The inode of the file it opened.
    let file: UInt64?
    private var statements: [Int: Statement] = [:]

    init(connection: SQLiteConnection, file: UInt64? = nil) {
        self.connection = connection
        self.file = file
    }

    /// The value and CAS of row `seq` of segment `id`; nil when the row or
    /// its segment is gone (dropped by compaction after the lookup), or the
    /// row is a tombstone.
    func read(seq: UInt64, segment id: Int) throws(SQLiteError) -> ValueReader.Row? {
        let statement: Statement
        if let cached = statements[id] {
            statement = cached
        } else {
            do {
                statement = try connection.prepare("SELECT value, cas FROM \(ItemDatabase.tableName(id)) WHERE seq = ?1")
            } catch {
                // The table is gone: its rows moved to newer segments.
                if error.primaryCode == SQLITE_ERROR { return nil }
                throw error
            }
            statements[id] = statement
        }
        statement.reset()
        statement.bind(1, Int64(bitPattern: seq))
        do {
            guard try statement.step() else {
                statement.reset()
                return nil
            }
        } catch {
            // A dropped table makes the cached statement fail on re-prepare.
            statements[id] = nil
            if error.primaryCode == SQLITE_ERROR || error.primaryCode == SQLITE_SCHEMA { return nil }
            throw error
        }
        guard !statement.isNull(0) else {
            statement.reset()
            return nil
        }
        let row = ValueReader.Row(value: Array(statement.blob(0)), cas: UInt64(bitPattern: statement.int64(1)))
        statement.reset()
        return row
    }

    /// Forgets the statements of segments that no longer exist.
    func retain(segments ids: Set<Int>) {
        statements = statements.filter { ids.contains($0.key) }
    }
}

/// Reads values that left RAM back from the log, on threads of its own, so
/// that an event loop never waits for the disk (docs/storage.md, "Cold
/// reads"). Each thread has a read-only connection (in WAL mode readers and
/// the writer never block each other) with a small cache and no `mmap`:
/// mapped pages would count in the process's RSS, which `-m` is about.
public final class ValueReader: Sendable {
    /// A row read: its value and the CAS of the version it holds.
    public struct Row: Sendable, Equatable {
        public var value: [UInt8]
        public var cas: UInt64
    }

    /// A read asked for, with where to answer.
    private struct Job: Sendable {
        let seq: UInt64
        /// When it was asked for (`DispatchTime` nanoseconds): the latency counted includes the queue.
        let asked: UInt64
        let completion: @Sendable (Result<Row?, PersistenceError>) -> Void
    }

    /// Reads waiting for a thread, oldest first; taken from the front
    /// without moving the rest (a `get` of thousands of cold keys asks for
    /// all of them at once).
    private struct JobQueue {
        var jobs: [Job] = []
        var head = 0

        mutating func push(_ job: Job) { jobs.append(job) }

        /// Up to `limit` jobs from the front, oldest first.
        mutating func pop(upTo limit: Int) -> [Job] {
            let end = min(jobs.count, head + limit)
            guard head < end else { return [] }
            let taken = Array(jobs[head..<end])
            head = end
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 1024, head * 2 >= jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            return taken
        }

    }

    private let path: String
    private let directory: SegmentDirectory
    private let threads: Int
    private let queue = Mutex(JobQueue())
    private let wakeSignal = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)
    /// Reads done and the nanoseconds they took (queueing included), for stats.
    private let reads = Atomic<UInt64>(0)
    private let readNanos = Atomic<UInt64>(0)
    private let failures = Atomic<UInt64>(0)

    /// Each reader's page cache, in KiB: the b-trees' inner pages and a few
    /// leaves; the kernel's page cache holds the rest.
    static let cacheKibibytes = 2048

    init(path: String, directory: SegmentDirectory, threads: Int) {
        self.path = path
        self.directory = directory
        self.threads = max(1, threads)
    }

    func start() {
        guard !started.exchange(true, ordering: .relaxed) else { return }
        for index in 0..<threads {
            let thread = Thread { [self] in
                // At most 15 bytes: Linux refuses a longer thread name.
                Thread.current.name = "tandem-reader\(index)"
                run()
            }
            thread.start()
        }
    }

    /// Ends the threads once the reads queued are answered.
    func stop() {
        guard started.load(ordering: .relaxed), !stopping.exchange(true, ordering: .relaxed) else { return }
        for _ in 0..<threads { wakeSignal.signal() }
        for _ in 0..<threads { finished.wait() }
    }

    /// Reads the value of row `seq` on a reader thread and calls `completion`
    /// there: nil when the row is gone (compaction moved it; the item's
    /// header names its new row) or is not a value.
    public func read(seq: UInt64, completion: @escaping @Sendable (Result<Row?, PersistenceError>) -> Void) {
        guard started.load(ordering: .relaxed), !stopping.load(ordering: .relaxed) else {
            completion(.failure(.stopped))
            return
        }
        let job = Job(seq: seq, asked: DispatchTime.now().uptimeNanoseconds, completion: completion)
        queue.withLock { $0.push(job) }
        wakeSignal.signal()
    }

    /// Reads row `seq` and waits for it: for threads that may block, never
    /// an event loop.
    public func readNow(seq: UInt64) throws(PersistenceError) -> Row? {
        let done = DispatchSemaphore(value: 0)
        let answer = Mutex<Result<Row?, PersistenceError>?>(nil)
        read(seq: seq) { result in
            answer.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try answer.withLock { $0! }.get()
    }

    /// Reads answered, their mean latency in microseconds, and failures.
    public var statistics: (reads: UInt64, meanMicros: Double, failures: UInt64) {
        let count = reads.load(ordering: .relaxed)
        let nanos = readNanos.load(ordering: .relaxed)
        return (count, count == 0 ? 0 : Double(nanos) / Double(count) / 1000, failures.load(ordering: .relaxed))
    }

    private func run() {
        var reader: RowReader?
        defer {
            reader?.connection.close()
            finished.signal()
        }
        while true {
            wakeSignal.wait()
            while true {
                let batch = queue.withLock { $0.pop(upTo: Self.batchLimit) }
                if batch.isEmpty { break }
                answer(batch, with: &reader)
            }
            if stopping.load(ordering: .relaxed) { return }
        }
    }

    /// Jobs a thread takes at once: read in one read transaction (one
    /// shared lock and one look at the WAL for all of them), and few enough
    /// that the other threads get their share of a burst.
    static let batchLimit = 16

    private func answer(_ batch: [Job], with reader: inout RowReader?) {
        guard batch.count > 1 else {
            answer(batch[0], with: &reader)
            return
        }
        // The transaction is only an optimisation: reads still work without it.
        let inTransaction = (try? openIfNeeded(&reader).connection.execute("BEGIN")) != nil
        for job in batch { answer(job, with: &reader) }
        if inTransaction, let reader { try? reader.connection.execute("COMMIT") }
    }

    private func openIfNeeded(_ reader: inout RowReader?) throws(SQLiteError) -> RowReader {
        let file = directory.file
        if let current = reader, current.file != file {
            current.connection.close()
            reader = nil
        }
        if let reader { return reader }
        let opened = try openReader(file: file)
        reader = opened
        return opened
    }

    private func answer(_ job: Job, with reader: inout RowReader?) {
        let result: Result<Row?, PersistenceError>
        do throws(SQLiteError) {
            let (segment, file) = directory.segment(holding: job.seq)
            if let current = reader, current.file != file {
                current.connection.close()
                reader = nil
            }
            if reader == nil { reader = try openReader(file: file) }
            if let segment {
                result = .success(try reader!.read(seq: job.seq, segment: segment))
            } else {
                result = .success(nil)
            }
        } catch {
            failures.wrappingAdd(1, ordering: .relaxed)
            // A connection that failed is opened anew for the next read.
            reader?.connection.close()
            reader = nil
            result = .failure(.valueUnreadable(path: path, error: error))
        }
        reads.wrappingAdd(1, ordering: .relaxed)
        readNanos.wrappingAdd(DispatchTime.now().uptimeNanoseconds &- job.asked, ordering: .relaxed)
        job.completion(result)
    }

    private func openReader(file: UInt64?) throws(SQLiteError) -> RowReader {
        let connection = try SQLiteConnection(path: path, mode: .readOnly)
        try connection.execute("PRAGMA cache_size = -\(Self.cacheKibibytes)")
        try connection.execute("PRAGMA mmap_size = 0")
        return RowReader(connection: connection, file: file)
    }
}

extension ValueReader: ColdValueReading {
    public func readValue(seq: UInt64, cas: UInt64) async throws -> [UInt8]? {
        try await withCheckedThrowingContinuation { continuation in
            read(seq: seq) { result in
                switch result {
                case .success(let row): continuation.resume(returning: row.flatMap { $0.cas == cas ? $0.value : nil })
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        }
    }
}
