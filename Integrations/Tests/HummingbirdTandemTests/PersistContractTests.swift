import Foundation
import Hummingbird
import HummingbirdTandem
import HummingbirdTesting
import TandemNodeSupport
import Testing

/// The cases Hummingbird's own persist tests run against its memory driver,
/// here against a real tandemd through the routes of an application.
@Suite("PersistDriver contract, through an application")
struct PersistContractTests {
    @Test("a value set is read back")
    func setThenGet() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                let answer7 = try await client.status(uri: "/persist/\(key)", method: .put, body: body("Persist"))
                #expect(answer7 == .ok)
                let response = try await client.execute(uri: "/persist/\(key)", method: .get)
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "Persist")
            }
        }
    }

    @Test("a value created is read back")
    func createThenGet() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                let answer8 = try await client.status(uri: "/create/\(key)", method: .put, body: body("Created"))
                #expect(answer8 == .created)
                let answer9 = try await client.text(uri: "/persist/\(key)", method: .get)
                #expect(answer9 == "Created")
            }
        }
    }

    @Test("creating a key that holds a value fails with duplicate and leaves the value")
    func createTwice() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                let answer10 = try await client.status(uri: "/create/\(key)", method: .put, body: body("first"))
                #expect(answer10 == .created)
                let answer11 = try await client.status(uri: "/create/\(key)", method: .put, body: body("second"))
                #expect(answer11 == .conflict)
                let answer12 = try await client.text(uri: "/persist/\(key)", method: .get)
                #expect(answer12 == "first")
            }
            // And straight through the driver: the error is PersistError.duplicate.
            let key = uniqueKey()
            try await persist.create(key: key, value: 1, expires: .seconds(60))
            await #expect(throws: PersistError.duplicate) { try await persist.create(key: key, value: 2, expires: nil) }
        }
    }

    @Test("a second set replaces the first")
    func setTwice() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                let answer13 = try await client.status(uri: "/persist/\(key)", method: .put, body: body("test1"))
                #expect(answer13 == .ok)
                let answer14 = try await client.status(uri: "/persist/\(key)", method: .put, body: body("test2"))
                #expect(answer14 == .ok)
                let answer15 = try await client.text(uri: "/persist/\(key)", method: .get)
                #expect(answer15 == "test2")
            }
        }
    }

    @Test("a value that expires in 0 s is gone at once; one that expires in 10 s is there")
    func expires() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let gone = uniqueKey("gone")
                let kept = uniqueKey("kept")
                _ = try await client.execute(uri: "/persist/\(gone)/0", method: .put, body: body("ThisIsTest1"))
                _ = try await client.execute(uri: "/persist/\(kept)/10", method: .put, body: body("ThisIsTest2"))
                let answer16 = try await client.status(uri: "/persist/\(gone)", method: .get)
                #expect(answer16 == .noContent)
                let response = try await client.execute(uri: "/persist/\(kept)", method: .get)
                #expect(String(buffer: response.body) == "ThisIsTest2")
            }
        }
    }

    @Test("the time to live of a value set to expire in 10 s is at most 10 s and more than 1 s")
    func timeToLive() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                _ = try await client.execute(uri: "/persist/\(key)/10", method: .put, body: body("ThisIsTest2"))
                let ttl = try #require(Int(try await client.text(uri: "/persist/\(key)/ttl", method: .get)))
                #expect(ttl <= 10 && ttl > 1)
                // A value set without an expiry has none.
                let forever = uniqueKey()
                _ = try await client.execute(uri: "/persist/\(forever)", method: .put, body: body("x"))
                let answer17 = try await client.text(uri: "/persist/\(forever)/ttl", method: .get)
                #expect(answer17 == "none")
            }
        }
    }

    struct Note: Codable, Equatable {
        var text: String
        var count: Int
        var tags: [String]
    }

    @Test("Codable values round-trip as JSON")
    func codable() async throws {
        try await withDriver { persist, _ in
            let router = persistRouter(persist)
            router.put("/note/:key") { request, context -> HTTPResponse.Status in
                let text = String(buffer: try await request.body.collect(upTo: 1 << 20))
                try await persist.set(key: try context.parameters.require("key"), value: Note(text: text, count: 3, tags: ["a", "b"]))
                return .ok
            }
            router.get("/note/:key") { _, context -> String? in
                try await persist.get(key: try context.parameters.require("key"), as: Note.self).map { "\($0.text) \($0.count) \($0.tags)" }
            }
            let app = Application(router: router)
            try await app.test(.router) { client in
                let key = uniqueKey()
                _ = try await client.execute(uri: "/note/\(key)", method: .put, body: body("Persist"))
                let answer18 = try await client.text(uri: "/note/\(key)", method: .get)
                #expect(answer18 == "Persist 3 [\"a\", \"b\"]")
            }
            // Straight through the driver too, with the value compared whole.
            let key = uniqueKey()
            let note = Note(text: "é ✓ \"quoted\"", count: -1, tags: [])
            try await persist.set(key: key, value: note, expires: .seconds(60))
            #expect(try await persist.get(key: key, as: Note.self) == note)
        }
    }

    @Test("reading a value as a type it does not decode as throws invalidConversion")
    func invalidConversion() async throws {
        try await withDriver { persist, _ in
            let router = persistRouter(persist)
            let key = uniqueKey()
            router.put("/invalid") { _, _ -> HTTPResponse.Status in
                try await persist.set(key: key, value: Note(text: "hello", count: 1, tags: []))
                return .ok
            }
            router.get("/invalid") { _, _ -> String? in
                do {
                    return try await persist.get(key: key, as: String.self)
                } catch let error as PersistError where error == .invalidConversion {
                    throw HTTPError(.badRequest)
                }
            }
            let app = Application(router: router)
            try await app.test(.router) { client in
                let answer19 = try await client.status(uri: "/invalid", method: .put)
                #expect(answer19 == .ok)
                let answer20 = try await client.status(uri: "/invalid", method: .get)
                #expect(answer20 == .badRequest)
            }
            await #expect(throws: PersistError.invalidConversion) { _ = try await persist.getWithTTL(key: key, as: Int.self) }
        }
    }

    @Test("a value removed is gone, and removing nothing is no error")
    func remove() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                _ = try await client.execute(uri: "/persist/\(key)", method: .put, body: body("ThisIsTest1"))
                let answer21 = try await client.status(uri: "/persist/\(key)", method: .get)
                #expect(answer21 == .ok)
                let answer22 = try await client.status(uri: "/persist/\(key)", method: .delete)
                #expect(answer22 == .noContent)
                let answer23 = try await client.status(uri: "/persist/\(key)", method: .get)
                #expect(answer23 == .noContent)
                let answer24 = try await client.status(uri: "/persist/\(key)", method: .delete)
                #expect(answer24 == .noContent)
            }
        }
    }

    @Test("a key whose value expired takes a new one, and create succeeds on it")
    func expireThenAdd() async throws {
        try await withDriver { persist, _ in
            let app = Application(router: persistRouter(persist))
            try await app.test(.router) { client in
                let key = uniqueKey()
                _ = try await client.execute(uri: "/persist/\(key)/0", method: .put, body: body("ThisIsTest1"))
                let answer25 = try await client.status(uri: "/persist/\(key)", method: .get)
                #expect(answer25 == .noContent)
                let answer26 = try await client.status(uri: "/persist/\(key)/10", method: .put, body: body("ThisIsTest1"))
                #expect(answer26 == .ok)
                let response = try await client.execute(uri: "/persist/\(key)", method: .get)
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "ThisIsTest1")

                let created = uniqueKey()
                _ = try await client.execute(uri: "/persist/\(created)/0", method: .put, body: body("old"))
                let answer27 = try await client.status(uri: "/create/\(created)", method: .put, body: body("new"))
                #expect(answer27 == .created)
                let answer28 = try await client.text(uri: "/persist/\(created)", method: .get)
                #expect(answer28 == "new")
            }
        }
    }

    @Test("as a service of the application the driver serves while it runs and closes its client when it stops")
    func runsAsService() async throws {
        try await withTandem(TandemTestNodes.standalone) { nodes in
            let persist = try TandemPersistDriver(pairs: [nodes.pairSpec])
            let app = Application(router: persistRouter(persist), services: [persist])
            let key = uniqueKey()
            try await app.test(.live) { client in
                _ = try await client.execute(uri: "/persist/\(key)/10", method: .put, body: body("NotExpired"))
                let answer29 = try await client.text(uri: "/persist/\(key)", method: .get)
                #expect(answer29 == "NotExpired")
            }
            // The application stopped, and with it the driver's client: a request now is not sent.
            await #expect(throws: (any Error).self) { _ = try await persist.get(key: key, as: String.self) }
            // The value outlives the application: another driver reads it.
            let other = try TandemPersistDriver(pairs: [nodes.pairSpec])
            #expect(try await other.get(key: key, as: String.self) == "NotExpired")
            try await other.shutdown()
        }
    }
}
