import Foundation
import SessionPersistence
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// `backup` over the wire: the answer, the refusals, and a connection that stays usable after them.
@Suite("backup over the wire", .serialized)
struct BackupRequestTests {
    /// A standalone node with a wire port, with or without persistence.
    func withNode(persistence directory: String?, _ body: (TestClient, TandemClient) async throws -> Void) async throws {
        try await withServer(configure: { configuration in
            configuration.pair = PairConfiguration(wireHost: "127.0.0.1", wirePort: 0, role: .primary)
            configuration.persistence = directory.map { PersistenceConfiguration(dataDirectory: $0, flushIntervalMillis: 10) }
        }) { server, _ in
            let memcached = try TestClient(port: server.port)
            defer { memcached.close() }
            let wirePort = try #require(server.wirePort)
            let client = try await TandemClient.connect(host: "127.0.0.1", port: wirePort)
            do {
                try await body(memcached, client)
            } catch {
                try? await client.close()
                throw error
            }
            try await client.close()
        }
    }

    @Test("backupDone names the copy; a refused backup is an error answer and the connection stays usable")
    func backupAndRefusal() async throws {
        let base = NSTemporaryDirectory() + "tandem-backup-request-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: base) }
        try await withNode(persistence: base + "/data") { memcached, client in
            for i in 0..<50 { try await memcached.expectReply("set k\(i) 0 0 1\r\nv\r\n", "STORED\r\n") }
            // Acknowledged writes are in the copy without waiting for the flush interval: the node commits first.
            let summary = try await client.backup(to: base + "/copy")
            #expect(summary.path == base + "/copy" && summary.items == 50 && summary.bytes > 0)
            #expect(FileManager.default.fileExists(atPath: base + "/copy/tandem.sqlite3"))

            await #expect {
                _ = try await client.backup(to: base + "/copy")
            } throws: { error in
                guard case TandemClientError.server(let wire) = error else { return false }
                return wire.code == .internalError && wire.message.contains("not empty")
            }
            _ = try await client.ping()
        }
    }

    @Test("a node without persistence answers unavailable, and the connection stays usable")
    func withoutPersistence() async throws {
        try await withNode(persistence: nil) { _, client in
            await #expect {
                _ = try await client.backup(to: "/tmp/never-written")
            } throws: { error in
                guard case TandemClientError.server(let wire) = error else { return false }
                return wire.code == .unavailable && wire.message.contains("--no-persistence")
            }
            _ = try await client.ping()
        }
    }
}
