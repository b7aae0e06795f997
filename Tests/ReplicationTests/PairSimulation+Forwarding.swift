import NIOCore
@testable import Replication
import SessionStore
import WireProtocol

/// Clients of a backup: their writes are forwarded to the primary by the
/// real `ForwardedWrites` machine (as `ReplicaClient` drives it), run there,
/// and answered once the backup has applied them. A `set` whose reply the
/// link's loss took is held and sent again (it may then run twice); the
/// others fail. A write answered this way must be on both nodes.
extension PairSimulation {
    /// One client write sent to a backup.
    struct Forwarded {
        let id: Int
        /// The backup the client wrote to, in which life, and which following of it.
        let node: Int
        let life: Int
        let follower: Int
        let key: String
        /// nil: a delete.
        let value: [UInt8]?
        /// Times the primary ran it: a set whose reply was lost may run again.
        var runs = 0
    }

    /// A forwarded write the primary ran, whose reply the backup answers its
    /// client with once it has applied the stream up to `offset`.
    struct ForwardAnswer {
        let forwarded: Int
        let write: Int
        let offset: UInt64
        let replicationID: ReplicationID
    }

    /// The request a forward carries: which simulated write it is.
    static func forwardRequest(_ forwarded: Int) -> ByteBuffer { ByteBuffer(string: "\(forwarded)") }

    /// A client writes to a backup (`MemcacheConnectionHandler.forward`).
    mutating func forwardedClientWrite() {
        let candidates = (0..<2).filter { nodes[$0].machine != nil && nodes[$0].data.follower != nil }
        guard !candidates.isEmpty else { return }
        let node = random.pick(candidates)
        var follower = nodes[node].data.follower!
        let key = "k\(random.int(0...Self.keyCount - 1))"
        let id = forwarded.count
        // Only sets and deletes: a set may run twice, a delete may not.
        let value: [UInt8]? = random.chance(20) ? nil : Array("f\(id)".utf8)
        forwarded.append(Forwarded(id: id, node: node, life: nodes[node].life, follower: follower.id, key: key, value: value))
        stats.forwarded += 1
        // A backup stopped to promote holds new writes until it is decided (`ReplicaClient.Shared.acceptance`).
        let acceptance: ForwardedWrites<Int, Int>.Acceptance = follower.stream.stopped ? .holding : .following
        let action = follower.forwards.submit(id, repeatable: value != nil, acceptance: acceptance, link: usableLink(of: node))
        nodes[node].data.role = .backup(follower)
        log("client → \(nodes[node].name) (backup): \(value.map { "set \(key)=\(String(decoding: $0, as: UTF8.self))" } ?? "delete \(key)"), forwarded as f\(id)")
        performForward(action, at: node, follower: follower.id)
    }

    /// The backup's link on which writes can go (handshake done), if any.
    func usableLink(of node: Int) -> Int? {
        nodes[node].data.follower?.link.usableLink
    }

    /// Does what the machine decided (`ReplicaClient.perform`).
    mutating func performForward(_ action: ForwardedWrites<Int, Int>.Action, at node: Int, follower: Int) {
        switch action {
        case .send(let id, let requestID, let link):
            var buffer = ByteBuffer()
            try! buffer.writeWireMessage(.forward(request: Self.forwardRequest(id)), requestID: requestID)
            send(on: link, from: node, .frames(buffer))
        case .hold(let id, let hold):
            stats.forwardsHeld += 1
            log("\(nodes[node].name) holds f\(id)")
            schedule(in: Self.forwardHoldMillis, .forwardHoldRanOut(node: node, follower: follower, hold: hold))
        case .fail(let id, let ending):
            log("f\(id) fails on \(nodes[node].name): \(ending)")
        }
    }

    mutating func performForward(_ actions: [ForwardedWrites<Int, Int>.Action], at node: Int, follower: Int) {
        for action in actions { performForward(action, at: node, follower: follower) }
    }

    /// `ReplicaClient.parkTimeout`.
    static let forwardHoldMillis: Int64 = 900

    mutating func forwardHoldRanOut(node: Int, follower id: Int, hold: UInt64) {
        guard var follower = nodes[node].data.follower, follower.id == id else { return }
        let ended = follower.forwards.holdRanOut(hold)
        nodes[node].data.role = .backup(follower)
        if let (forwarded, ending) = ended { log("f\(forwarded)'s hold ran out on \(nodes[node].name): \(ending)") }
    }

    /// The primary's end runs a forwarded write (`WireConnectionHandler.runForwarded`):
    /// replies once replication lets it (sync: the backup acknowledged it).
    mutating func primaryRunsForward(_ request: ByteBuffer, requestID: UInt32, on id: Int) {
        let node = links[id]!.primary
        guard nodes[node].machine?.acceptsWrites == true, let primary = nodes[node].data.primary else {
            send(on: id, from: node, .error(WireError(.notPrimary, "not the primary")), requestID: requestID, flags: WireFrame.Flags.response)
            return
        }
        let forwardedID = Int(String(buffer: request))!
        let request = forwarded[forwardedID]
        countRun(of: forwardedID)
        // nil: a delete that found nothing (NOT_FOUND), answered at once.
        let write = runWrite(at: node, key: request.key, value: request.value)
        if broken != nil { return }
        if let write { log("\(nodes[node].name) runs f\(forwardedID) as write \(write) @\(writes[write].stamp), offset \(writes[write].target)") }
        let wait = write == nil ? nil : primary.afterWrites(on: loop)
        let completions = self.completions
        let reply = (link: id, requestID: requestID, write: write)
        if let wait {
            wait.whenComplete { _ in completions.forwardReplies.append(reply) }
        } else {
            completions.forwardReplies.append(reply)
        }
    }

    /// Sends the replies of the forwarded writes whose waits ended.
    mutating func sendForwardReplies() {
        let replies = completions.forwardReplies
        completions.forwardReplies = []
        for (id, requestID, write) in replies {
            guard let link = links[id], link.open[link.primary] else { continue }
            let offset = write.map { writes[$0].target } ?? 0
            let reply = ByteBuffer(string: write.map { "\($0)" } ?? "none")
            send(on: id, from: link.primary, .forwardReply(offset: offset, reply: reply), requestID: requestID, flags: WireFrame.Flags.response)
        }
    }

    /// The primary's reply (or refusal) to a forward, at the backup's end.
    mutating func backupReceivesForwardReply(_ result: Result<ReplicaLink<Int>.ForwardReply, WireError>, requestID: UInt32, at node: Int) {
        guard var follower = nodes[node].data.follower else { return }
        let forwardedID = follower.forwards.replied(requestID)
        nodes[node].data.role = .backup(follower)
        guard let forwardedID else { return }
        guard case .success(let answer) = result else {
            log("f\(forwardedID) refused by the primary")
            return
        }
        let (offset, reply) = (answer.offset, answer.reply)
        guard let write = Int(String(buffer: reply)) else {
            log("f\(forwardedID): nothing to delete")
            return
        }
        // Answered only once a read on this backup sees the write.
        forwardAnswers.append(ForwardAnswer(forwarded: forwardedID, write: write, offset: offset, replicationID: writes[write].primary.replicationID))
    }

    /// Answers the forwarded writes the backup has applied: each must be on
    /// the backup, and is an acknowledged write from then on.
    mutating func answerForwardedWrites() {
        var waiting: [ForwardAnswer] = []
        for answer in forwardAnswers {
            let request = forwarded[answer.forwarded]
            guard nodes[request.node].life == request.life, nodes[request.node].machine != nil,
                let follower = nodes[request.node].data.follower, follower.id == request.follower
            else { continue }
            // A new history (a full resync) ends the wait: `OffsetWaiters.reset` fails it.
            guard follower.stream.position.replicationID == answer.replicationID else { continue }
            guard follower.stream.position.offset >= answer.offset else {
                waiting.append(answer)
                continue
            }
            let write = writes[answer.write]
            let store = nodes[request.node].data.store
            let standing = Self.item(write.key, in: store)
            let applied = write.value == nil ? (standing.map { $0.cas >= write.stamp } ?? true) : Self.version(of: write.key, in: store) >= write.stamp
            guard applied else {
                broken = "forwarded write f\(answer.forwarded) (\(write.key)@\(write.stamp)) was answered by \(nodes[request.node].name) without it"
                return
            }
            writes[answer.write].acknowledged = true
            writes[answer.write].replicatedTo = (request.node, request.life)
            stats.acknowledged += 1
            stats.forwardedAcknowledged += 1
            log("\(nodes[request.node].name) answers f\(answer.forwarded): write \(answer.write) applied")
        }
        forwardAnswers = waiting
    }

    /// The backup's link is usable (`ReplicaLink`'s `ready`): held writes go on it.
    mutating func forwardsLinkUp(at node: Int, link id: Int) {
        guard var follower = nodes[node].data.follower else { return }
        let actions = follower.forwards.linkUp(id)
        nodes[node].data.role = .backup(follower)
        performForward(actions, at: node, follower: follower.id)
    }

    /// The backup's link is gone (`ReplicaLink`'s `lost`), or it stopped
    /// following to promote: then what it holds waits for the outcome
    /// (`ReplicaClient.stop(parkedFailure: nil)`). Promoted, it runs them
    /// (`lead`); otherwise their holds run out.
    mutating func forwardsLinkLost(at node: Int, stopping: Bool) {
        guard var follower = nodes[node].data.follower else { return }
        let actions = follower.forwards.linkLost(acceptance: stopping ? .holding : .following)
        nodes[node].data.role = .backup(follower)
        performForward(actions, at: node, follower: follower.id)
    }

    /// A promoted node runs the writes its clients sent while it was a
    /// backup and that it still held, as the connection does once the
    /// forward fails with `roleChanged`: each is then a write of this
    /// primary, answered as its own.
    mutating func runHeldWrites(_ held: [(Int, ForwardedWrites<Int, Int>.Ending)], at node: Int) {
        for (forwardedID, _) in held {
            let request = forwarded[forwardedID]
            guard nodes[node].machine?.acceptsWrites == true, let primary = nodes[node].data.primary else {
                log("f\(forwardedID) fails on \(nodes[node].name): not the primary after all")
                continue
            }
            countRun(of: forwardedID)
            stats.forwardsRunHere += 1
            guard let id = runWrite(at: node, key: request.key, value: request.value) else {
                log("\(nodes[node].name) runs f\(forwardedID) itself: nothing to delete")
                continue
            }
            log("\(nodes[node].name) runs f\(forwardedID) itself as write \(id) @\(writes[id].stamp), offset \(writes[id].target)")
            answerAfterReplication(id, on: primary)
        }
    }

    /// A forwarded write ran once more. A set may run twice (its reply was
    /// lost with the link, and running it again leaves what running it once
    /// does); a delete must never: the second could remove a newer version.
    mutating func countRun(of forwardedID: Int) {
        forwarded[forwardedID].runs += 1
        guard forwarded[forwardedID].runs == 2 else { return }
        if forwarded[forwardedID].value == nil {
            broken = "the forwarded delete f\(forwardedID) of \(forwarded[forwardedID].key) ran twice"
        } else {
            stats.forwardsRunTwice += 1
        }
    }
}
