import NIOCore
@testable import Replication
import Testing
import WireProtocol

/// A backup's link to its primary as a pure machine: attempts and back-off,
/// the handshake, the order of the replication conversation, heartbeats and
/// the stop, with no connection behind it (Protocol.md 1.3, 2.1).
@Suite("The backup's link machine")
struct ReplicaLinkTests {
    typealias Machine = ReplicaLink<String>

    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func at(_ millis: Int64) -> NIODeadline { Self.start + .milliseconds(millis) }

    /// `message` as a frame the link receives.
    func frame(_ message: WireMessage, requestID: UInt32 = 0, response: Bool = false) throws -> WireFrame {
        var buffer = ByteBuffer()
        try buffer.writeWireMessage(message, flags: response ? WireFrame.Flags.response : 0, requestID: requestID)
        var decoder = WireFrameDecoder()
        return try #require(try decoder.decode(buffer: &buffer))
    }

    func receive(_ machine: inout Machine, _ message: WireMessage, attempt: UInt64, at millis: Int64 = 0, requestID: UInt32 = 0, response: Bool = false) throws -> [Machine.Action] {
        machine.received(message, in: try frame(message, requestID: requestID, response: response), on: attempt, now: at(millis))
    }

    func configuration(secret: WireSecret? = nil) -> ReplicationConfiguration {
        var configuration = ReplicationConfiguration(heartbeatInterval: .milliseconds(100), linkTimeout: .milliseconds(1000), nodeName: "b")
        configuration.secret = secret
        return configuration
    }

    func helloOK(role: NodeRole = .primary, epoch: UInt64 = 3) -> WireMessage {
        .helloOK(HelloOK(version: WireVersion.maximum, nodeName: "a", nodeRole: role, epoch: epoch, authentication: .none, nonce: []))
    }

    /// The messages the actions send, in order.
    func sent(_ actions: [Machine.Action]) -> [WireMessage] {
        actions.compactMap {
            guard case .send(let message, _, _, _) = $0 else { return nil }
            return message
        }
    }

    func closeReason(_ actions: [Machine.Action]) -> String?? {
        for action in actions {
            if case .close(_, let reason) = action { return .some(reason) }
        }
        return nil
    }

    func retry(_ actions: [Machine.Action]) -> (attempt: UInt64, delay: TimeAmount)? {
        for action in actions {
            if case .retry(let attempt, let delay) = action { return (attempt, delay) }
        }
        return nil
    }

    /// A machine whose attempt 1 is connected over "l1" and has sent `hello`.
    func connected(secret: WireSecret? = nil) -> Machine {
        var machine = Machine(configuration: configuration(secret: secret))
        _ = machine.start()
        _ = machine.connected(1, link: "l1", epoch: 2, now: at(0))
        return machine
    }

    /// A machine streaming on attempt 1.
    func streaming() throws -> Machine {
        var machine = connected()
        _ = try receive(&machine, helloOK(), attempt: 1)
        _ = try receive(&machine, .reconcileFrom(watermark: .max), attempt: 1)
        _ = try receive(&machine, .partialResync(replicationID: ReplicationID.random(), offset: 7), attempt: 1)
        return machine
    }

    @Test("a connection says hello with this node's name and epoch, then reconciles, asks to replicate and streams")
    func conversationInOrder() throws {
        var machine = Machine(configuration: configuration())
        guard case .connect(let attempt)? = machine.start().first else {
            Issue.record("start does not connect")
            return
        }
        #expect(machine.linkState == .connecting)
        let hello = sent(machine.connected(attempt, link: "l1", epoch: 2, now: at(0)))
        guard case .hello(let sentHello)? = hello.first else {
            Issue.record("no hello: \(hello)")
            return
        }
        #expect(sentHello.nodeName == "b" && sentHello.epoch == 2 && sentHello.role == .peer)
        #expect(machine.linkState == .handshaking && machine.usableLink == nil)

        let ready = try receive(&machine, helloOK(), attempt: attempt, at: 5)
        guard ready.count == 2, case .ready(let primary, "l1") = ready[0], case .reconcile(on: "l1") = ready[1] else {
            Issue.record("after helloOK: \(ready)")
            return
        }
        #expect(primary.nodeName == "a" && machine.primary?.epoch == 3)
        #expect(machine.linkState == .resyncing && machine.usableLink == "l1")

        let summary = ReconcileSummary(received: 2, applied: 1, conflicts: 1)
        let versions = try receive(&machine, .reconcileFrom(watermark: 40), attempt: attempt)
        guard case .sendVersions(newerThan: 40, on: "l1")? = versions.first else {
            Issue.record("after reconcileFrom: \(versions)")
            return
        }
        let done = try receive(&machine, .reconcileDone(summary), attempt: attempt)
        guard done.count == 2, case .reconciled(summary) = done[0], case .replicate(on: "l1") = done[1] else {
            Issue.record("after reconcileDone: \(done)")
            return
        }
        let id = ReplicationID.random()
        let resumed = try receive(&machine, .partialResync(replicationID: id, offset: 9), attempt: attempt)
        guard case .partialResync(id, offset: 9)? = resumed.first else {
            Issue.record("after partialResync: \(resumed)")
            return
        }
        #expect(machine.linkState == .streaming)
        let changes = try receive(&machine, .changes([]), attempt: attempt)
        guard case .apply? = changes.first else {
            Issue.record("changes are not applied: \(changes)")
            return
        }
        #expect(sent(machine.acknowledge(attempt, offset: 12, now: at(6))) == [.ack(offset: 12)])
    }

    @Test("a watermark of .max skips reconciliation: replicate follows at once")
    func nothingToReconcile() throws {
        var machine = connected()
        _ = try receive(&machine, helloOK(), attempt: 1)
        let actions = try receive(&machine, .reconcileFrom(watermark: .max), attempt: 1)
        guard actions.count == 2, case .reconciled(nil) = actions[0], case .replicate(on: "l1") = actions[1] else {
            Issue.record("\(actions)")
            return
        }
    }

    @Test("a snapshot counts its items; a count that does not match what arrived closes the link, a matching one streams")
    func snapshot() throws {
        for announced: UInt64 in [3, 4] {
            var machine = connected()
            _ = try receive(&machine, helloOK(), attempt: 1)
            _ = try receive(&machine, .reconcileFrom(watermark: .max), attempt: 1)
            let resync = FullResync(replicationID: .random(), offset: 50, estimatedItems: 3, estimatedBytes: 10)
            guard case .startFullResync(resync)? = try receive(&machine, .fullResync(resync), attempt: 1, at: 10).first else {
                Issue.record("no full resync started")
                return
            }
            let item = ReplicatedItem(key: ByteBuffer(string: "k"), value: ByteBuffer(string: "v"), flags: 0, deadlineMillis: 0, stamp: 1)
            _ = try receive(&machine, .snapshotChunk([item, item]), attempt: 1)
            guard case .applySnapshot(_, received: 3, of: resync)? = try receive(&machine, .snapshotChunk([item]), attempt: 1).first else {
                Issue.record("the second chunk does not count 3 items")
                return
            }
            let end = try receive(&machine, .snapshotEnd(items: announced), attempt: 1, at: 510)
            if announced == 3 {
                guard case .finishFullResync(resync, items: 3, took: let took)? = end.first else {
                    Issue.record("\(end)")
                    return
                }
                #expect(took == .milliseconds(500))
                #expect(machine.linkState == .streaming)
            } else {
                #expect(closeReason(end) == .some("the snapshot announced 4 items but 3 arrived"))
                #expect(machine.usableLink == nil)
            }
        }
    }

    @Test("attempts back off from 50 ms, doubling to 500 ms; a handshake resets the count")
    func backOff() throws {
        var machine = Machine(configuration: configuration())
        _ = machine.start()
        var delays: [Int64] = []
        var attempt: UInt64 = 1
        for _ in 0..<6 {
            let actions = machine.closed(attempt)
            guard case .lost(wasReady: false)? = actions.first, let (next, delay) = retry(actions) else {
                Issue.record("\(actions)")
                return
            }
            #expect(machine.linkState == .down)
            delays.append(delay.nanoseconds / 1_000_000)
            #expect(next == attempt + 1)
            guard case .connect(next)? = machine.retryDue(next).first else {
                Issue.record("the retry does not connect")
                return
            }
            attempt = next
        }
        #expect(delays == [50, 100, 200, 400, 500, 500])
        _ = machine.connected(attempt, link: "l", epoch: 0, now: at(0))
        _ = try receive(&machine, helloOK(), attempt: attempt)
        let lost = machine.closed(attempt)
        guard case .lost(wasReady: true)? = lost.first else {
            Issue.record("\(lost)")
            return
        }
        #expect(retry(lost)?.delay == .milliseconds(50))
    }

    @Test("events about an attempt that is no longer current change nothing; a probe overtakes the back-off")
    func staleAttempts() throws {
        var machine = Machine(configuration: configuration())
        _ = machine.start()
        let retryAt = try #require(retry(machine.closed(1)))
        #expect(retryAt.attempt == 2)
        // The failover timer probes: attempt 2 connects now, the back-off's end finds it connecting.
        guard case .connect(2)? = machine.probe().first else {
            Issue.record("the probe does not connect")
            return
        }
        #expect(machine.retryDue(2).isEmpty)
        #expect(machine.probe().isEmpty)
        #expect(machine.closed(1).isEmpty)
        _ = machine.connected(2, link: "l2", epoch: 0, now: at(0))
        // A connection of an old attempt that completes late is closed.
        #expect(closeReason(machine.connected(1, link: "l1", epoch: 0, now: at(0))) == .some(nil))
        #expect(try receive(&machine, helloOK(), attempt: 1).isEmpty)
        #expect(machine.tick(1, now: at(5000), clockMillis: 0).isEmpty)
        #expect(machine.linkState == .handshaking)
    }

    @Test("a peer that answers as a backup is not followed; what it sends after the close is dropped")
    func notAPrimary() throws {
        var machine = connected()
        let actions = try receive(&machine, helloOK(role: .backup), attempt: 1)
        #expect(closeReason(actions) == .some("the peer is a backup, not a primary"))
        #expect(machine.lastHeard == nil)
        #expect(try receive(&machine, .reconcileFrom(watermark: .max), attempt: 1).isEmpty)
        #expect(machine.usableLink == nil && machine.linkState == .down)
        guard case .lost(wasReady: false)? = machine.closed(1).first else {
            Issue.record("not lost")
            return
        }
    }

    @Test("the heartbeat pings a quiet link with this node's clock, and closes one the primary left silent")
    func heartbeat() throws {
        var machine = try streaming()
        #expect(machine.tick(1, now: at(50), clockMillis: 9).isEmpty)
        #expect(sent(machine.tick(1, now: at(100), clockMillis: 9)) == [.ping(timestampMillis: 9)])
        #expect(machine.tick(1, now: at(150), clockMillis: 9).isEmpty)
        _ = try receive(&machine, .changes([]), attempt: 1, at: 900)
        #expect(machine.lastHeard == at(900))
        #expect(sent(machine.tick(1, now: at(1900), clockMillis: 9)) == [.ping(timestampMillis: 9)])
        #expect(closeReason(machine.tick(1, now: at(1901), clockMillis: 9)) == .some("no message from the primary for 1000 ms"))
    }

    @Test("a ping is answered with a pong under its request ID, and its clock is heard")
    func pingAndPong() throws {
        var machine = try streaming()
        let actions = try receive(&machine, .ping(timestampMillis: 1234), attempt: 1, requestID: 77)
        guard actions.count == 2, case .heardStamp(let stamp) = actions[0],
            case .send(.pong(timestampMillis: 1234), requestID: 77, flags: WireFrame.Flags.response, on: "l1") = actions[1]
        else {
            Issue.record("\(actions)")
            return
        }
        #expect(stamp > 0)
    }

    @Test("forwarded writes' replies and refusals go to the writes; a refused reconciliation or an error closes the link")
    func repliesAndErrors() throws {
        var machine = try streaming()
        let reply = try receive(&machine, .forwardReply(offset: 8, reply: ByteBuffer(string: "STORED\r\n")), attempt: 1, requestID: 5, response: true)
        guard case .forwardReplied(requestID: 5, .success(let answer))? = reply.first else {
            Issue.record("\(reply)")
            return
        }
        #expect(answer.offset == 8 && String(buffer: answer.reply) == "STORED\r\n")
        let refusal = try receive(&machine, .error(WireError(.notPrimary, "no")), attempt: 1, requestID: 6, response: true)
        guard case .forwardReplied(requestID: 6, .failure(let error))? = refusal.first else {
            Issue.record("\(refusal)")
            return
        }
        #expect(error.code == .notPrimary)
        let reconcile = try receive(&machine, .error(WireError(.notPrimary, "no")), attempt: 1, requestID: Machine.reconcileRequestID, response: true)
        #expect(closeReason(reconcile)??.hasPrefix("the primary refused reconciliation") == true)

        var other = try streaming()
        #expect(closeReason(try receive(&other, .error(WireError(.notPrimary, "stepping down")), attempt: 1))??.hasPrefix("the primary closed the link") == true)
        var unexpected = try streaming()
        let reason = closeReason(try receive(&unexpected, .reconcileFrom(watermark: 1), attempt: 1))
        #expect(reason == .some("unexpected reconcileFrom (0x0028) while streaming"), "\(String(describing: reason))")
    }

    @Test("with a secret the link proves it and checks the primary's proof; a primary without the secret is refused")
    func authentication() throws {
        let secret = try WireSecret(bytes: Array(repeating: 7, count: 32))
        let node = NodeIdentity(name: "a", role: .primary, epoch: 1)
        // The primary's end of the handshake is the real acceptor.
        var machine = connected(secret: secret)
        guard case .connected(let connection) = machine.state, case .awaitingHelloOK(let handshake) = connection.phase else {
            Issue.record("not awaiting helloOK")
            return
        }
        var acceptor = WireHandshakeAcceptor(secret: secret)
        guard case .answer(let ok, nil) = acceptor.received(.hello(handshake.hello), node: node) else {
            Issue.record("the acceptor does not challenge")
            return
        }
        let auth = sent(try receive(&machine, ok, attempt: 1))
        #expect(machine.linkState == .handshaking && machine.lastHeard != nil)
        guard let proof = auth.first, case .answer(let authOK, let accepted?) = acceptor.received(proof, node: node) else {
            Issue.record("the acceptor refuses the proof: \(auth)")
            return
        }
        #expect(accepted.name == "b")
        guard case .ready? = try receive(&machine, authOK, attempt: 1).first else {
            Issue.record("the primary's proof is not accepted")
            return
        }

        var forged = connected(secret: secret)
        _ = try receive(&forged, ok, attempt: 1)
        let wrong = try receive(&forged, .authOK(proof: Array(repeating: 0, count: 32)), attempt: 1)
        #expect(closeReason(wrong) == .some(Machine.describe(.wrongNodeProof)))

        var open = connected(secret: secret)
        #expect(closeReason(try receive(&open, helloOK(), attempt: 1)) == .some(Machine.describe(.nodeWithoutSecret)))
        // A primary that is alive but cannot be authenticated must not be failed over.
        #expect(open.lastHeard != nil)
    }

    @Test("a stop closes the link; nothing connects again, and a late connection is closed")
    func stop() throws {
        var machine = try streaming()
        #expect(closeReason(machine.stop()) == .some(nil))
        #expect(machine.linkState == .stopped && machine.isStopped && machine.usableLink == nil)
        #expect(machine.closed(1).isEmpty)
        #expect(machine.probe().isEmpty && machine.retryDue(2).isEmpty)
        #expect(closeReason(machine.connected(2, link: "l2", epoch: 0, now: at(0))) == .some(nil))
    }
}
