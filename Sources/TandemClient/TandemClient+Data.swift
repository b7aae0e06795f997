#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOConcurrencyHelpers
import NIOCore
import WireProtocol

/// An item as a node holds it.
public struct TandemItem: Sendable, Equatable {
    /// The key, as given (memcached's rules: 1 to 250 bytes, no spaces or control bytes).
    public var key: String
    /// The value's bytes.
    public var value: [UInt8]
    /// The flags stored with the value (memcached's client flags).
    public var flags: UInt32
    /// When the item expires; nil: never. Whole seconds, as memcached keeps them.
    public var expiresAt: Date?
    /// The stamp of the write that made the item: its memcached CAS token,
    /// for `compareAndSet`.
    public var stamp: UInt64

    /// An item with these fields (for comparisons in tests, mostly: items come from `get`).
    public init(key: String, value: [UInt8], flags: UInt32 = 0, expiresAt: Date? = nil, stamp: UInt64 = 0) {
        self.key = key
        self.value = value
        self.flags = flags
        self.expiresAt = expiresAt
        self.stamp = stamp
    }
}

/// When a written item expires.
public enum TandemExpiry: Sendable, Equatable {
    /// Never.
    case never
    /// This long after the node runs the write (the node's clock; rounded up
    /// to whole seconds, as memcached keeps them).
    case after(Duration)
    /// At this time. Sent as the time left on this machine's clock, so keep
    /// clocks in sync (NTP); a time in the past expires the item at once.
    case at(Date)

    /// The `ttl_ms` of the data messages (Protocol.md 1.4.5): 0 never, below 0 already expired.
    func ttlMillis(now: Date = Date()) -> Int64 {
        switch self {
        case .never:
            return 0
        case .after(let duration):
            let (seconds, attoseconds) = duration.components
            guard seconds >= 0, seconds < Int64.max / 1000 - 1 else { return seconds < 0 ? -1 : Int64.max / 2 }
            let millis = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
            return millis == 0 ? -1 : millis
        case .at(let date):
            let millis = (date.timeIntervalSince(now) * 1000).rounded(.up)
            guard millis >= 1 else { return -1 }
            return millis >= Double(Int64.max / 2) ? Int64.max / 2 : Int64(millis)
        }
    }
}

/// What a `compareAndSet` came to.
public enum TandemCASResult: Sendable, Equatable {
    /// Stored; the item's new stamp.
    case stored(stamp: UInt64)
    /// The item changed since the stamp was read (memcached `EXISTS`).
    case exists
    /// The key holds nothing (memcached `NOT_FOUND`).
    case notFound
}

extension TandemClient {
    // MARK: Data (wire version 5 on)

    /// Whether the node serves the data requests (wire version 5 on).
    public var servesData: Bool { server.version >= WireVersion.dataMessages }

    /// The item at `key`, or nil. Like memcached's `gets`: the value, flags,
    /// deadline and stamp.
    public func get(_ key: String) async throws -> TandemItem? {
        try await get([key])[key]
    }

    /// The items found at `keys` (missing keys are left out): one request,
    /// or, past the most keys a node takes in one (`DataLimits.maximumKeysPerGet`),
    /// one per that many keys, pipelined on this connection.
    public func get(_ keys: [String]) async throws -> [String: TandemItem] {
        let most = DataLimits.maximumKeysPerGet
        guard keys.count > most else { return try await getOnce(keys) }
        return try await withThrowingTaskGroup(of: [String: TandemItem].self) { group in
            for start in stride(from: 0, to: keys.count, by: most) {
                let part = Array(keys[start..<min(start + most, keys.count)])
                group.addTask { try await self.getOnce(part) }
            }
            var found: [String: TandemItem] = [:]
            for try await items in group { found.merge(items) { first, _ in first } }
            return found
        }
    }

    private func getOnce(_ keys: [String]) async throws -> [String: TandemItem] {
        let reply = try await data(.get(keys: keys.map(Self.buffer)))
        guard case .items(let items) = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to get") }
        var found: [String: TandemItem] = [:]
        found.reserveCapacity(items.count)
        for item in items {
            let key = String(decoding: item.key.readableBytesView, as: UTF8.self)
            found[key] = TandemItem(
                key: key, value: Array(item.value.readableBytesView), flags: item.flags,
                expiresAt: item.deadlineMillis == 0 ? nil : Date(timeIntervalSince1970: Double(item.deadlineMillis) / 1000),
                stamp: item.stamp
            )
        }
        return found
    }

    /// Stores `value` whatever `key` holds (memcached `set`); returns the item's new stamp.
    @discardableResult
    public func set(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> UInt64 {
        let result = try await write(.set, key, value, flags, expiry, stamp: 0)
        guard result.outcome == .done else { throw TandemClientError.unexpectedReply("set answered \(result.outcome)") }
        return result.stamp
    }

    /// Stores `value` only if `key` holds nothing (memcached `add`); false: the key exists.
    public func add(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> Bool {
        try await write(.add, key, value, flags, expiry, stamp: 0).outcome == .done
    }

    /// Stores `value` only if `key` holds an item (memcached `replace`); false: it does not.
    public func replace(_ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never) async throws -> Bool {
        try await write(.replace, key, value, flags, expiry, stamp: 0).outcome == .done
    }

    /// Stores `value` only if the item still has `stamp` (memcached `cas`).
    public func compareAndSet(
        _ key: String, value: [UInt8], flags: UInt32 = 0, expiry: TandemExpiry = .never, stamp: UInt64
    ) async throws -> TandemCASResult {
        let result = try await write(.compareAndSet, key, value, flags, expiry, stamp: stamp)
        switch result.outcome {
        case .done: return .stored(stamp: result.stamp)
        case .exists: return .exists
        case .notFound: return .notFound
        case .notStored: throw TandemClientError.unexpectedReply("cas answered notStored")
        }
    }

    /// Gives the item a new expiry, its value unchanged (memcached `touch`); false: no such key.
    public func touch(_ key: String, expiry: TandemExpiry) async throws -> Bool {
        let reply = try await data(.touch(key: Self.buffer(key), ttlMillis: expiry.ttlMillis()))
        return try Self.result(reply, to: "touch").outcome == .done
    }

    /// Deletes the item (memcached `delete`); false: there was none.
    public func delete(_ key: String) async throws -> Bool {
        let reply = try await data(.delete(key: Self.buffer(key)))
        return try Self.result(reply, to: "delete").outcome == .done
    }

    private func write(
        _ mode: DataWrite.Mode, _ key: String, _ value: [UInt8], _ flags: UInt32, _ expiry: TandemExpiry, stamp: UInt64
    ) async throws -> WriteResult {
        let request = DataWrite(
            mode: mode, key: Self.buffer(key), value: ByteBuffer(bytes: value), flags: flags,
            ttlMillis: expiry.ttlMillis(), stamp: stamp
        )
        return try Self.result(try await data(.store(request)), to: "\(mode)")
    }

    /// Sends one data request, once a slot of `maxInFlight` is free, and
    /// waits at most the connection's timeout for its answer.
    func data(_ message: WireMessage) async throws -> WireMessage {
        guard servesData else { throw TandemClientError.unsupported(nodeVersion: server.version, needed: WireVersion.dataMessages) }
        try await slots.acquire()
        defer { slots.release() }
        return try await handler.request(message, on: channel, timeout: requestTimeout)
    }

    private static func result(_ reply: WireMessage, to request: String) throws -> WriteResult {
        guard case .writeResult(let result) = reply else { throw TandemClientError.unexpectedReply("\(reply.type) to \(request)") }
        return result
    }

    static func buffer(_ key: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeString(key)
        return buffer
    }
}

/// A counting semaphore for the requests in flight on one connection: a
/// caller past the bound waits (without a thread) until an answer frees a
/// slot, or until its task is cancelled.
final class InFlightSlots: Sendable {
    private struct State {
        var free: Int
        /// Callers waiting for a slot, longest first.
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
        /// Waiters whose task was cancelled before they queued.
        var cancelled: Set<UInt64> = []
    }

    private let state: NIOLockedValueBox<State>

    init(_ count: Int) {
        state = NIOLockedValueBox(State(free: count))
    }

    /// Takes a slot; throws `CancellationError` if the task is cancelled first.
    func acquire() async throws {
        try Task.checkCancellation()
        let id = state.withLockedValue { state -> UInt64? in
            guard state.free == 0 else {
                state.free -= 1
                return nil
            }
            state.nextID += 1
            return state.nextID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Now { case wait, take, cancelled }
                let now = state.withLockedValue { state -> Now in
                    if state.cancelled.remove(id) != nil { return .cancelled }
                    // A slot may have been freed since the first look.
                    if state.free > 0 {
                        state.free -= 1
                        return .take
                    }
                    state.waiters.append((id, continuation))
                    return .wait
                }
                switch now {
                case .wait: break
                case .take: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
                if let index = state.waiters.firstIndex(where: { $0.id == id }) {
                    return state.waiters.remove(at: index).continuation
                }
                // Not queued yet: it finds this when it does. (Or it already has
                // its slot: then this entry is never read, and cleared below.)
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume(throwing: CancellationError())
        }
        // Granted after all: the mark a late cancellation left is of no use.
        state.withLockedValue { _ = $0.cancelled.remove(id) }
    }

    func release() {
        let next = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            guard !state.waiters.isEmpty else {
                state.free += 1
                return nil
            }
            // The slot passes straight to the longest waiter.
            return state.waiters.removeFirst().continuation
        }
        next?.resume()
    }
}
