import Synchronization

/// The counters `stats` reports, named as memcached names them, in its order.
enum Counter: Int, CaseIterable, Sendable {
    case cmdGet, cmdSet, cmdFlush, cmdTouch, cmdMeta
    case getHits, getMisses, deleteMisses, deleteHits, incrMisses, incrHits, decrMisses, decrHits
    case casMisses, casHits, casBadval, touchHits, touchMisses
    case storeTooLarge, storeNoMemory, protocolErrors, bytesRead, bytesWritten
    case authCommands, authErrors
    // Tandem's own: what storage commands (text, meta, binary) came to, for /metrics.
    case storeStored, storeNotStored, storeExists, storeNotFound

    var statName: String {
        switch self {
        case .cmdGet: return "cmd_get"
        case .cmdSet: return "cmd_set"
        case .cmdFlush: return "cmd_flush"
        case .cmdTouch: return "cmd_touch"
        case .cmdMeta: return "cmd_meta"
        case .getHits: return "get_hits"
        case .getMisses: return "get_misses"
        case .deleteMisses: return "delete_misses"
        case .deleteHits: return "delete_hits"
        case .incrMisses: return "incr_misses"
        case .incrHits: return "incr_hits"
        case .decrMisses: return "decr_misses"
        case .decrHits: return "decr_hits"
        case .casMisses: return "cas_misses"
        case .casHits: return "cas_hits"
        case .casBadval: return "cas_badval"
        case .touchHits: return "touch_hits"
        case .touchMisses: return "touch_misses"
        case .storeTooLarge: return "store_too_large"
        case .storeNoMemory: return "store_no_memory"
        case .protocolErrors: return "protocol_errors"
        case .bytesRead: return "bytes_read"
        case .bytesWritten: return "bytes_written"
        case .authCommands: return "auth_cmds"
        case .authErrors: return "auth_errors"
        case .storeStored: return "store_stored"
        case .storeNotStored: return "store_not_stored"
        case .storeExists: return "store_exists"
        case .storeNotFound: return "store_not_found"
        }
    }
}

/// Command and traffic counters for one event loop. Each loop has its own
/// instance, so the relaxed increments never contend; `stats` sums them.
final class CommandCounters: @unchecked Sendable {
    // @unchecked: `storage` is only touched through `Atomic`, allocated once in
    // init and freed in deinit; the pointer itself never changes.
    private let storage: UnsafeMutablePointer<Atomic<UInt64>>
    /// This loop's request latency histogram (for /metrics).
    let latency = RequestLatency()

    init() {
        storage = .allocate(capacity: Counter.allCases.count)
        for index in 0..<Counter.allCases.count {
            (storage + index).initialize(to: Atomic(0))
        }
    }

    deinit {
        storage.deinitialize(count: Counter.allCases.count)
        storage.deallocate()
    }

    @inline(__always)
    func increment(_ counter: Counter, by amount: UInt64 = 1) {
        storage[counter.rawValue].wrappingAdd(amount, ordering: .relaxed)
    }

    func value(_ counter: Counter) -> UInt64 {
        storage[counter.rawValue].load(ordering: .relaxed)
    }

    func reset() {
        for counter in Counter.allCases {
            storage[counter.rawValue].store(0, ordering: .relaxed)
        }
    }
}

/// The counters of every event loop, summed on demand.
struct CounterSet: Sendable {
    let perLoop: [CommandCounters]

    func total(_ counter: Counter) -> UInt64 {
        perLoop.reduce(0) { $0 &+ $1.value(counter) }
    }

    func reset() {
        perLoop.forEach { $0.reset() }
    }
}
