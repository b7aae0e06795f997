import Foundation
import Hummingbird
import HummingbirdAuth
import HummingbirdTandem
import Logging

/// What the example keeps in a session: who logged in, and a counter.
struct Visit: Codable, Sendable, Equatable {
    var user: String
    var count: Int
}

/// The request context: sessions of `Visit`, no other identity.
typealias ExampleContext = BasicSessionRequestContext<Visit, String>

/// How the app is run: where it listens, and where its sessions live.
struct ExampleSettings: Sendable {
    var host = "127.0.0.1"
    var port = 8080
    /// One string per Tandem pair, "host:port,host:port" (the nodes' wire ports).
    var pairs: [String] = []
    /// The nodes' shared secret file, if they have one.
    var secretFile: String?
    /// How long a session lives after login.
    var sessionLifetime: Duration = .seconds(30 * 60)

    /// From the environment (`TANDEM_PAIRS`, `TANDEM_SECRET_FILE`, `HOST`,
    /// `PORT`, `SESSION_SECONDS`), then the arguments (`--tandem`,
    /// `--secret-file`, `--host`, `--port`, `--session-seconds`), which win.
    static func from(environment: [String: String], arguments: [String]) throws -> ExampleSettings {
        var settings = ExampleSettings()
        var values = environment
        var index = 0
        let names = ["--tandem": "TANDEM_PAIRS", "--secret-file": "TANDEM_SECRET_FILE", "--host": "HOST", "--port": "PORT", "--session-seconds": "SESSION_SECONDS"]
        while index < arguments.count {
            guard let name = names[arguments[index]], index + 1 < arguments.count else { throw UsageError(arguments[index]) }
            values[name] = arguments[index + 1]
            index += 2
        }
        if let pairs = values["TANDEM_PAIRS"] { settings.pairs = [pairs] }
        settings.secretFile = values["TANDEM_SECRET_FILE"]
        if let host = values["HOST"] { settings.host = host }
        if let port = values["PORT"] {
            guard let number = Int(port) else { throw UsageError("PORT \(port)") }
            settings.port = number
        }
        if let seconds = values["SESSION_SECONDS"] {
            guard let number = Int(seconds), number > 0 else { throw UsageError("SESSION_SECONDS \(seconds)") }
            settings.sessionLifetime = .seconds(number)
        }
        guard !settings.pairs.isEmpty else { throw UsageError("no Tandem pair: set TANDEM_PAIRS or --tandem host:port,host:port") }
        return settings
    }
}

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ what: String) {
        description = """
            \(what)
            usage: hummingbird-sessions --tandem HOST:PORT,HOST:PORT [--secret-file FILE] [--host ADDR] [--port N] [--session-seconds N]
              (or TANDEM_PAIRS, TANDEM_SECRET_FILE, HOST, PORT, SESSION_SECONDS)
            """
    }
}

/// The routes, over sessions kept by `persist`:
/// - `POST /login?user=NAME` starts a session (and sets its cookie);
/// - `GET /me` answers `NAME COUNT` for the session's user, 401 without one;
/// - `POST /count` adds one to the session's counter and answers it;
/// - `POST /logout` ends the session.
func buildRouter(persist: some PersistDriver, sessionLifetime: Duration) -> Router<ExampleContext> {
    let router = Router(context: ExampleContext.self)
    router.add(middleware: SessionMiddleware(storage: persist, defaultSessionExpiration: sessionLifetime))
    router.get("/health") { _, _ in "ok" }
    router.post("/login") { request, context -> String in
        guard let user = request.uri.queryParameters["user"].map(String.init), !user.isEmpty else { throw HTTPError(.badRequest) }
        context.sessions.createSession(Visit(user: user, count: 0), expiresIn: sessionLifetime)
        return "hello \(user)"
    }
    router.get("/me") { _, context -> String in
        guard let visit = context.sessions.session else { throw HTTPError(.unauthorized) }
        return "\(visit.user) \(visit.count)"
    }
    router.post("/count") { _, context -> String in
        // Read and change under the session's lock: the middleware stores it
        // (keeping its expiry) once the response is ready.
        let count = context.sessions.withLockedSession { session -> Int? in
            session?.count += 1
            return session?.count
        }
        guard let count else { throw HTTPError(.unauthorized) }
        return "\(count)"
    }
    router.post("/logout") { _, context -> String in
        context.sessions.clearSession()
        return "bye"
    }
    return router
}

/// The application: the routes, and the driver as a service (so that its
/// connections close when the application stops). `onListening` is told
/// the port the server bound (with `port: 0`, a free one).
func buildApplication(
    settings: ExampleSettings, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let persist = try TandemPersistDriver(pairs: settings.pairs, secretFile: settings.secretFile)
    var logger = Logger(label: "hummingbird-sessions")
    logger.logLevel = .notice
    return Application(
        router: buildRouter(persist: persist, sessionLifetime: settings.sessionLifetime),
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "hummingbird-sessions"),
        services: [persist],
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
}
