import Foundation
import Logging
import NIOCore
import NIOPosix
import Replication
import SessionPersistence
import SessionStore
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// History that survives a promotion (Protocol.md 2.2): a node whose data is
/// a prefix of the new primary's history resumes with a partial resync.
extension PairTests {
    /// A free TCP port on 127.0.0.1: both nodes must know the other's wire
    /// port before either starts.
    func freePort() throws -> Int {
        let group = MultiThreadedEventLoopGroup.singleton
        let channel = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = channel.localAddress!.port!
        try channel.close().wait()
        return port
    }

    /// A node of a pair where each names the other as its peer, on `wirePort`
    /// or, when another test's socket took that port since `freePort` found
    /// it free (any connection from this process can be handed it), on
    /// another free port. The node's `wirePort` says which.
    func startNode(
        role: NodeRole, name: String, wirePort: Int, peerPort: Int, directory: String?,
        failoverAfter: TimeAmount = .milliseconds(300)
    ) async throws -> TandemNode {
        var (port, attempts) = (wirePort, 1)
        while true {
            do {
                return try await startNodeOnce(
                    role: role, name: name, wirePort: port, peerPort: peerPort, directory: directory, failoverAfter: failoverAfter
                )
            } catch let failure as BindFailure where failure.listener == .wire && failure.cause == .inUse && attempts < 5 {
                (port, attempts) = (try freePort(), attempts + 1)
            }
        }
    }

    private func startNodeOnce(
        role: NodeRole, name: String, wirePort: Int, peerPort: Int, directory: String?, failoverAfter: TimeAmount
    ) async throws -> TandemNode {
        var configuration = testConfiguration()
        var replication = ReplicationConfiguration(mode: .sync, nodeName: name)
        replication.failoverAfter = failoverAfter
        configuration.pair = PairConfiguration(
            wireHost: "127.0.0.1", wirePort: wirePort, role: role, peer: ("127.0.0.1", peerPort), replication: replication
        )
        configuration.persistence = directory.map { PersistenceConfiguration(dataDirectory: $0, flushIntervalMillis: 10) }
        return try await TandemNode.start(configuration: configuration, logger: quietLogger)
    }

    func status(_ server: TandemNode) async throws -> [String: String] {
        let client = try await TandemClient.connect(host: "127.0.0.1", port: server.wirePort!)
        defer { Task { try? await client.close() } }
        return Dictionary(try await client.status().map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    /// Every key in `keys` as both nodes answer it.
    func expectSameData(_ a: TandemNode, _ b: TandemNode, keys: [String]) async throws {
        let ca = try TestClient(port: a.port)
        let cb = try TestClient(port: b.port)
        defer {
            ca.close()
            cb.close()
        }
        let request = "get \(keys.joined(separator: " "))\r\n"
        let fromA = try await ca.exchange(request)
        #expect(fromA == (try await cb.exchange(request)))
        #expect(fromA.hasPrefix("VALUE"), "\(fromA)")
    }

    @Test("failover, then the old primary restarts and resumes with a partial resync; a restart keeps the previous history in meta")
    func failoverThenRejoinResumesPartially() async throws {
        let base = NSTemporaryDirectory() + "tandem-history-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let (portA, portB) = (try freePort(), try freePort())
        for node in ["a", "b"] { try FileManager.default.createDirectory(atPath: base + "/" + node, withIntermediateDirectories: true) }
        let first = try await startNode(role: .primary, name: "A", wirePort: portA, peerPort: portB, directory: base + "/a")
        let b = try await startNode(role: .backup, name: "B", wirePort: portB, peerPort: first.wirePort!, directory: base + "/b")
        var rejoined: TandemNode?
        do {
            try await failoverAndRejoin(first, b, base: base, rejoined: &rejoined)
        } catch {
            await rejoined?.shutdown()
            await first.shutdown()
            await b.shutdown()
            throw error
        }
    }

    private func failoverAndRejoin(
        _ a: TandemNode, _ b: TandemNode, base: String, rejoined: inout TandemNode?
    ) async throws {
        var a = a
        #expect(try await eventually { try await status(a)["replication_state"] == "sync" })
        let oldHistory = try #require(try await status(a)["replication_id"])
        let writer = try TestClient(port: a.port)
        for index in 0..<30 {
            #expect(try await writer.exchange("set k\(index) 0 0 2\r\nv\(index % 10)\r\n") == "STORED\r\n")
        }
        writer.close()
        // Stops as a primary does: the backup is given the whole stream first.
        await a.shutdown()
        #expect(try await eventually { try await status(b)["role"] == "primary" }, "the backup never took over")
        let promoted = try await status(b)
        #expect(promoted["history_previous"] == oldHistory)
        let fork = try #require(promoted["history_fork_offset"].flatMap { UInt64($0) })
        #expect(fork >= 30)
        let onB = try TestClient(port: b.port)
        for index in 30..<40 {
            #expect(try await onB.exchange("set k\(index) 0 0 2\r\nw\(index % 10)\r\n") == "STORED\r\n")
        }
        #expect(try await onB.exchange("set k0 0 0 2\r\nzz\r\n") == "STORED\r\n")
        onB.close()

        // A fresh wire port: in the time it was down, A's old one may have
        // been handed to another test's connection. The primary never dials
        // its backup, so B need not know it.
        a = try await startNode(role: .primary, name: "A", wirePort: try freePort(), peerPort: b.wirePort!, directory: base + "/a")
        rejoined = a
        #expect(try await eventually { try await status(a)["link_state"] == "streaming" }, "the old primary never followed")
        let leader = try await status(b)
        let follower = try await status(a)
        #expect(leader["partial_resyncs_after_promotion"] == "1")
        #expect(leader["partial_resyncs"] == "1")
        #expect(leader["full_resyncs"] == "0")
        #expect(follower["role"] == "backup")
        #expect(follower["partial_resyncs_after_promotion"] == "1")
        #expect(follower["full_resyncs"] == "0")
        #expect(follower["replication_id"] == leader["replication_id"])
        #expect(try await eventually { try await status(a)["replication_offset"] == status(b)["replication_offset"] })
        try await expectSameData(a, b, keys: (0..<40).map { "k\($0)" })

        // The promoted node restarts: its data keeps naming the history it continued.
        await a.shutdown()
        await b.shutdown()
        let again = try await startNode(
            role: .backup, name: "B", wirePort: try freePort(), peerPort: try freePort(), directory: base + "/b", failoverAfter: .zero
        )
        let restarted = try await status(again)
        await again.shutdown()
        #expect(restarted["data_previous_replication_id"] == oldHistory)
        #expect(restarted["data_fork_offset"] == "\(fork)")
    }

    @Test("promote over the wire, then the old primary follows with a partial resync")
    func promotionThenOldPrimaryResumesPartially() async throws {
        let (portA, portB) = (try freePort(), try freePort())
        let a = try await startNode(role: .primary, name: "A", wirePort: portA, peerPort: portB, directory: nil, failoverAfter: .zero)
        let b = try await startNode(role: .backup, name: "B", wirePort: portB, peerPort: a.wirePort!, directory: nil, failoverAfter: .zero)
        do {
            try await promoteAndFollow(a, b, portB: b.wirePort!)
        } catch {
            await a.shutdown()
            await b.shutdown()
            throw error
        }
        await a.shutdown()
        await b.shutdown()
    }

    private func promoteAndFollow(_ a: TandemNode, _ b: TandemNode, portB: Int) async throws {
        #expect(try await eventually { try await status(a)["replication_state"] == "sync" })
        let writer = try TestClient(port: a.port)
        for index in 0..<20 {
            #expect(try await writer.exchange("set p\(index) 0 0 1\r\n\(index % 10)\r\n") == "STORED\r\n")
        }
        writer.close()
        // Sync acknowledgements: the backup has applied the whole stream.
        #expect(try await eventually { try await status(b)["replication_offset"] == status(a)["replication_offset"] })
        let epochBefore = try #require(try await status(a)["epoch"].flatMap { UInt64($0) })
        let control = try await TandemClient.connect(host: "127.0.0.1", port: portB)
        #expect(try await control.promote(reason: "test") > epochBefore)
        try await control.close()
        #expect(try await eventually { try await status(a)["link_state"] == "streaming" }, "the old primary never followed")
        let leader = try await status(b)
        #expect(leader["partial_resyncs_after_promotion"] == "1")
        #expect(leader["full_resyncs"] == "0")
        let follower = try await status(a)
        #expect(follower["role"] == "backup")
        #expect(follower["replication_id"] == leader["replication_id"])
        let onB = try TestClient(port: b.port)
        #expect(try await onB.exchange("set p0 0 0 3\r\nnew\r\n") == "STORED\r\n")
        onB.close()
        try await expectSameData(a, b, keys: (0..<20).map { "p\($0)" })
    }
}
