import Foundation
import SessionPersistence
import SessionStore
import TandemServer
import Testing

/// A node whose start fails part way stops every part that had started:
/// the write-behind commits and lets go of its data directory, and the ports
/// already bound close. Its error names what failed.
@Suite("A node's start and stop")
struct NodeStartFailureTests {
    /// A node with every part: persistence in `directory`, metrics and a
    /// wire port (both free ports unless given), a pair of its own.
    func configuration(directory: String, port: Int = 0, wirePort: Int = 0, metricsPort: Int = 0) -> ServerConfiguration {
        var configuration = testConfiguration()
        configuration.port = port
        configuration.persistence = PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: 10)
        configuration.pair = PairConfiguration(wireHost: "127.0.0.1", wirePort: wirePort, role: .primary)
        configuration.metricsPort = metricsPort
        return configuration
    }

    /// Whether the write-behind let go of `directory`: another one opens it
    /// (the directory's lock is free and the database is not held).
    func persistenceReleased(_ directory: String) -> Bool {
        var storeConfiguration = StoreConfiguration(memoryLimit: 16 << 20, shardCount: 2)
        storeConfiguration.recordsChanges = true
        let store = SessionStore(configuration: storeConfiguration)
        guard let reopened = try? Persistence.open(
            configuration: PersistenceConfiguration(dataDirectory: directory), store: store, logger: quietLogger
        ) else { return false }
        reopened.start()
        reopened.stop()
        return true
    }

    /// Whether something accepts connections on 127.0.0.1:`port`.
    func accepts(_ port: Int) -> Bool {
        guard let client = try? TestClient(port: port) else { return false }
        client.close()
        return true
    }

    @Test("the memcached port in use: the pair, both listeners and persistence, all started, stop")
    func memcachedPortInUse() async throws {
        let directory = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let occupied = try Occupied()
        defer { occupied.release() }

        let node = try TandemNode(configuration: configuration(directory: directory, port: occupied.port), logger: quietLogger)
        let failure = await #expect(throws: BindFailure.self) { try await node.run() }
        #expect(failure?.listener == .memcached)
        #expect(failure?.cause == .inUse)
        #expect(failure?.description == "memcached port 127.0.0.1:\(occupied.port) (--port) is in use: another tandemd? pick another with --port")

        // The parts before the memcached listener had started, and are stopped.
        let wirePort = try #require(node.wirePort)
        let metricsPort = try #require(node.metricsPort)
        #expect(!accepts(wirePort))
        #expect(!accepts(metricsPort))
        #expect(persistenceReleased(directory))
        #expect(await !node.waitUntilServing())
    }

    @Test("the wire port in use: metrics and persistence stop, the memcached port never opens")
    func wirePortInUse() async throws {
        let directory = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let occupied = try Occupied()
        defer { occupied.release() }

        let node = try TandemNode(configuration: configuration(directory: directory, wirePort: occupied.port), logger: quietLogger)
        let failure = await #expect(throws: BindFailure.self) { try await node.run() }
        #expect(failure?.listener == .wire)
        #expect(failure?.cause == .inUse)
        #expect(failure?.description.contains("wire port 127.0.0.1:\(occupied.port) (--wire-port) is in use") == true)

        #expect(!accepts(try #require(node.metricsPort)))
        #expect(persistenceReleased(directory))
        // The pair and the memcached listener never started.
        #expect(node.port == 0)
        #expect(node.localAddress == nil)
    }

    @Test("start throws the part's error once the parts that started have stopped")
    func startThrows() async throws {
        let directory = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let occupied = try Occupied()
        defer { occupied.release() }

        let failure = await #expect(throws: BindFailure.self) {
            _ = try await TandemNode.start(configuration: configuration(directory: directory, metricsPort: occupied.port), logger: quietLogger)
        }
        #expect(failure?.listener == .metrics)
        #expect(failure?.port == occupied.port)
        #expect(persistenceReleased(directory))
    }

    @Test("a data directory that cannot be used stops the node before anything listens")
    func unusableDataDirectory() async throws {
        // A file where the directory should be.
        let file = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        try #require(FileManager.default.createFile(atPath: file, contents: Data("not a directory".utf8)))
        defer { try? FileManager.default.removeItem(atPath: file) }

        let node = try TandemNode(configuration: configuration(directory: file), logger: quietLogger)
        await #expect(throws: PersistenceError.self) { try await node.run() }
        #expect(await !node.waitUntilServing())
        #expect(node.port == 0)
        #expect(node.wirePort == nil)
        #expect(node.metricsPort == nil)
    }

    @Test("a node asked to stop before it serves never opens its memcached port, and stops what started")
    func stopBeforeServing() async throws {
        let directory = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let node = try TandemNode(configuration: configuration(directory: directory), logger: quietLogger)
        // Remembered until the node runs: it then stops at once, last part first.
        await node.shutdown()
        try await node.run()
        #expect(await !node.waitUntilServing())
        #expect(node.port == 0)
        #expect(persistenceReleased(directory))
        // A node runs once.
        await #expect(throws: ServerError.self) { try await node.run() }
        if let wirePort = node.wirePort { #expect(!accepts(wirePort)) }
        if let metricsPort = node.metricsPort { #expect(!accepts(metricsPort)) }
    }

    @Test("a node stopped and started again on its data directory has everything it acknowledged")
    func restartKeepsWhatWasAcknowledged() async throws {
        let directory = NSTemporaryDirectory() + "tandem-start-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = configuration(directory: directory)
        // A long interval: only the stop's last commit can have written the item.
        configuration.persistence?.flushIntervalMillis = 1000
        let first = try await TandemNode.start(configuration: configuration, logger: quietLogger)
        let client = try TestClient(port: first.port)
        try await client.expectReply("set k 0 0 5\r\nhello\r\n", "STORED\r\n")
        client.close()
        await first.shutdown()
        #expect(persistenceReleased(directory))

        let second = try await TandemNode.start(configuration: configuration, logger: quietLogger)
        let again = try TestClient(port: second.port)
        defer { again.close() }
        try await again.expectReply("get k\r\n", "VALUE k 0 5\r\nhello\r\nEND\r\n")
        await second.shutdown()
    }
}

/// A TCP socket listening on 127.0.0.1 at a free port, standing in for
/// another process on the port a node wants; closed by `release`.
struct Occupied {
    let descriptor: Int32
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(descriptor >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        _ = inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(descriptor, 8) == 0, "bind: \(String(cString: strerror(errno)))")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    func release() { close(descriptor) }
}
