import Vapor
import VaporTandem

/// README's "Swift web apps" example for Vapor, compiled with the tests
/// (never run: it serves until stopped) so that it stays right.
func readmeVaporExample() async throws {
    let app = try await Application.make(.detect())
    app.sessions.use(try .tandem(pairs: ["10.0.0.1:11311,10.0.0.2:11311"], secretFile: "/etc/tandem/secret"))
    app.middleware.use(app.sessions.middleware)
    app.post("login") { req in req.session.data["user"] = "ann"; return "hello" }
    app.get("me") { req in req.session.data["user"] ?? "nobody" }
    try await app.execute()
    try await app.asyncShutdown()
}
