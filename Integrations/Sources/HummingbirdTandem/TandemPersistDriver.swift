#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import TandemClient
import TandemSessionSupport

/// A Hummingbird `PersistDriver` that keeps its key/value pairs in Tandem:
/// in a pair of nodes that replicate every write and survive restarts, or
/// in several pairs with the keys spread over them by a consistent hash.
///
/// Sessions (hummingbird-auth's `SessionMiddleware`) are the usual use:
///
/// ```swift
/// let persist = try TandemPersistDriver(pairs: ["10.0.0.1:11311,10.0.0.2:11311"])
/// router.add(middleware: SessionMiddleware(storage: persist))
/// let app = Application(router: router, services: [persist])
/// ```
///
/// Values are stored as JSON (`JSONEncoder`, `JSONDecoder`); reading one as
/// a type it does not decode as throws `PersistError.invalidConversion`.
/// Keys are stored under `keyPrefix`, with any byte a memcached key cannot
/// hold (space, control bytes) escaped; a key longer than 250 bytes in all
/// cannot be stored (reading it finds nothing).
///
/// **Expiry** is kept in whole seconds, as memcached keeps it: an item
/// expires within a second after the time it was given. `set` with
/// `expires: nil` keeps the expiry the item has (the driver reads the item
/// and replaces it by a compare-and-set on its stamp, so that a concurrent
/// write is never overwritten with a stale expiry).
///
/// **Failover.** The client follows a promotion of the backup. `get`,
/// `getWithTTL`, `remove` and `set` are retried across it; `create` is not
/// when it may have run (the key could then already hold what it wrote),
/// and throws the client's error instead.
///
/// As a `Service` (pass it to `Application(services:)`) the driver closes
/// the connections it opened when the application shuts down.
public struct TandemPersistDriver: PersistDriver {
    let store: TandemItemStore
    let encoder: JSONEncoder
    let decoder: JSONDecoder

    /// A driver over `client`, which stays the caller's to close.
    /// - Parameters:
    ///   - client: The client of the Tandem pairs.
    ///   - keyPrefix: Put before every key, to keep this driver's items apart
    ///     from others' on the same nodes.
    public init(client: TandemPairClient, keyPrefix: String = "hb:") {
        self.init(store: TandemItemStore(client: client, keyPrefix: keyPrefix, ownsClient: false))
    }

    /// A driver with a client of its own, closed by `shutdown()`.
    /// - Parameters:
    ///   - pairs: One string per pair: its nodes' wire addresses,
    ///     `"host:port,host:port"` (a string may also hold several pairs
    ///     separated by `;`).
    ///   - secretFile: The file holding the nodes' shared secret
    ///     (`tandemd --secret-file`), when they have one.
    ///   - keyPrefix: Put before every key.
    /// - Throws: When an address does not parse or the secret file cannot be read.
    public init(pairs: [String], secretFile: String? = nil, keyPrefix: String = "hb:") throws {
        self.init(store: try TandemItemStore(pairs: pairs, secretFile: secretFile, clientName: "hummingbird", keyPrefix: keyPrefix))
    }

    init(store: TandemItemStore) {
        self.store = store
        self.encoder = JSONEncoder()
        self.decoder = JSONDecoder()
    }

    /// The client the driver uses.
    public var client: TandemPairClient { store.client }

    /// Stores `value` at `key` only if it holds nothing.
    /// - Throws: `PersistError.duplicate` when `key` holds a live item.
    public func create<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        guard try await store.create(key, try encode(value), expires: expires) else { throw PersistError.duplicate }
    }

    /// Stores `value` at `key`, replacing what it holds. With `expires: nil`
    /// an existing item keeps its expiry (a new one never expires).
    public func set<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        try await store.write(key, try encode(value), expires: expires)
    }

    /// The value at `key`, or nil when there is none (or it expired).
    /// - Throws: `PersistError.invalidConversion` when the stored value does not decode as `Object`.
    public func get<Object: Codable & Sendable>(key: String, as object: Object.Type) async throws -> Object? {
        guard let item = try await store.read(key) else { return nil }
        return try decode(item.bytes, as: object)
    }

    /// The value at `key` and the time it has left (nil: it does not expire).
    public func getWithTTL<Object: Codable & Sendable>(key: String, as object: Object.Type) async throws -> (object: Object, ttl: Duration?)? {
        guard let item = try await store.read(key) else { return nil }
        return (try decode(item.bytes, as: object), item.timeToLive)
    }

    /// Deletes the value at `key`, if there is one.
    public func remove(key: String) async throws {
        try await store.remove(key)
    }

    /// Closes the client's connections if the driver opened them.
    public func shutdown() async throws {
        await store.close()
    }

    private func encode(_ value: some Encodable) throws -> [UInt8] {
        Array(try encoder.encode(value))
    }

    private func decode<Object: Decodable>(_ bytes: [UInt8], as object: Object.Type) throws -> Object {
        do {
            return try decoder.decode(object, from: Data(bytes))
        } catch is DecodingError {
            throw PersistError.invalidConversion
        }
    }
}
