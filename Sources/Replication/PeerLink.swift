import NIOCore
import TandemTLS
import WireProtocol

/// A short connection from a node to its peer's wire port, for the pair's own
/// questions: where the peer and its data stand (`pairStatus`), and asking it
/// to lead (`promote`). It says `hello` as the peer (role 2, with this node's
/// epoch, which may make a stale primary there step down) and authenticates
/// as the replication link does (`WireHandshake`).
///
/// Nodes ask each other in typed messages (Protocol.md 1.4.4), not through
/// the status properties shown to people: only a peer that speaks at most
/// version 3 is read the old way (`legacyStatus`).
///
/// A link lives inside `open`'s body, in one task, and asks one thing at a
/// time; `open` closes it.
public final class PeerLink {
    /// What the peer said about itself in the handshake, and the version the link speaks.
    public let peer: HelloOK
    private let conversation: Conversation

    private init(peer: HelloOK, conversation: Conversation) {
        self.peer = peer
        self.conversation = conversation
    }

    /// Connects to the peer, runs the handshake, then `body` with the link,
    /// and closes it. The connection, and each answer (the handshake's
    /// included), may take up to `timeout`. `versions` is what `hello`
    /// offers (a test may offer fewer). Throws `PeerLinkError`, or what
    /// `body` throws.
    public static func open<Result>(
        host: String, port: Int, name: String, epoch: UInt64, secret: WireSecret?, tls: ClientTLS?, timeout: TimeAmount,
        group: any EventLoopGroup, versions: ClosedRange<UInt16> = WireVersion.minimum...WireVersion.maximum,
        _ body: (PeerLink) async throws -> Result
    ) async throws -> Result {
        let channel: NIOAsyncChannel<WireFrame, ByteBuffer>
        do {
            channel = try await ClientTLS.connect(host: host, port: port, tls: tls, timeout: timeout, group: group) { channel in
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WireFrameDecoder()))
                return try NIOAsyncChannel(wrappingChannelSynchronously: channel)
            }
        } catch {
            throw PeerLinkError.unreachable("\(host):\(port): \(error)")
        }
        return try await channel.executeThenClose { inbound, outbound in
            let conversation = Conversation(channel: channel.channel, answers: inbound.makeAsyncIterator(), outbound: outbound, timeout: timeout)
            let handshake = WireHandshake(role: .peer, nodeName: name, epoch: epoch, secret: secret, versions: versions)
            let peer: HelloOK
            do {
                peer = try await handshake.run { try await conversation.exchange($0) }
            } catch let error as WireHandshakeError {
                throw PeerLinkError.handshake(error)
            }
            return try await body(PeerLink(peer: peer, conversation: conversation))
        }
    }

    /// Where the peer and its data stand: `pairStatus` from version 4 on.
    public func status() async throws -> PairStatus {
        guard peer.version >= WireVersion.pairStatus else { return try await legacyStatus() }
        switch try await request(.pairStatus) {
        case .pairStatusReply(let status): return status
        case let other: throw PeerLinkError.unexpectedReply("\(other.type) to pairStatus")
        }
    }

    /// Asks the peer to become the primary; returns its epoch then.
    public func promote(reason: String) async throws -> UInt64 {
        switch try await request(.promote(reason: reason)) {
        case .roleChanged(_, let epoch): return epoch
        case let other: throw PeerLinkError.unexpectedReply("\(other.type) to promote")
        }
    }

    /// One request and its answer; an `error` answer is thrown as `.refused`.
    private func request(_ message: WireMessage) async throws -> WireMessage {
        let answer = try await conversation.exchange(message)
        if case .error(let error) = answer { throw PeerLinkError.refused(error) }
        return answer
    }

    /// A peer that speaks at most version 3 has no `pairStatus`: its status
    /// properties say the same, under the names `stats` shows. Only for the
    /// time a pair runs two versions (an upgrade, one node after the other):
    /// drop it with version 3.
    private func legacyStatus() async throws -> PairStatus {
        guard case .properties(let properties) = try await request(.statusRequest) else {
            throw PeerLinkError.unexpectedReply("no properties to statusRequest")
        }
        let table = Dictionary(properties.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
        func role(_ name: String) -> NodeRole? {
            [NodeRole.primary, .backup, .joining].first { table[name] == $0.description }
        }
        func id(_ name: String) -> ReplicationID { table[name].flatMap { ReplicationID(hex: $0) } ?? .none }
        func number(_ name: String) -> UInt64 { table[name].flatMap { UInt64($0) } ?? 0 }
        guard let current = role("role") else {
            throw PeerLinkError.unexpectedReply("a status without a role a pair has: \(table["role"] ?? "none")")
        }
        return PairStatus(
            // Only a peer configured as primary changes a decision; one from
            // before `configured_role` (version 2) was not reported as such.
            nodeName: peer.nodeName, role: current, configuredRole: role("configured_role") ?? .backup, epoch: number("epoch"),
            replicationID: id("data_replication_id"), offset: number("data_offset"),
            previousReplicationID: id("data_previous_replication_id"), forkOffset: number("data_fork_offset")
        )
    }

    /// The frames of one link: a request out, frames in until its answer.
    private final class Conversation {
        let channel: any Channel
        var answers: NIOAsyncChannelInboundStream<WireFrame>.AsyncIterator
        let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
        let timeout: TimeAmount
        var nextID: UInt32 = 1

        init(channel: any Channel, answers: NIOAsyncChannelInboundStream<WireFrame>.AsyncIterator, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, timeout: TimeAmount) {
            self.channel = channel
            self.answers = answers
            self.outbound = outbound
            self.timeout = timeout
        }

        /// Sends `message` and returns the frame that answers it (an `error`
        /// answer included). Frames that answer nothing are passed over. A
        /// peer silent for `timeout` has the link closed under it.
        func exchange(_ message: WireMessage) async throws -> WireMessage {
            let id = nextID
            nextID &+= 1
            var buffer = channel.allocator.buffer(capacity: 64)
            try buffer.writeWireMessage(message, requestID: id)
            try await outbound.write(buffer)
            let started = ContinuousClock.now
            let deadline = channel.eventLoop.scheduleTask(in: timeout) { [channel] in channel.close(promise: nil) }
            defer { deadline.cancel() }
            do {
                while let frame = try await answers.next() {
                    guard frame.isResponse, frame.requestID == id else { continue }
                    return try frame.message()
                }
            } catch let error as WireProtocolError {
                throw PeerLinkError.other("\(error)")
            }
            let silent = started.duration(to: .now) >= .nanoseconds(timeout.nanoseconds)
            throw silent ? PeerLinkError.timedOut : PeerLinkError.closed
        }
    }
}

/// Why a question to the peer got no answer.
public enum PeerLinkError: Error, Sendable, CustomStringConvertible {
    /// No connection could be made.
    case unreachable(String)
    /// The handshake failed (a secret on one node only, or a different one).
    case handshake(WireHandshakeError)
    /// The peer answered with an error.
    case refused(WireError)
    /// The peer answered something that does not fit the request.
    case unexpectedReply(String)
    case timedOut
    case closed
    /// A frame from the peer that does not parse.
    case other(String)

    public var description: String {
        switch self {
        case .unreachable(let reason): return "cannot reach the peer at \(reason)"
        case .handshake(let error): return "handshake with the peer: \(error)"
        case .refused(let error): return "the peer answered: \(error.message) (\(error.code))"
        case .unexpectedReply(let what): return "unexpected answer from the peer: \(what)"
        case .timedOut: return "the peer did not answer in time"
        case .closed: return "the peer closed the connection"
        case .other(let reason): return reason
        }
    }
}
