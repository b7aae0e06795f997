import NIOCore
import SessionPersistence
import SessionStore

extension ServerContext {
    /// Reads the value a `ValueOnDisk` names on a reader thread and installs
    /// it in the store; the future completes on `eventLoop` with the value
    /// (for `FetchOptions.loaded`) once the command may run again. A row that
    /// is gone (compaction moved it) or holds another version gives nil: the
    /// command runs again and finds the item's new state. It fails only when
    /// storage cannot be read.
    func loadValue(_ cold: ValueOnDisk, on eventLoop: any EventLoop) -> EventLoopFuture<LoadedValue?> {
        guard let persistence else {
            // Values leave RAM only with persistence: nothing to read from.
            return eventLoop.makeFailedFuture(PersistenceError.stopped)
        }
        let promise = eventLoop.makePromise(of: LoadedValue?.self)
        let store = self.store
        persistence.values.read(seq: cold.seq) { result in
            switch result {
            case .success(let row):
                guard let row, row.cas == cold.cas else {
                    promise.succeed(nil)
                    return
                }
                cold.key.withUnsafeBytes { key in
                    row.value.withUnsafeBytes { value in _ = store.install(key, value: value, cas: cold.cas) }
                }
                promise.succeed(LoadedValue(cas: row.cas, value: row.value))
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult
    }
}

extension ServerContext {
    /// The value of an item a scan found (see `SessionStore.value(of:)`),
    /// completed on `eventLoop`.
    func value(of item: ItemSnapshot, on eventLoop: any EventLoop) -> EventLoopFuture<[UInt8]?> {
        guard item.isCold else { return eventLoop.makeSucceededFuture(item.value) }
        let store = self.store
        return eventLoop.makeFutureWithTask { try await store.value(of: item) }
    }
}
