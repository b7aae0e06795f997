import Foundation
import NIOHTTP1
import TandemClient
import TandemNodeSupport
import Testing
import Vapor
import VaporTandem
import VaporTesting

/// The nodes as a client-side pair (the node address type left to inference).
func pair(_ nodes: TandemTestNodes) -> TandemPair {
    var pair = TandemPair(.init(host: "127.0.0.1", port: nodes.nodes[0].wirePort))
    pair.nodes = nodes.nodes.map { .init(host: "127.0.0.1", port: $0.wirePort) }
    return pair
}

/// The session cookie a response sets: its value, or "" when it expires the cookie.
func sessionID(_ response: TestingHTTPResponse) -> String? {
    response.headers.setCookie?["vapor-session"].map { $0.expires.map { $0 < Date() } == true ? "" : $0.string }
}

func cookie(_ id: String) -> HTTPHeaders { ["Cookie": "vapor-session=\(id)"] }

/// A test app: POST /set?key=&value=, GET /get?key=, POST /destroy.
func sessionRoutes(_ app: Application) {
    app.middleware.use(app.sessions.middleware)
    app.post("set") { request -> String in
        let key = try request.query.get(String.self, at: "key")
        request.session.data[key] = try request.query.get(String.self, at: "value")
        return "ok"
    }
    app.get("get") { request -> String in
        request.session.data[try request.query.get(String.self, at: "key")] ?? "none"
    }
    app.post("destroy") { request -> String in
        request.session.destroy()
        return "bye"
    }
}

@Suite("Vapor sessions in Tandem (app.sessions.use(.tandem(...)))")
struct TandemSessionsTests {
    @Test("create a session, read it back by its cookie in a later request, update it, destroy it")
    func lifecycle() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let inspector = TandemPairClient(pairs: [pair(nodes)])
            try await withApp(configure: { app in
                app.sessions.use(try .tandem(pairs: [nodes.pairSpec]))
                sessionRoutes(app)
            }) { app in
                let tester = try app.testing(method: .running(hostname: "127.0.0.1", port: 0))
                var id = ""
                try await tester.test(.POST, "set?key=user&value=ann") { response in
                    #expect(response.status == .ok)
                    id = try #require(sessionID(response))
                }
                #expect(!id.isEmpty)
                // In Tandem, as JSON, under the driver's prefix.
                let stored = try #require(try await inspector.get("vapor-session:\(id)"))
                #expect(try JSONDecoder().decode([String: String].self, from: Data(stored.value)) == ["user": "ann"])
                let ttl = try #require(stored.expiresAt).timeIntervalSinceNow
                #expect(ttl > 7 * 24 * 3600 - 60 && ttl <= 7 * 24 * 3600 + 1)

                try await tester.test(.GET, "get?key=user", headers: cookie(id)) { response in
                    #expect(response.body.string == "ann")
                }
                // Without the cookie, not this session (Vapor starts a new, empty one).
                try await tester.test(.GET, "get?key=user") { response in
                    #expect(response.body.string == "none")
                    #expect(sessionID(response) != id)
                }
                try await tester.test(.POST, "set?key=user&value=bob", headers: cookie(id)) { response in
                    // Updated under the same id.
                    #expect(sessionID(response) == id)
                }
                try await tester.test(.GET, "get?key=user", headers: cookie(id)) { response in
                    #expect(response.body.string == "bob")
                }
                let updated = try #require(try await inspector.get("vapor-session:\(id)"))
                #expect(try JSONDecoder().decode([String: String].self, from: Data(updated.value)) == ["user": "bob"])

                try await tester.test(.POST, "destroy", headers: cookie(id)) { response in
                    #expect(response.body.string == "bye")
                    #expect(sessionID(response) == "")
                }
                #expect(try await inspector.get("vapor-session:\(id)") == nil)
                try await tester.test(.GET, "get?key=user", headers: cookie(id)) { response in
                    #expect(response.body.string == "none")
                }
            }
            await inspector.close()
        }
    }

    @Test("a cookie naming no session, or one no key could hold, starts a new session instead of failing")
    func foreignCookies() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            try await withApp(configure: { app in
                app.sessions.use(try .tandem(pairs: [nodes.pairSpec]))
                sessionRoutes(app)
            }) { app in
                for forged in ["nosuchsession", "with%20space", String(repeating: "x", count: 400)] {
                    try await app.testing().test(.GET, "get?key=user", headers: cookie(forged)) { response in
                        #expect(response.status == .ok)
                        #expect(response.body.string == "none")
                    }
                    try await app.testing().test(.POST, "set?key=user&value=eve", headers: cookie(forged)) { response in
                        #expect(response.status == .ok)
                    }
                }
            }
        }
    }

    @Test("a session lives its lifetime after the last request that had it, then is gone")
    func expiry() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let client = TandemPairClient(pairs: [pair(nodes)])
            try await withApp(configure: { app in
                app.sessions.use(.tandem(client, lifetime: .seconds(1)))
                sessionRoutes(app)
            }) { app in
                var id = ""
                try await app.testing().test(.POST, "set?key=user&value=ann") { response in id = sessionID(response) ?? "" }
                let created = Date()
                #expect(!id.isEmpty)
                try await app.testing().test(.GET, "get?key=user", headers: cookie(id)) { #expect($0.body.string == "ann") }
                // Poll until it is gone: its second, plus the second memcached's whole seconds allow.
                var value = "ann"
                var polls = 0
                while value == "ann", polls < 200, Date().timeIntervalSince(created) < 6 {
                    try await Task.sleep(for: .milliseconds(50))
                    // Read straight from Tandem: a request would write the session again.
                    value = try await client.get("vapor-session:\(id)") == nil ? "none" : "ann"
                    polls += 1
                }
                #expect(value == "none")
                let lived = Date().timeIntervalSince(created)
                // No lower bound beyond the read above: the node keeps deadlines
                // in whole seconds, so a 1 s lifetime may end at the next
                // second's boundary, however soon that comes.
                #expect(lived < 4.5, "the session lived \(lived) s")
                try await app.testing().test(.GET, "get?key=user", headers: cookie(id)) { #expect($0.body.string == "none") }
            }
            // The client was given to the provider: it stays open after the app.
            #expect(try await client.get("anything") == nil)
            await client.close()
        }
    }

    @Test("every request that has the session writes it again with a fresh lifetime")
    func slidingLifetime() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let client = TandemPairClient(pairs: [pair(nodes)])
            try await withApp(configure: { app in
                app.sessions.use(.tandem(client, lifetime: .seconds(100), keyPrefix: "s:"))
                sessionRoutes(app)
            }) { app in
                var id = ""
                try await app.testing().test(.POST, "set?key=user&value=ann") { response in id = sessionID(response) ?? "" }
                // Shorten its life behind the app's back, then let a request refresh it.
                #expect(try await client.touch("s:\(id)", expiry: .after(.seconds(5))))
                let short = try #require(try await client.get("s:\(id)")?.expiresAt).timeIntervalSinceNow
                #expect(short <= 5)
                try await app.testing().test(.GET, "get?key=user", headers: cookie(id)) { #expect($0.body.string == "ann") }
                let refreshed = try #require(try await client.get("s:\(id)")?.expiresAt).timeIntervalSinceNow
                #expect(refreshed > 90 && refreshed <= 101)
            }
            await client.close()
        }
    }

    @Test("bad node addresses are refused when the provider is made")
    func badAddresses() {
        #expect(throws: (any Error).self) { _ = try Application.Sessions.Provider.tandem(pairs: ["nowhere"]) }
        #expect(throws: (any Error).self) { _ = try Application.Sessions.Provider.tandem(pairs: []) }
        #expect(throws: (any Error).self) { _ = try Application.Sessions.Provider.tandem(pairs: ["10.0.0.1:11311", "10.0.0.1:11311"]) }
    }
}
