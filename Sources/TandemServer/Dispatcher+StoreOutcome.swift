import SessionStore

extension Dispatcher {
    /// Counts what a storage command came to (text, meta and binary alike), so
    /// /metrics can tell stored writes from refused ones (`add` on a live key is
    /// how msm takes its locks; its NOT_STORED rate is worth watching).
    /// Too large and out of memory are counted by the callers, as memcached does.
    @inline(__always)
    func countOutcome(_ outcome: StoreOutcome) {
        switch outcome {
        case .stored: counters.increment(.storeStored)
        case .notStored: counters.increment(.storeNotStored)
        case .exists: counters.increment(.storeExists)
        case .notFound: counters.increment(.storeNotFound)
        case .tooLarge, .outOfMemory: break
        }
    }
}
