import NIOCore
import SessionStore
import WireProtocol

/// The wire protocol's data messages (Protocol.md 1.4.5) against the store:
/// the same store calls and counters as the memcached commands they stand
/// for (`gets`, `set`/`add`/`replace`/`cas`, `touch`, `delete`), with typed
/// answers instead of reply text. Like every dispatcher call they throw
/// `ValueOnDisk` before changing or counting anything when a value must
/// first be read from the log.
extension Dispatcher {
    /// The memcached exptime a data message's TTL stands for, so that it
    /// means exactly what the same TTL sent as memcached would: whole
    /// seconds, rounded up; beyond memcached's 30 relative days an absolute
    /// Unix time (from `nowMillis`); below 0 already expired.
    static func exptime(ttlMillis: Int64, nowMillis: Int64) -> Int64 {
        if ttlMillis == 0 { return 0 }
        if ttlMillis < 0 { return -1 }
        let seconds = ttlMillis / 1000 + (ttlMillis % 1000 == 0 ? 0 : 1)
        guard seconds > Deadline.maximumRelativeSeconds else { return seconds }
        let (absolute, overflow) = (nowMillis / 1000).addingReportingOverflow(seconds)
        return overflow ? Int64.max / 1000 : absolute
    }

    /// What an item adds to an `items` answer besides its key and value
    /// (flags, deadline, stamp and the lengths), rounded up.
    static let itemOverhead = 32

    /// `gets` of `keys`: the items found, in order, with flags, deadline and
    /// stamp; nil once they would take more than `byteBudget` bytes. It stops
    /// copying values there: a get may name a large value thousands of times,
    /// and the answer could never be sent anyway.
    func dataGet(_ keys: [ByteBuffer], byteBudget: Int) throws(ValueOnDisk) -> [DataItem]? {
        var items: [DataItem] = []
        var bytes = 0
        var options = FetchOptions()
        for key in keys {
            options.loaded = loadedValues.value(for: key)
            let result = try key.withReadableBytes { key throws(ValueOnDisk) in try store.fetch(key, options: options) }
            guard let result else { continue }
            let item = result.item
            bytes += key.readableBytes + item.valueCount + Self.itemOverhead
            guard bytes <= byteBudget else {
                counters.increment(.cmdGet, by: UInt64(keys.count))
                return nil
            }
            let value = item.withValueBytes { ByteBuffer(bytes: $0) }
            items.append(DataItem(key: key, value: value, flags: item.flags, deadlineMillis: item.deadline.millis, stamp: item.cas))
        }
        let requested = UInt64(keys.count)
        counters.increment(.cmdGet, by: requested)
        counters.increment(.getHits, by: UInt64(items.count))
        counters.increment(.getMisses, by: requested - UInt64(items.count))
        return items
    }

    /// `set`, `add`, `replace` or `cas`. A value over `-I` or a full store
    /// is an error the caller turns into `tooLarge` or `internalError`.
    func dataStore(_ write: DataWrite) throws(ValueOnDisk) -> Result<WriteResult, WireError> {
        let mode: StoreMode
        switch write.mode {
        case .set, .compareAndSet: mode = .set
        case .add: mode = .add
        case .replace: mode = .replace
        }
        let request = StoreRequest(
            mode: mode, flags: write.flags,
            deadline: deadline(Self.exptime(ttlMillis: write.ttlMillis, nowMillis: store.now())),
            compareCas: write.mode == .compareAndSet ? write.stamp : nil
        )
        let outcome = try storeCounted(write.key, value: write.value, request: request)
        switch outcome {
        case .stored(let cas, _): return .success(WriteResult(.done, stamp: cas))
        case .notStored: return .success(WriteResult(.notStored))
        case .exists: return .success(WriteResult(.exists))
        case .notFound: return .success(WriteResult(.notFound))
        case .tooLarge:
            counters.increment(.storeTooLarge)
            return .failure(WireError(.tooLarge, "object too large for cache"))
        case .outOfMemory:
            counters.increment(.storeNoMemory)
            return .failure(WireError(.internalError, "out of memory storing object"))
        }
    }

    /// `touch`: a new deadline for a live item.
    func dataTouch(_ key: ByteBuffer, ttlMillis: Int64) throws(ValueOnDisk) -> WriteResult {
        let deadline = deadline(Self.exptime(ttlMillis: ttlMillis, nowMillis: store.now()))
        let found = try key.withReadableBytes { key throws(ValueOnDisk) in try store.touch(key, deadline: deadline) }
        counters.increment(.cmdTouch)
        counters.increment(found ? .touchHits : .touchMisses)
        return WriteResult(found ? .done : .notFound)
    }

    /// `delete`.
    func dataDelete(_ key: ByteBuffer) throws(ValueOnDisk) -> WriteResult {
        let outcome = try key.withReadableBytes { key throws(ValueOnDisk) in try store.delete(key) }
        switch outcome {
        case .deleted:
            counters.increment(.deleteHits)
            return WriteResult(.done)
        case .notFound, .exists:
            counters.increment(.deleteMisses)
            return WriteResult(.notFound)
        }
    }

    /// The cold values a `get` of several keys will need, read at once.
    func coldValues(of keys: [ByteBuffer], byteBudget: Int) -> [ValueOnDisk] {
        guard keys.count > 1 else { return [] }
        var wanted: [ValueOnDisk] = []
        var seen = Set<[UInt8]>()
        var bytes = 0
        for key in keys {
            guard let cold = key.withUnsafeReadableBytes({ store.valueOnDisk($0) }), seen.insert(cold.key).inserted else { continue }
            bytes += Int(cold.length)
            // Each wait reads at most an answer's worth; the rest, if the
            // answer can still be sent, at the next.
            guard bytes <= byteBudget else { break }
            wanted.append(cold)
        }
        return wanted
    }
}
