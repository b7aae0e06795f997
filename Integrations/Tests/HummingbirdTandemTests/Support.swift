import Foundation
import Hummingbird
import HummingbirdTesting
import HummingbirdTandem
import TandemNodeSupport

/// Runs `body` with a driver over a fresh standalone tandemd, closing both however it ends.
func withDriver(
    keyPrefix: String = "hb:", _ body: (TandemPersistDriver, TandemTestNodes) async throws -> Void
) async throws {
    try await withTandem(TandemTestNodes.standalone) { nodes in
        let driver = try TandemPersistDriver(pairs: [nodes.pairSpec], keyPrefix: keyPrefix)
        do {
            try await body(driver, nodes)
        } catch {
            try? await driver.shutdown()
            throw error
        }
        try await driver.shutdown()
    }
}

/// A router over `persist` that reads and writes strings, as an app would:
/// PUT /persist/:key (body), PUT /persist/:key/:seconds, GET /persist/:key,
/// GET /persist/:key/ttl, DELETE /persist/:key, PUT /create/:key.
func persistRouter(_ persist: some PersistDriver) -> Router<BasicRequestContext> {
    let router = Router()
    router.put("/persist/:key") { request, context -> HTTPResponse.Status in
        let body = try await request.body.collect(upTo: 1 << 20)
        try await persist.set(key: try context.parameters.require("key"), value: String(buffer: body))
        return .ok
    }
    router.put("/persist/:key/:seconds") { request, context -> HTTPResponse.Status in
        let seconds = try context.parameters.require("seconds", as: Int.self)
        let body = try await request.body.collect(upTo: 1 << 20)
        try await persist.set(key: try context.parameters.require("key"), value: String(buffer: body), expires: .seconds(seconds))
        return .ok
    }
    router.put("/create/:key") { request, context -> HTTPResponse.Status in
        let body = try await request.body.collect(upTo: 1 << 20)
        do {
            try await persist.create(key: try context.parameters.require("key"), value: String(buffer: body))
        } catch let error as PersistError where error == .duplicate {
            return .conflict
        }
        return .created
    }
    router.get("/persist/:key") { _, context -> String? in
        try await persist.get(key: try context.parameters.require("key"), as: String.self)
    }
    router.get("/persist/:key/ttl") { _, context -> String in
        guard let (_, ttl) = try await persist.getWithTTL(key: try context.parameters.require("key"), as: String.self) else {
            throw HTTPError(.notFound)
        }
        return ttl.map { "\($0.components.seconds)" } ?? "none"
    }
    router.delete("/persist/:key") { _, context -> HTTPResponse.Status in
        try await persist.remove(key: try context.parameters.require("key"))
        return .noContent
    }
    return router
}

func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

/// A key no other test uses.
func uniqueKey(_ label: String = "k") -> String { "\(label)-\(UUID().uuidString)" }

extension TestClientProtocol {
    /// The status of the response to a request.
    func status(uri: String, method: HTTPRequest.Method, headers: HTTPFields = [:], body: ByteBuffer? = nil) async throws -> HTTPResponse.Status {
        try await execute(uri: uri, method: method, headers: headers, body: body).status
    }

    /// The body of the response to a request, as text.
    func text(uri: String, method: HTTPRequest.Method, headers: HTTPFields = [:], body: ByteBuffer? = nil) async throws -> String {
        String(buffer: try await execute(uri: uri, method: method, headers: headers, body: body).body)
    }
}
