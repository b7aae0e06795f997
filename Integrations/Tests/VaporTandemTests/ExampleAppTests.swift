import Foundation
import NIOHTTP1
import TandemNodeSupport
import Testing
import Vapor
import VaporTesting

@testable import VaporSessions

@Suite("The Vapor example app, sessions in Tandem")
struct VaporExampleAppTests {
    @Test("log in, read the session back, count, log out; a new app instance reads the same sessions")
    func loginCountLogout() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let (settings, rest) = try ExampleSettings.from(environment: [:], arguments: ["vapor-sessions", "--tandem", nodes.pairSpec, "serve"])
            #expect(rest == ["vapor-sessions", "serve"])
            var id = ""
            try await withApp(configure: { try configure($0, settings: settings) }) { app in
                let tester = try app.testing(method: .running(hostname: "127.0.0.1", port: 0))
                try await tester.test(.GET, "me") { #expect($0.status == .unauthorized) }
                try await tester.test(.POST, "login?user=ann") { response in
                    #expect(response.body.string == "hello ann")
                    id = sessionID(response) ?? ""
                }
                #expect(!id.isEmpty)
                try await tester.test(.GET, "me", headers: cookie(id)) { #expect($0.body.string == "ann 0") }
                for expected in 1...3 {
                    try await tester.test(.POST, "count", headers: cookie(id)) { #expect($0.body.string == "\(expected)") }
                }
            }
            // Another instance of the app, on the same pair.
            try await withApp(configure: { try configure($0, settings: settings) }) { app in
                let tester = try app.testing()
                try await tester.test(.GET, "me", headers: cookie(id)) { #expect($0.body.string == "ann 3") }
                try await tester.test(.POST, "logout", headers: cookie(id)) { #expect($0.body.string == "bye") }
                try await tester.test(.GET, "me", headers: cookie(id)) { #expect($0.status == .unauthorized) }
            }
        }
    }

    @Test("settings come from the environment and the arguments, and a missing pair is refused")
    func settings() throws {
        let (fromEnvironment, _) = try ExampleSettings.from(
            environment: ["TANDEM_PAIRS": "10.0.0.1:11311,10.0.0.2:11311", "SESSION_SECONDS": "60"], arguments: []
        )
        #expect(fromEnvironment.pairs == ["10.0.0.1:11311,10.0.0.2:11311"] && fromEnvironment.sessionLifetime == .seconds(60))
        let (overridden, rest) = try ExampleSettings.from(
            environment: ["TANDEM_PAIRS": "10.0.0.1:11311"], arguments: ["app", "serve", "--tandem", "10.0.0.9:11311", "--port", "8081"]
        )
        #expect(overridden.pairs == ["10.0.0.9:11311"])
        #expect(rest == ["app", "serve", "--port", "8081"])
        #expect(throws: (any Error).self) { try ExampleSettings.from(environment: [:], arguments: []) }
        #expect(throws: (any Error).self) { try ExampleSettings.from(environment: ["TANDEM_PAIRS": "x:1", "SESSION_SECONDS": "-1"], arguments: []) }
    }
}
