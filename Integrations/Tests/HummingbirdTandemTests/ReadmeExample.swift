import Hummingbird
import HummingbirdAuth
import HummingbirdTandem

/// README's "Swift web apps" example for Hummingbird, compiled with the
/// tests (never run: it serves until stopped) so that it stays right.
func readmeHummingbirdExample() async throws {
    let persist = try TandemPersistDriver(pairs: ["10.0.0.1:11311,10.0.0.2:11311"], secretFile: "/etc/tandem/secret")
    let router = Router(context: BasicSessionRequestContext<String, String>.self)
    router.add(middleware: SessionMiddleware(storage: persist))
    router.post("/login") { _, context in context.sessions.createSession("ann", expiresIn: .seconds(1800)); return "hello" }
    router.get("/me") { _, context in context.sessions.session ?? "nobody" }
    let app = Application(router: router, services: [persist])    // closes its connections on shutdown
    try await app.runService()
}
