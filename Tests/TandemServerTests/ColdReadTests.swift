import Foundation
import SessionPersistence
import Replication
import SessionStore
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// A node whose data is larger than `-m`: values leave RAM and come back
/// from the log, through every protocol, in order.
@Suite("Values beyond RAM", .serialized)
struct ColdReadTests {
    static let valueSize = 2000
    static let items = 300

    func value(_ index: Int) -> String { filler(Self.valueSize, seed: index) }

    /// A node with persistence and 256 KB of memory (the data is 2.3 times
    /// that), a wire port for the admin requests, and its data directory.
    func withSmallNode(_ body: (TandemNode, TestClient) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "tandem-cold-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await withServer(configure: { configuration in
            configuration.store.memoryLimit = 256 << 10
            configuration.persistence = PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: 10)
            configuration.pair = PairConfiguration(wireHost: "127.0.0.1", wirePort: 0, role: .primary)
        }) { server, _ in
            let client = try TestClient(port: server.port)
            defer { client.close() }
            try await body(server, client)
        }
    }

    /// Writes every item, letting the writer commit between batches (a value
    /// may leave RAM only once committed).
    func fill(_ client: TestClient) async throws {
        for index in 0..<Self.items {
            #expect(try await client.exchange("set k\(index) \(index) 0 \(Self.valueSize)\r\n\(value(index))\r\n") == "STORED\r\n")
            if index % 20 == 19 {
                #expect(try await eventually { try await client.stats()["persistence_pending"] == "0" })
            }
        }
        #expect(try await eventually { try await client.stats()["persistence_pending"] == "0" })
    }

    @Test("every value comes back through get, gets, a pipeline, mg, gat and binary GET; the items stay and nothing is evicted")
    func everyValueComesBack() async throws {
        try await withSmallNode { _, client in
            try await fill(client)
            let before = try await client.stats()
            #expect(before["curr_items"] == "\(Self.items)")
            #expect(before["evictions"] == "0")
            #expect(Int(before["cold_items"] ?? "0")! > Self.items / 2)
            #expect(Int(before["bytes"] ?? "0")! <= 320 << 10)

            // One at a time.
            for index in stride(from: 0, to: Self.items, by: 7) {
                #expect(try await client.exchange("get k\(index)\r\n") == "VALUE k\(index) \(index) \(Self.valueSize)\r\n\(value(index))\r\nEND\r\n")
            }
            // One get of every key: more values than RAM holds, in order.
            let keys = (0..<Self.items).map { "k\($0)" }.joined(separator: " ")
            let expected = (0..<Self.items).map { "VALUE k\($0) \($0) \(Self.valueSize)\r\n\(value($0))\r\n" }.joined() + "END\r\n"
            #expect(try await client.exchange("get \(keys)\r\n") == expected)
            // A pipeline mixing cold reads with other commands keeps its order.
            var pipeline = ""
            var answers = ""
            for index in stride(from: 3, to: Self.items, by: 11) {
                pipeline += "get k\(index)\r\nset p\(index) 0 0 1\r\nx\r\nmn\r\n"
                answers += "VALUE k\(index) \(index) \(Self.valueSize)\r\n\(value(index))\r\nEND\r\nSTORED\r\nMN\r\n"
            }
            try await client.send(pipeline)
            #expect(try await client.read(until: answers.suffix(40).description) == answers)
            // Meta: the header alone needs no read; with v the value comes.
            #expect(try await client.exchange("mg k5 s f\r\n") == "HD s\(Self.valueSize) f5\r\n")
            #expect(try await client.exchange("mg k6 v\r\n") == "VA \(Self.valueSize)\r\n\(value(6))\r\n")
            // gat and touch read the value first (the new row carries it), then apply.
            #expect(try await client.exchange("gat 3600 k8\r\n") == "VALUE k8 8 \(Self.valueSize)\r\n\(value(8))\r\nEND\r\n")
            #expect(try await client.exchange("touch k9 3600\r\n") == "TOUCHED\r\n")
            #expect(try await client.exchange("append k10 0 0 3\r\n+++\r\n") == "STORED\r\n")
            #expect(try await client.exchange("get k10\r\n") == "VALUE k10 10 \(Self.valueSize + 3)\r\n\(value(10))+++\r\nEND\r\n")

            let after = try await client.stats()
            #expect(after["evictions"] == "0")
            #expect(Int(after["cold_reads"] ?? "0")! > 100)
            #expect(Int(after["values_loaded"] ?? "0")! > 100)
            #expect(after["cold_read_errors"] == "0")
        }
    }

    @Test("binary GET and GETK of cold items, pipelined with quiet gets, answer in order")
    func binaryProtocol() async throws {
        try await withSmallNode { server, text in
            try await fill(text)
            // A connection of its own: the first byte decides the protocol.
            let client = try TestClient(port: server.port)
            defer { client.close() }
            var request: [UInt8] = []
            let indices = [0, 1, 2, 150, 299, 3]
            for (position, index) in indices.enumerated() {
                let key = Array("k\(index)".utf8)
                // GETKQ for all but the last, which is a plain GETK: its answer ends the batch.
                let opcode: UInt8 = position == indices.count - 1 ? 0x0C : 0x0D
                request += [0x80, opcode, 0, UInt8(key.count), 0, 0, 0, 0]
                request += withUnsafeBytes(of: UInt32(key.count).bigEndian, Array.init)
                request += withUnsafeBytes(of: UInt32(position).bigEndian, Array.init)
                request += [UInt8](repeating: 0, count: 8) + key
            }
            try await client.send(request)
            for (position, index) in indices.enumerated() {
                let header = try await client.readBytes(count: 24)
                #expect(header[0] == 0x81)
                #expect(header[6] == 0 && header[7] == 0, "status of k\(index)")
                let bodyLength = Int(header[8]) << 24 | Int(header[9]) << 16 | Int(header[10]) << 8 | Int(header[11])
                let opaque = Int(header[12]) << 24 | Int(header[13]) << 16 | Int(header[14]) << 8 | Int(header[15])
                #expect(opaque == position, "replies keep their order")
                let body = try await client.readBytes(count: bodyLength)
                let keyLength = Int(header[2]) << 8 | Int(header[3])
                #expect(String(decoding: body[(4 + keyLength)...], as: UTF8.self) == value(index))
            }
        }
    }

    @Test("the sessions scan, inspect and a full resync to a backup carry cold values")
    func walksAndRestart() async throws {
        try await withSmallNode { server, client in
            try await fill(client)
            let wire = try await TandemClient.connect(host: "127.0.0.1", port: try #require(server.wirePort))
            var exported: [SessionRecord] = []
            var cursor: [UInt8] = []
            repeat {
                let page = try await wire.scan(ScanRequest(cursor: cursor, limit: 100, options: .values))
                exported += page.records
                cursor = page.cursor
            } while !cursor.isEmpty
            #expect(exported.count == Self.items)
            for record in exported {
                let index = Int(String(decoding: record.key.dropFirst(), as: UTF8.self))!
                #expect(String(decoding: record.value, as: UTF8.self) == value(index), "export of k\(index)")
            }
            let inspected = try await wire.inspect(key: Array("k0".utf8))
            #expect(String(decoding: inspected.value, as: UTF8.self) == value(0))
            try await wire.close()

            // A backup joining makes a full resync: the cold values go too.
            var configuration = testConfiguration()
            configuration.pair = PairConfiguration(
                wireHost: "127.0.0.1", wirePort: 0, role: .backup, peer: ("127.0.0.1", try #require(server.wirePort)),
                replication: ReplicationConfiguration(mode: .sync, nodeName: "B")
            )
            let backup = try await TandemNode.start(configuration: configuration, logger: quietLogger)
            do {
                let onBackup = try TestClient(port: backup.port)
                defer { onBackup.close() }
                #expect(try await eventually { try await onBackup.stats()["curr_items"] == "\(Self.items)" })
                for index in stride(from: 0, to: Self.items, by: 13) {
                    #expect(try await onBackup.exchange("get k\(index)\r\n") == "VALUE k\(index) \(index) \(Self.valueSize)\r\n\(value(index))\r\nEND\r\n")
                }
            } catch {
                await backup.shutdown()
                throw error
            }
            await backup.shutdown()
            #expect(try await client.stats()["evictions"] == "0")
        }
    }
}
