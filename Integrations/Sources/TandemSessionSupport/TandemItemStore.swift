#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TandemClient

// Every use of TandemPairClient's data API by the framework drivers is in
// this file, so that a change to that API is one edit here.

/// An item as the drivers read it: the bytes stored, when it expires, and
/// the stamp that a conditional write names.
package struct StoredItem: Sendable {
    /// The value as stored (the drivers' JSON).
    package var bytes: [UInt8]
    /// Time left before the node drops the item; nil: no expiry.
    package var timeToLive: Duration?
    /// The item's CAS token, for a conditional rewrite.
    package var stamp: UInt64
    /// The expiry the driver was asked for, in whole Unix seconds (0: none;
    /// see `TandemItemStore.write`).
    package var intendedExpiry: UInt32
    /// The node's deadline for the item; nil: none.
    package var expiresAt: Date?
}

/// Errors of the drivers themselves (the client's own errors pass through
/// as `TandemClientError`).
package enum TandemItemStoreError: Error, CustomStringConvertible, Equatable {
    /// The key, escaped and prefixed, is longer than the 250 bytes memcached
    /// keys may have.
    case keyTooLong(String)
    /// Other clients kept changing the item while a write that keeps its
    /// expiry tried to replace it.
    case contended(String)

    package var description: String {
        switch self {
        case .keyTooLong(let key): return "the key \(key.prefix(40))… is longer than a Tandem key may be (250 bytes with its prefix)"
        case .contended(let key): return "the item at \(key) kept changing while it was being replaced"
        }
    }
}

/// A `TandemPairClient` as the drivers use it: keys under a prefix and made
/// valid for memcached, and a write that keeps an item's expiry.
package struct TandemItemStore: Sendable {
    /// The client of the Tandem pairs.
    package let client: TandemPairClient
    /// Put before every key.
    package let keyPrefix: String
    /// Whether `close()` closes the client (the driver opened it).
    package let ownsClient: Bool

    /// A store over `client`; `ownsClient`: `close()` closes it.
    package init(client: TandemPairClient, keyPrefix: String, ownsClient: Bool) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.ownsClient = ownsClient
    }

    /// Opens a client for `pairs` ("host:port,host:port" each; see `NodeList`).
    package init(pairs: [String], secretFile: String?, clientName: String, keyPrefix: String) throws {
        var configuration = TandemPairClient.Configuration()
        configuration.name = clientName
        configuration.secret = try NodeList.secret(file: secretFile)
        let client = TandemPairClient(pairs: try NodeList.pairs(pairs), configuration: configuration)
        self.init(client: client, keyPrefix: keyPrefix, ownsClient: true)
    }

    // MARK: Keys

    /// The Tandem key of `key`: the prefix, then the key with every byte
    /// that a memcached key cannot hold (space, control bytes, DEL) and `%`
    /// itself written as `%XX`, so that distinct keys stay distinct.
    package func tandemKey(_ key: String) throws -> String {
        let escaped = keyPrefix + Self.escape(key)
        guard escaped.utf8.count <= Self.maximumKeyLength else { throw TandemItemStoreError.keyTooLong(key) }
        return escaped
    }

    /// memcached's limit on a key, in bytes.
    package static let maximumKeyLength = 250

    /// `key` with the bytes a memcached key cannot hold, and `%`, as `%XX`.
    package static func escape(_ key: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(key.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in key.utf8 {
            if byte <= 0x20 || byte == 0x7F || byte == UInt8(ascii: "%") {
                bytes.append(UInt8(ascii: "%"))
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0x0F)])
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Data

    /// The item at `key`, or nil; nil too for a key too long to be stored
    /// (it can hold nothing: a session cookie is the client's to send).
    package func read(_ key: String) async throws -> StoredItem? {
        guard let tandemKey = try? tandemKey(key) else { return nil }
        guard let item = try await client.get(tandemKey) else { return nil }
        return StoredItem(
            bytes: item.value,
            timeToLive: item.expiresAt.map { Self.duration(until: $0) },
            stamp: item.stamp,
            intendedExpiry: item.flags,
            expiresAt: item.expiresAt
        )
    }

    /// Stores `bytes` only if `key` holds nothing; false: it holds an item.
    package func create(_ key: String, _ bytes: [UInt8], expires: Duration?) async throws -> Bool {
        let expiry = Self.expiry(expires)
        return try await client.add(try tandemKey(key), value: bytes, flags: expiry.flags, expiry: expiry.expiry)
    }

    /// Stores `bytes` at `key`. With `expires` the item expires that long
    /// from now; with nil it keeps the expiry it has (none for a new item).
    ///
    /// Tandem, as memcached, takes a TTL in whole seconds from when the
    /// node runs the write, so writing the time left again on every update
    /// would move the expiry by up to a second each time, and an item
    /// updated often would never expire. The driver instead records the
    /// expiry it was asked for in the item's flags (Unix seconds, to the
    /// nearest) and rewrites from that, by a compare-and-set on the stamp
    /// it read, sending the whole seconds nearest to what is left: however
    /// often it is updated, the item expires within a second of the time it
    /// was first given.
    package func write(_ key: String, _ bytes: [UInt8], expires: Duration?) async throws {
        let tandemKey = try tandemKey(key)
        if expires != nil {
            let expiry = Self.expiry(expires)
            try await client.set(tandemKey, value: bytes, flags: expiry.flags, expiry: expiry.expiry)
            return
        }
        try await retryingUnknownOutcomes(tandemKey) {
            guard let item = try await client.get(tandemKey) else {
                return try await client.add(tandemKey, value: bytes, flags: 0, expiry: .never)
            }
            let kept = Self.keptExpiry(flags: item.flags, expiresAt: item.expiresAt)
            let result = try await client.compareAndSet(tandemKey, value: bytes, flags: kept.flags, expiry: kept.expiry, stamp: item.stamp)
            if case .stored = result { return true }
            return false
        }
    }

    /// Stores `bytes` whatever `key` holds, expiring `expires` from now (nil: never).
    package func replaceAll(_ key: String, _ bytes: [UInt8], expires: Duration?) async throws {
        let expiry = Self.expiry(expires)
        try await client.set(try tandemKey(key), value: bytes, flags: expiry.flags, expiry: expiry.expiry)
    }

    /// Deletes the item at `key`, if any. Deleting twice leaves what
    /// deleting once does, so an outcome lost in a failover is retried.
    package func remove(_ key: String) async throws {
        guard let tandemKey = try? tandemKey(key) else { return }
        try await retryingUnknownOutcomes(tandemKey) {
            _ = try await client.delete(tandemKey)
            return true
        }
    }

    /// Closes the client if the store opened it.
    package func close() async {
        if ownsClient { await client.close() }
    }

    // MARK: Expiry

    /// The expiry to send for `expires` from now, and the flags that record it.
    static func expiry(_ expires: Duration?, now: Date = Date()) -> (expiry: TandemExpiry, flags: UInt32) {
        guard let expires else { return (.never, 0) }
        guard expires > .zero else { return (.after(.zero), 0) }
        let deadline = now.timeIntervalSince1970 + Double(expires.components.seconds) + Double(expires.components.attoseconds) / 1e18
        return (.after(expires), record(deadline))
    }

    /// What a write that keeps an item's expiry sends: the whole seconds
    /// nearest to the time left until the recorded expiry (or, with none
    /// recorded, the deadline the node reports, recorded from then on), so
    /// that the node need not round them up.
    static func keptExpiry(flags: UInt32, expiresAt: Date?, now: Date = Date()) -> (expiry: TandemExpiry, flags: UInt32) {
        let deadline: Double
        if flags != 0 {
            deadline = Double(flags)
        } else if let expiresAt {
            deadline = expiresAt.timeIntervalSince1970
        } else {
            return (.never, 0)
        }
        let left = (deadline - now.timeIntervalSince1970).rounded()
        // Less than half a second left: it expires now, as it was about to.
        guard left >= 1 else { return (.after(.zero), flags) }
        return (.after(.seconds(Int64(min(left, Double(Int64.max / 2_000))))), flags != 0 ? flags : record(deadline))
    }

    /// A deadline (Unix seconds) as the flags record it: the nearest whole
    /// second; 0 (nothing recorded) past 2106, which the flags cannot hold:
    /// such an item keeps the deadline the node reports instead.
    static func record(_ deadline: Double) -> UInt32 {
        let seconds = deadline.rounded()
        return seconds >= 1 && seconds < Double(UInt32.max) ? UInt32(seconds) : 0
    }

    static func duration(until date: Date, now: Date = Date()) -> Duration {
        let left = date.timeIntervalSince(now)
        return left > 0 ? .milliseconds(Int64((left * 1000).rounded(.down))) : .zero
    }

    // MARK: Retries

    /// Runs `attempt` until it reports done. A conditional write that lost
    /// a race is tried again from a fresh read; so is one whose outcome the
    /// client could not know (the connection went away after sending it, a
    /// failover): only writes whose second run does what the first did go
    /// through here. Bounded in tries and in time.
    private func retryingUnknownOutcomes(_ key: String, _ attempt: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now.advanced(by: client.configuration.failoverTimeout)
        var tries = 0
        while true {
            tries += 1
            do {
                if try await attempt() { return }
                if tries >= 64 { throw TandemItemStoreError.contended(key) }
            } catch let error as TandemClientError where Self.outcomeUnknown(error) {
                guard tries < 64, ContinuousClock.now < deadline else { throw error }
            }
        }
    }

    static func outcomeUnknown(_ error: TandemClientError) -> Bool {
        switch error {
        case .connectionClosed, .timedOut: return true
        case .server(let wire): return wire.code == .outcomeUnknown
        default: return false
        }
    }
}
