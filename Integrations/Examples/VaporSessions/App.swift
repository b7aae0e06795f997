import Vapor
import VaporTandem

/// Where the example's sessions live: read from the environment
/// (`TANDEM_PAIRS`, `TANDEM_SECRET_FILE`, `SESSION_SECONDS`) and the
/// arguments `--tandem`, `--secret-file`, `--session-seconds`, which win
/// and are taken out before Vapor reads the rest (`serve --hostname --port`).
struct ExampleSettings: Sendable {
    /// One string per Tandem pair, "host:port,host:port" (the nodes' wire ports).
    var pairs: [String] = []
    var secretFile: String?
    /// How long a session lives after the last request that had it.
    var sessionLifetime: Duration = .seconds(30 * 60)

    /// The settings, and the arguments left for Vapor.
    static func from(environment: [String: String], arguments: [String]) throws -> (ExampleSettings, [String]) {
        var values = environment
        var rest: [String] = []
        let names = ["--tandem": "TANDEM_PAIRS", "--secret-file": "TANDEM_SECRET_FILE", "--session-seconds": "SESSION_SECONDS"]
        var index = 0
        while index < arguments.count {
            if let name = names[arguments[index]] {
                guard index + 1 < arguments.count else { throw Abort(.badRequest, reason: "\(arguments[index]) needs a value") }
                values[name] = arguments[index + 1]
                index += 2
            } else {
                rest.append(arguments[index])
                index += 1
            }
        }
        var settings = ExampleSettings()
        if let pairs = values["TANDEM_PAIRS"] { settings.pairs = [pairs] }
        settings.secretFile = values["TANDEM_SECRET_FILE"]
        if let seconds = values["SESSION_SECONDS"] {
            guard let number = Int(seconds), number > 0 else { throw Abort(.badRequest, reason: "SESSION_SECONDS \(seconds)") }
            settings.sessionLifetime = .seconds(number)
        }
        guard !settings.pairs.isEmpty else {
            throw Abort(.badRequest, reason: "no Tandem pair: set TANDEM_PAIRS or --tandem host:port,host:port")
        }
        return (settings, rest)
    }
}

/// Sessions in Tandem, and the routes:
/// - `POST /login?user=NAME` starts a session (and sets its cookie);
/// - `GET /me` answers `NAME COUNT` for the session's user, 401 without one;
/// - `POST /count` adds one to the session's counter and answers it;
/// - `POST /logout` ends the session.
func configure(_ app: Application, settings: ExampleSettings) throws {
    app.sessions.use(try .tandem(pairs: settings.pairs, secretFile: settings.secretFile, lifetime: settings.sessionLifetime))
    app.middleware.use(app.sessions.middleware)
    routes(app)
}

func routes(_ app: Application) {
    app.get("health") { _ in "ok" }
    app.post("login") { request -> String in
        guard let user = request.query[String.self, at: "user"], !user.isEmpty else { throw Abort(.badRequest) }
        request.session.data["user"] = user
        request.session.data["count"] = "0"
        return "hello \(user)"
    }
    app.get("me") { request -> String in
        guard let user = request.session.data["user"] else { throw Abort(.unauthorized) }
        return "\(user) \(request.session.data["count"] ?? "0")"
    }
    app.post("count") { request -> String in
        guard request.session.data["user"] != nil else { throw Abort(.unauthorized) }
        let count = Int(request.session.data["count"] ?? "0").map { $0 + 1 } ?? 1
        request.session.data["count"] = String(count)
        return String(count)
    }
    app.post("logout") { request -> String in
        request.session.destroy()
        return "bye"
    }
}
