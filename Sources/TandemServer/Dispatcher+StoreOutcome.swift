import NIOCore
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

    /// Stores `value` under `key` and counts it as a set (and, for a `cas`,
    /// its hit, bad value or miss), for the text, meta, binary and wire commands alike.
    func storeCounted(_ key: ByteBuffer, value: ByteBuffer, request: StoreRequest) throws(ValueOnDisk) -> StoreOutcome {
        let outcome = try key.withReadableBytes { key throws(ValueOnDisk) in
            try value.withReadableBytes { value throws(ValueOnDisk) in
                try store.store(key, value: value, request: request)
            }
        }
        counters.increment(.cmdSet)
        countOutcome(outcome)
        if request.compareCas != nil {
            switch outcome {
            case .stored: counters.increment(.casHits)
            case .exists: counters.increment(.casBadval)
            case .notFound: counters.increment(.casMisses)
            case .notStored, .tooLarge, .outOfMemory: break
            }
        }
        return outcome
    }
}
