import Foundation
import Hummingbird
import HummingbirdTandem
import HummingbirdTesting
import Synchronization
import TandemNodeSupport
import Testing

@testable import HummingbirdSessions

/// The cookie a response sets, as `name=value` to send back.
func sessionCookie(_ response: TestResponse) -> String? {
    response.headers[values: .setCookie].compactMap { header -> String? in
        let pair = header.split(separator: ";", maxSplits: 1).first.map(String.init) ?? ""
        return pair.hasPrefix("SESSION_ID=") ? pair : nil
    }.first
}

func cookieHeader(_ cookie: String) -> HTTPFields { [.cookie: cookie] }

@Suite("The Hummingbird example app, sessions in Tandem (hummingbird-auth's SessionMiddleware)")
struct ExampleAppTests {
    @Test("log in, read the session back by its cookie, count, keep the expiry, log out")
    func sessionLifecycle() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let settings = try ExampleSettings.from(environment: ["TANDEM_PAIRS": nodes.pairSpec], arguments: ["--port", "0"])
            let inspector = try TandemPersistDriver(pairs: [nodes.pairSpec])
            let app = try buildApplication(settings: settings)
            try await app.test(.live) { client in
                let answer1 = try await client.status(uri: "/me", method: .get)
                #expect(answer1 == .unauthorized)
                let loggedIn = Date()
                let login = try await client.execute(uri: "/login?user=ann", method: .post)
                #expect(login.status == .ok)
                let cookie = try #require(sessionCookie(login))
                let id = String(cookie.dropFirst("SESSION_ID=".count))
                // The session is in Tandem under hummingbird-auth's prefix and the driver's.
                let stored = try #require(try await inspector.getWithTTL(key: "hbs.\(id)", as: Visit.self))
                #expect(stored.object == Visit(user: "ann", count: 0))
                let ttl = try #require(stored.ttl)
                #expect(ttl > .seconds(29 * 60) && ttl <= .seconds(30 * 60 + 1))

                let me = try await client.execute(uri: "/me", method: .get, headers: cookieHeader(cookie))
                #expect(String(buffer: me.body) == "ann 0")
                for expected in 1...3 {
                    let count = try await client.execute(uri: "/count", method: .post, headers: cookieHeader(cookie))
                    #expect(String(buffer: count.body) == "\(expected)")
                    // An update sets no new cookie: the session keeps its id and its expiry.
                    #expect(sessionCookie(count) == nil)
                }
                let answer2 = try await client.text(uri: "/me", method: .get, headers: cookieHeader(cookie))
                #expect(answer2 == "ann 3")
                let after = try #require(try await inspector.getWithTTL(key: "hbs.\(id)", as: Visit.self))
                #expect(after.object.count == 3)
                // The updates kept the expiry login gave it (in whole seconds, as memcached's).
                let deadline = Date().addingTimeInterval(Double(try #require(after.ttl).components.seconds))
                #expect(deadline.timeIntervalSince(loggedIn) <= 30 * 60 + 2)

                // Another user's session is their own.
                let bobLogin = try await client.execute(uri: "/login?user=bob", method: .post)
                let bob = try #require(sessionCookie(bobLogin))
                #expect(bob != cookie)
                let answer3 = try await client.text(uri: "/me", method: .get, headers: cookieHeader(bob))
                #expect(answer3 == "bob 0")

                let logout = try await client.execute(uri: "/logout", method: .post, headers: cookieHeader(cookie))
                #expect(logout.status == .ok)
                let answer4 = try await client.status(uri: "/me", method: .get, headers: cookieHeader(cookie))
                #expect(answer4 == .unauthorized)
                #expect(try await inspector.get(key: "hbs.\(id)", as: Visit.self) == nil)
                let answer5 = try await client.text(uri: "/me", method: .get, headers: cookieHeader(bob))
                #expect(answer5 == "bob 0")
            }
            try await inspector.shutdown()
        }
    }

    @Test("a session outlives the application: a new instance on the same pair reads it")
    func sessionOutlivesApp() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let settings = try ExampleSettings.from(environment: [:], arguments: ["--tandem", nodes.pairSpec, "--port", "0"])
            let cookie = try await buildApplication(settings: settings).test(.live) { client in
                let login = try await client.execute(uri: "/login?user=ann", method: .post)
                let cookie = try #require(sessionCookie(login))
                _ = try await client.execute(uri: "/count", method: .post, headers: cookieHeader(cookie))
                return cookie
            }
            try await buildApplication(settings: settings).test(.live) { client in
                let me = try await client.execute(uri: "/me", method: .get, headers: cookieHeader(cookie))
                #expect(String(buffer: me.body) == "ann 1")
            }
        }
    }

    @Test("a session given 1 s expires, and its cookie then finds nothing")
    func sessionExpires() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let settings = try ExampleSettings.from(
                environment: ["TANDEM_PAIRS": nodes.pairSpec, "SESSION_SECONDS": "1"], arguments: ["--port", "0"]
            )
            try await buildApplication(settings: settings).test(.live) { client in
                let login = try await client.execute(uri: "/login?user=ann", method: .post)
                let cookie = try #require(sessionCookie(login))
                let loggedIn = Date()
                let answer6 = try await client.status(uri: "/me", method: .get, headers: cookieHeader(cookie))
                #expect(answer6 == .ok)
                // Poll until it is gone: within its second, plus the second memcached's whole seconds allow.
                var status = HTTPResponse.Status.ok
                var polls = 0
                while status == .ok, polls < 200, Date().timeIntervalSince(loggedIn) < 6 {
                    try await Task.sleep(for: .milliseconds(50))
                    status = try await client.execute(uri: "/me", method: .get, headers: cookieHeader(cookie)).status
                    polls += 1
                }
                #expect(status == .unauthorized)
                let lived = Date().timeIntervalSince(loggedIn)
                // No lower bound beyond the first /me: the node keeps deadlines
                // in whole seconds, so a 1 s session may end at the next second's
                // boundary, however soon that comes.
                #expect(lived < 4.5, "the session lived \(lived) s")
            }
        }
    }

    @Test("settings come from the environment and the arguments, and bad ones are refused")
    func settings() throws {
        let fromEnvironment = try ExampleSettings.from(
            environment: ["TANDEM_PAIRS": "10.0.0.1:11311,10.0.0.2:11311", "PORT": "9000", "TANDEM_SECRET_FILE": "/etc/tandem/secret"],
            arguments: []
        )
        #expect(fromEnvironment.pairs == ["10.0.0.1:11311,10.0.0.2:11311"] && fromEnvironment.port == 9000)
        #expect(fromEnvironment.secretFile == "/etc/tandem/secret")
        let overridden = try ExampleSettings.from(
            environment: ["TANDEM_PAIRS": "10.0.0.1:11311", "PORT": "9000"], arguments: ["--tandem", "10.0.0.9:11311", "--port", "0"]
        )
        #expect(overridden.pairs == ["10.0.0.9:11311"] && overridden.port == 0)
        #expect(throws: UsageError.self) { try ExampleSettings.from(environment: [:], arguments: []) }
        #expect(throws: UsageError.self) { try ExampleSettings.from(environment: ["TANDEM_PAIRS": "x:1"], arguments: ["--port"]) }
        #expect(throws: UsageError.self) { try ExampleSettings.from(environment: ["TANDEM_PAIRS": "x:1", "PORT": "http"], arguments: []) }
    }
}
