import Foundation
import TandemClient
import TandemSessionSupport
import Vapor

/// A Vapor session driver that keeps sessions in Tandem: in a pair of nodes
/// that replicate every write and survive restarts, or in several pairs
/// with the sessions spread over them by a consistent hash.
///
/// ```swift
/// app.sessions.use(try .tandem(pairs: ["10.0.0.1:11311,10.0.0.2:11311"]))
/// app.middleware.use(app.sessions.middleware)
/// ```
///
/// A session is stored as JSON under `keyPrefix` and its id, and lives
/// `lifetime` after it was last written: Vapor's `SessionsMiddleware`
/// writes it again at the end of every request that has it, so it expires
/// `lifetime` after the last request (as its cookie, one week by default,
/// does). Expiry is kept in whole seconds, as memcached keeps it.
///
/// **Failover.** The client follows a promotion of the backup. Reads,
/// updates and deletes are retried across it; creating a session is not
/// when it may have run, and the request fails instead.
public struct TandemSessions: AsyncSessionDriver {
    let store: TandemItemStore
    /// How long a session lives after it was last written.
    public let lifetime: Duration

    /// A driver over `client`, which stays the caller's to close.
    /// - Parameters:
    ///   - client: The client of the Tandem pairs.
    ///   - lifetime: How long a session lives after it was last written.
    ///   - keyPrefix: Put before every session id, to keep sessions apart
    ///     from other items on the same nodes.
    public init(client: TandemPairClient, lifetime: Duration = TandemSessions.defaultLifetime, keyPrefix: String = "vapor-session:") {
        self.init(store: TandemItemStore(client: client, keyPrefix: keyPrefix, ownsClient: false), lifetime: lifetime)
    }

    init(store: TandemItemStore, lifetime: Duration) {
        self.store = store
        self.lifetime = lifetime
    }

    /// One week, as the cookie of Vapor's default `SessionsConfiguration`.
    public static let defaultLifetime: Duration = .seconds(7 * 24 * 3600)

    /// The client the driver uses.
    public var client: TandemPairClient { store.client }

    /// Stores `data` under a new random id (32 random bytes, base64, as
    /// Vapor's own drivers make them) that no session holds yet.
    public func createSession(_ data: SessionData, for request: Request) async throws -> SessionID {
        let bytes = try JSONEncoder().encode(data)
        // A duplicate id is as good as impossible; a few tries make it harmless.
        for _ in 0..<4 {
            let id = SessionID(string: Data((0..<32).map { _ in UInt8.random(in: .min ... .max) }).base64EncodedString())
            if try await store.create(id.string, Array(bytes), expires: lifetime) { return id }
        }
        throw Abort(.internalServerError, reason: "no free session id after four tries")
    }

    /// The session's data, or nil: no such session, it expired, or what is
    /// stored is not a session (logged).
    public func readSession(_ sessionID: SessionID, for request: Request) async throws -> SessionData? {
        guard let item = try await store.read(sessionID.string) else { return nil }
        do {
            return try JSONDecoder().decode(SessionData.self, from: Data(item.bytes))
        } catch {
            request.logger.warning("session \(sessionID.string.prefix(8))… holds no session data: \(error)")
            return nil
        }
    }

    /// Stores `data` for the session, which lives `lifetime` from now.
    public func updateSession(_ sessionID: SessionID, to data: SessionData, for request: Request) async throws -> SessionID {
        try await store.replaceAll(sessionID.string, Array(try JSONEncoder().encode(data)), expires: lifetime)
        return sessionID
    }

    /// Deletes the session, if it is there.
    public func deleteSession(_ sessionID: SessionID, for request: Request) async throws {
        try await store.remove(sessionID.string)
    }
}

extension Application.Sessions.Provider {
    /// Sessions in Tandem, through `client` (which stays the caller's to close).
    /// - Parameters:
    ///   - client: The client of the Tandem pairs.
    ///   - lifetime: How long a session lives after it was last written.
    ///   - keyPrefix: Put before every session id.
    public static func tandem(
        _ client: TandemPairClient, lifetime: Duration = TandemSessions.defaultLifetime, keyPrefix: String = "vapor-session:"
    ) -> Self {
        let driver = TandemSessions(client: client, lifetime: lifetime, keyPrefix: keyPrefix)
        return .init { app in app.sessions.use { _ in driver } }
    }

    /// Sessions in Tandem, through a client of their own that the
    /// application closes when it shuts down.
    /// - Parameters:
    ///   - pairs: One string per pair: its nodes' wire addresses,
    ///     `"host:port,host:port"` (a string may also hold several pairs
    ///     separated by `;`).
    ///   - secretFile: The file holding the nodes' shared secret
    ///     (`tandemd --secret-file`), when they have one.
    ///   - lifetime: How long a session lives after it was last written.
    ///   - keyPrefix: Put before every session id.
    /// - Throws: When an address does not parse or the secret file cannot be read.
    public static func tandem(
        pairs: [String], secretFile: String? = nil, lifetime: Duration = TandemSessions.defaultLifetime,
        keyPrefix: String = "vapor-session:"
    ) throws -> Self {
        let store = try TandemItemStore(pairs: pairs, secretFile: secretFile, clientName: "vapor", keyPrefix: keyPrefix)
        let driver = TandemSessions(store: store, lifetime: lifetime)
        return .init { app in
            app.sessions.use { _ in driver }
            app.lifecycle.use(ClosesClient(store: store))
        }
    }
}

/// Closes a client the provider opened when the application shuts down.
struct ClosesClient: LifecycleHandler {
    let store: TandemItemStore

    func shutdownAsync(_ application: Application) async {
        await store.close()
    }

    func shutdown(_ application: Application) {
        let store = store
        Task { await store.close() }
    }
}
