import NIOCore
import NIOPosix
import Replication
import TandemClient
import TandemServer
import Testing
import WireProtocol

/// `pairStatus` (Protocol.md 1.4.4): what one node of a pair tells the
/// other about itself, typed, instead of its status properties.
extension PairTests {
    /// The `pairStatusReply` `port` gives a peer-role connection.
    func pairStatus(wirePort port: Int) async throws -> PairStatus {
        let wire = try RawWire(port: port)
        let ok = try await wire.hello(role: .peer, name: "asking")
        #expect(ok.version == WireVersion.maximum)
        let answer = try await wire.request(.pairStatus, requestID: 6)
        #expect(answer.requestID == 6 && answer.isResponse)
        guard case .pairStatusReply(let status) = try answer.message() else {
            throw TestClientError.io("expected pairStatusReply, got \(try answer.message())", errno: 0)
        }
        return status
    }

    @Test("a peer's pairStatus answer carries the node's role, configured role, epoch and history, after a promotion too; an older peer is read the same from its status")
    func pairStatusAfterPromotion() async throws {
        try await withPair { primary, backup in
            let p = try TestClient(port: primary.port)
            defer { p.close() }
            for index in 0..<3 { #expect(try await p.exchange("set k\(index) 0 0 1\r\n\(index)\r\n") == "STORED\r\n") }
            let before = try await status(primary)
            let history = try #require(ReplicationID(hex: before["replication_id"] ?? ""))
            #expect(try await eventually { try await status(backup)["replication_offset"] == "3" })

            let leading = try await pairStatus(wirePort: try #require(primary.wirePort))
            #expect(leading == PairStatus(nodeName: "P", role: .primary, configuredRole: .primary, epoch: 0, replicationID: history, offset: 3))
            let following = try await pairStatus(wirePort: try #require(backup.wirePort))
            #expect(following == PairStatus(nodeName: "B", role: .backup, configuredRole: .backup, epoch: 0, replicationID: history, offset: 3))

            // Promoted, the backup leads in epoch 1 with a history of its own
            // that continues the one it followed from offset 3 on.
            let control = try await TandemClient.connect(host: "127.0.0.1", port: backup.wirePort!)
            #expect(try await control.promote(reason: "test") == 1)
            try await control.close()
            let after = try await status(backup)
            let promoted = try await pairStatus(wirePort: try #require(backup.wirePort))
            #expect(promoted == PairStatus(
                nodeName: "B", role: .primary, configuredRole: .backup, epoch: 1,
                replicationID: try #require(ReplicationID(hex: after["replication_id"] ?? "")), offset: 3,
                previousReplicationID: history, forkOffset: 3
            ))
            #expect(promoted.replicationID != history)

            // A link that speaks at most version 3 reads the same from the
            // status properties, as a version 4 node reads an older peer.
            for port in [try #require(primary.wirePort), try #require(backup.wirePort)] {
                var answers: [PairStatus] = []
                for versions in [WireVersion.minimum...WireVersion.maximum, 1...3] as [ClosedRange<UInt16>] {
                    let (version, answer) = try await PeerLink.open(
                        host: "127.0.0.1", port: port, name: "asking", epoch: 0, secret: nil, tls: nil, timeout: .seconds(2),
                        group: MultiThreadedEventLoopGroup.singleton, versions: versions
                    ) { link in (link.peer.version, try await link.status()) }
                    #expect(version == versions.upperBound)
                    answers.append(answer)
                }
                #expect(answers[0] == answers[1])
            }
        }
    }
}

/// Who may ask `pairStatus`, and on which version.
@Suite("pairStatus on a live node", .serialized)
struct PairStatusRulesTests {
    @Test("on a version 3 connection pairStatus is an unknown message, as a version 3 node answers it; on version 4 a standalone node answers")
    func unknownBeforeVersion4() async throws {
        try await withServer(configure: WireRulesTests.standalone()) { server, _ in
            let port = try #require(server.wirePort)
            let old = try RawWire(port: port)
            #expect(try await old.hello(role: .peer, versions: 1...3).version == 3)
            try await old.send(.pairStatus, requestID: 8)
            let (error, carrier) = try #require(try await old.closingError())
            #expect(error.code == .unknownMessage && error.message.contains("version 4"), "\(error.message)")
            #expect(carrier.requestID == 8 && carrier.isResponse)

            let current = try RawWire(port: port)
            try await current.hello(role: .peer)
            guard case .pairStatusReply(let status) = try await current.request(.pairStatus, requestID: 9).message() else {
                Issue.record("no pairStatusReply on a version 4 connection")
                return
            }
            #expect(status.nodeName == "solo" && status.role == .primary && status.configuredRole == .primary && status.epoch == 0)
            #expect(status.previousReplicationID == .none && status.forkOffset == 0)
        }
    }
}
