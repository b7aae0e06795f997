import NIOCore
import SessionStore
import WireProtocol

/// A backup's link to its primary as `stats` shows it (`link_state`).
public enum ReplicaLinkState: String, Sendable {
    case connecting
    /// Connected; the handshake is not done.
    case handshaking
    /// Reconciling, or waiting for or receiving a resync.
    case resyncing
    case streaming
    /// Not connected: the next attempt waits for its back-off.
    case down
    case stopped
}

/// A backup's link to its primary, as one pure machine: no I/O, no clocks,
/// no locks. It covers the link's whole life: attempts and their back-off,
/// the handshake, reconciliation, the resync, the stream, heartbeats and
/// silence, and the stop.
///
/// `ReplicaClient` and its channel handler are the shell: they open and
/// close connections, time retries and heartbeats, move frames, and apply
/// the data through `ReplicaStream`, feeding back what happened. The pair
/// simulator drives the same machine over its simulated network.
///
/// `Link` is one connection (a channel; a number in the simulator). Each
/// attempt to connect is numbered, and an event about an attempt other than
/// the current one (a connection closing after a newer one opened, a retry
/// that a probe overtook) changes nothing.
public struct ReplicaLink<Link> {
    /// Where a connection is in the replication conversation.
    public enum Phase {
        /// `hello` sent, waiting for `helloOK`.
        case awaitingHelloOK(WireHandshake)
        /// `auth` sent, waiting for the primary's `authOK` and its proof.
        case awaitingAuthOK(WireHandshake, HelloOK)
        /// `reconcile` sent, waiting for the watermark.
        case awaitingReconcileFrom
        /// Sending the versions above the watermark, then waiting for `reconcileDone`.
        case reconciling
        /// `replicate` sent, waiting for `fullResync` or `partialResync`.
        case awaitingResync
        /// Receiving a snapshot: `items` of it so far, since `started`.
        case receivingSnapshot(FullResync, items: UInt64, started: NIODeadline)
        /// Receiving the change stream.
        case streaming
        /// Closed by this side: what still arrives on it is dropped.
        /// `wasReady`: the handshake had been done.
        case closing(wasReady: Bool)
    }

    /// A connection that is open.
    public struct Connection {
        public let attempt: UInt64
        public let link: Link
        public fileprivate(set) var phase: Phase
        fileprivate var lastSent: NIODeadline
        fileprivate var lastReceived: NIODeadline
        /// Attempts that failed in a row before this one.
        fileprivate var failures: Int

        /// The handshake is done and the link has not been closed: writes may go on it.
        var isReady: Bool {
            switch phase {
            case .awaitingHelloOK, .awaitingAuthOK, .closing: return false
            case .awaitingReconcileFrom, .reconciling, .awaitingResync, .receivingSnapshot, .streaming: return true
            }
        }
    }

    public enum State {
        /// Not started.
        case idle
        /// Not connected: `attempt` is due after a back-off, `failures` in a row so far.
        case down(attempt: UInt64, failures: Int)
        /// `attempt` is connecting.
        case connecting(attempt: UInt64, failures: Int)
        case connected(Connection)
        /// Following no more: nothing connects again.
        case stopped
    }

    /// What the shell does.
    public enum Action {
        /// Opens a connection for `attempt`, then reports `connected` or `closed`.
        case connect(attempt: UInt64)
        /// Reports `retryDue(attempt)` after `delay`.
        case retry(attempt: UInt64, after: TimeAmount)
        case send(WireMessage, requestID: UInt32, flags: UInt16, on: Link)
        /// Closes the link; `reason` is for the log (nil: this node stopped following).
        case close(Link, reason: String?)
        /// The handshake is done with `primary`: the link carries writes now.
        case ready(HelloOK, Link)
        /// Sends `reconcile` with the data's position, under `ReplicaLink.reconcileRequestID`.
        case reconcile(on: Link)
        /// Sends every version stamped above `watermark`, then `reconcileEnd`
        /// (closing the link if it cannot).
        case sendVersions(newerThan: UInt64, on: Link)
        /// The primary merged what this node sent (nil: it had nothing to ask for).
        case reconciled(ReconcileSummary?)
        /// Sends `replicate` with the data's position.
        case replicate(on: Link)
        /// A snapshot follows: the stream starts a full resync (one that
        /// stopped refuses it, and its link is closing already).
        case startFullResync(FullResync)
        /// Snapshot items, `received` of the snapshot with them.
        case applySnapshot([ReplicatedItem], received: UInt64, of: FullResync)
        /// The snapshot is whole; the stream goes on from its offset, which is acknowledged.
        case finishFullResync(FullResync, items: UInt64, took: TimeAmount)
        /// The stream resumes after `offset` (`failed` if it cannot).
        case partialResync(ReplicationID, offset: UInt64)
        /// Changes to apply, and the frame's body for the backlog; their offset is owed an `ack`.
        case apply([ReplicatedChange], body: ByteBuffer)
        /// The primary's clock, from its ping: the highest stamp it may have handed out.
        case heardStamp(UInt64)
        /// The primary's answer to the forwarded write `requestID`.
        case forwardReplied(requestID: UInt32, Result<ForwardReply, WireError>)
        /// The link is gone, this node still follows: `wasReady` says whether it carried writes.
        case lost(wasReady: Bool)
    }

    /// The primary's answer to a forwarded write: its reply, and the stream
    /// offset after which the backup sees the write.
    public struct ForwardReply {
        public var offset: UInt64
        public var reply: ByteBuffer
    }

    /// The request ID of `reconcile` and `reconcileEnd`, apart from the forwards' IDs.
    public static var reconcileRequestID: UInt32 { .max }
    /// Back-off between attempts: doubles from the first to the last. Short
    /// enough that a backup notices a returning primary well within a failover timeout.
    public static var reconnectDelays: (first: TimeAmount, last: TimeAmount) { (.milliseconds(50), .milliseconds(500)) }

    public private(set) var state: State = .idle
    /// When anything was last heard from an authenticated primary (or a
    /// primary answered at all, even refusing this node's proof): the
    /// failover timer's measure. Nil: never.
    public private(set) var lastHeard: NIODeadline?
    /// The last primary that completed a handshake.
    public private(set) var primary: HelloOK?

    private let nodeName: String
    private let secret: WireSecret?
    private let heartbeatInterval: TimeAmount
    private let timeout: TimeAmount

    public init(configuration: ReplicationConfiguration) {
        nodeName = configuration.nodeName
        secret = configuration.secret
        heartbeatInterval = configuration.heartbeatInterval
        timeout = configuration.linkTimeout
    }

    public var linkState: ReplicaLinkState {
        switch state {
        case .idle, .connecting: return .connecting
        case .down: return .down
        case .stopped: return .stopped
        case .connected(let connection):
            switch connection.phase {
            case .awaitingHelloOK, .awaitingAuthOK: return .handshaking
            case .awaitingReconcileFrom, .reconciling, .awaitingResync, .receivingSnapshot: return .resyncing
            case .streaming: return .streaming
            // Closing: down as soon as the shell reports it closed.
            case .closing: return .down
            }
        }
    }

    /// The link when writes can go on it: the handshake done, not closing.
    public var usableLink: Link? {
        guard case .connected(let connection) = state, connection.isReady else { return nil }
        return connection.link
    }

    public var isStopped: Bool {
        if case .stopped = state { return true }
        return false
    }

    /// The current attempt's connection, if it is open.
    public var connection: Connection? {
        if case .connected(let connection) = state { return connection }
        return nil
    }

    // MARK: Events

    /// Starts following: the first attempt.
    public mutating func start() -> [Action] {
        guard case .idle = state else { return [] }
        state = .connecting(attempt: 1, failures: 0)
        return [.connect(attempt: 1)]
    }

    /// Attempt `attempt` connected over `link`: `hello` goes first, carrying
    /// this node's `epoch`. A connection this machine no longer wants is closed.
    public mutating func connected(_ attempt: UInt64, link: Link, epoch: UInt64, now: NIODeadline) -> [Action] {
        guard case .connecting(attempt, let failures) = state else { return [.close(link, reason: nil)] }
        let handshake = WireHandshake(role: .peer, nodeName: nodeName, epoch: epoch, secret: secret)
        state = .connected(Connection(
            attempt: attempt, link: link, phase: .awaitingHelloOK(handshake), lastSent: now, lastReceived: now, failures: failures
        ))
        return [.send(.hello(handshake.hello), requestID: 0, flags: 0, on: link)]
    }

    /// Attempt `attempt` failed to connect, or its connection closed.
    public mutating func closed(_ attempt: UInt64) -> [Action] {
        let failures: Int
        var wasReady = false
        switch state {
        case .connecting(attempt, let before):
            failures = before + 1
        case .connected(let connection) where connection.attempt == attempt:
            if case .closing(let ready) = connection.phase { wasReady = ready } else { wasReady = connection.isReady }
            failures = connection.failures + 1
        case .idle, .down, .connecting, .connected, .stopped:
            return []
        }
        let next = attempt + 1
        state = .down(attempt: next, failures: failures)
        let exponent = min(failures - 1, 10)
        let delay = min(Self.reconnectDelays.first.nanoseconds << exponent, Self.reconnectDelays.last.nanoseconds)
        return [.lost(wasReady: wasReady), .retry(attempt: next, after: .nanoseconds(delay))]
    }

    /// The back-off of `attempt` passed.
    public mutating func retryDue(_ attempt: UInt64) -> [Action] {
        guard case .down(attempt, let failures) = state else { return [] }
        state = .connecting(attempt: attempt, failures: failures)
        return [.connect(attempt: attempt)]
    }

    /// Connects at once if the link is down and waiting for its back-off:
    /// the failover timer wants a fresh try before it gives up on the primary.
    public mutating func probe() -> [Action] {
        guard case .down(let attempt, _) = state else { return [] }
        state = .connecting(attempt: attempt, failures: 0)
        return [.connect(attempt: attempt)]
    }

    /// This node follows no more.
    public mutating func stop() -> [Action] {
        let link = connection?.link
        state = .stopped
        return link.map { [.close($0, reason: nil)] } ?? []
    }

    /// The primary answered something (a TLS handshake that refused this
    /// node's certificate): it is alive, and must not be failed over.
    public mutating func heard(now: NIODeadline) {
        lastHeard = now
    }

    /// The connection failed under the machine (a frame that does not
    /// decode, TLS), or the shell could not do what an action asked (a
    /// partial resync the stream refused): the connection closes.
    public mutating func failed(_ attempt: UInt64, reason: String) -> [Action] {
        guard case .connected(var connection) = state, connection.attempt == attempt else { return [] }
        defer { state = .connected(connection) }
        if case .closing = connection.phase { return [] }
        return close(&connection, reason: reason)
    }

    /// The heartbeat: a silent primary is given up on; a link this side has
    /// been quiet on gets a ping carrying this node's clock.
    public mutating func tick(_ attempt: UInt64, now: NIODeadline, clockMillis: Int64) -> [Action] {
        guard case .connected(var connection) = state, connection.attempt == attempt else { return [] }
        defer { state = .connected(connection) }
        if case .closing = connection.phase { return [] }
        if now - connection.lastReceived > timeout {
            return close(&connection, reason: "no message from the primary for \(timeout.nanoseconds / 1_000_000) ms")
        }
        guard now - connection.lastSent >= heartbeatInterval else { return [] }
        return send(.ping(timestampMillis: clockMillis), on: &connection, now: now)
    }

    /// Acknowledges the stream up to `offset` (once per burst of frames).
    public mutating func acknowledge(_ attempt: UInt64, offset: UInt64, now: NIODeadline) -> [Action] {
        guard case .connected(var connection) = state, connection.attempt == attempt else { return [] }
        defer { state = .connected(connection) }
        if case .closing = connection.phase { return [] }
        return send(.ack(offset: offset), on: &connection, now: now)
    }

    /// `message`, decoded from `frame`, from the primary. (The shell decodes
    /// it, outside whatever lock guards this machine; one that does not
    /// decode is `failed`.)
    public mutating func received(_ message: WireMessage, in frame: WireFrame, on attempt: UInt64, now: NIODeadline) -> [Action] {
        guard case .connected(var connection) = state, connection.attempt == attempt else { return [] }
        defer { state = .connected(connection) }
        connection.lastReceived = now
        switch connection.phase {
        case .closing:
            return []
        case .awaitingHelloOK, .awaitingAuthOK:
            break
        case .awaitingReconcileFrom, .reconciling, .awaitingResync, .receivingSnapshot, .streaming:
            // Only an authenticated primary's messages keep the failover timer at bay.
            lastHeard = now
        }
        let link = connection.link
        switch (connection.phase, message) {
        case (.awaitingHelloOK(let handshake), .helloOK(let ok)):
            guard ok.nodeRole == .primary else { return close(&connection, reason: "the peer is a \(ok.nodeRole), not a primary") }
            // The primary is alive, even if this node cannot authenticate to it
            // (a wrong secret): that must not start a failover.
            lastHeard = now
            do {
                switch try handshake.next(after: ok) {
                case .ready:
                    return ready(ok, &connection, now: now)
                case .authenticate(let auth):
                    connection.phase = .awaitingAuthOK(handshake, ok)
                    return send(auth, on: &connection, now: now)
                }
            } catch {
                return close(&connection, reason: Self.describe(error))
            }

        case (.awaitingAuthOK(let handshake, let ok), .authOK(let proof)):
            do {
                try handshake.check(authOK: proof, after: ok)
            } catch {
                return close(&connection, reason: Self.describe(error))
            }
            return ready(ok, &connection, now: now)

        case (.awaitingAuthOK, .error(let error)) where error.code == .authenticationFailed:
            return close(&connection, reason: Self.describe(.proofRefused))

        case (.awaitingReconcileFrom, .reconcileFrom(let watermark)):
            guard watermark != .max else {
                connection.phase = .awaitingResync
                return [.reconciled(nil), .replicate(on: link)]
            }
            connection.phase = .reconciling
            return [.sendVersions(newerThan: watermark, on: link)]

        case (.reconciling, .reconcileDone(let summary)):
            connection.phase = .awaitingResync
            return [.reconciled(summary), .replicate(on: link)]

        case (.awaitingResync, .fullResync(let resync)):
            connection.phase = .receivingSnapshot(resync, items: 0, started: now)
            return [.startFullResync(resync)]

        case (.awaitingResync, .partialResync(let replicationID, let offset)):
            connection.phase = .streaming
            return [.partialResync(replicationID, offset: offset)]

        case (.receivingSnapshot(let resync, let items, let started), .snapshotChunk(let chunk)):
            let received = items + UInt64(chunk.count)
            connection.phase = .receivingSnapshot(resync, items: received, started: started)
            return [.applySnapshot(chunk, received: received, of: resync)]

        case (.receivingSnapshot(let resync, let items, let started), .snapshotEnd(let sent)):
            guard sent == items else { return close(&connection, reason: "the snapshot announced \(sent) items but \(items) arrived") }
            connection.phase = .streaming
            return [.finishFullResync(resync, items: items, took: now - started)]

        case (.streaming, .changes(let changes)):
            return [.apply(changes, body: frame.body)]

        case (_, .forwardReply(let offset, let reply)) where frame.isResponse:
            return [.forwardReplied(requestID: frame.requestID, .success(ForwardReply(offset: offset, reply: reply)))]

        case (_, .error(let error)) where frame.requestID == Self.reconcileRequestID:
            return close(&connection, reason: "the primary refused reconciliation: \(error)")

        case (_, .error(let error)) where frame.isResponse && frame.requestID != 0:
            return [.forwardReplied(requestID: frame.requestID, .failure(error))]

        case (_, .ping(let timestamp)):
            // The primary's pings carry its stamp clock (milliseconds).
            let pong = send(.pong(timestampMillis: timestamp), requestID: frame.requestID, flags: WireFrame.Flags.response, on: &connection, now: now)
            return [.heardStamp(HybridTimestamp.floor(millis: timestamp))] + pong

        case (_, .pong):
            return []

        case (_, .error(let error)):
            return close(&connection, reason: "the primary closed the link: \(error)")

        default:
            return close(&connection, reason: "unexpected \(message.type) while \(connection.phase)")
        }
    }

    // MARK: Helpers

    /// The handshake is done: merge what this node may hold that the primary
    /// lacks, then ask for the stream. Every new link reconciles before it
    /// resyncs, not just the first: the primary at the other end may have
    /// restarted with older data than this node holds. When this node's data
    /// is a prefix of the primary's history, that costs one round trip.
    private mutating func ready(_ ok: HelloOK, _ connection: inout Connection, now: NIODeadline) -> [Action] {
        primary = ok
        lastHeard = now
        connection.failures = 0
        connection.phase = .awaitingReconcileFrom
        connection.lastSent = now
        return [.ready(ok, connection.link), .reconcile(on: connection.link)]
    }

    private func send(
        _ message: WireMessage, requestID: UInt32 = 0, flags: UInt16 = 0, on connection: inout Connection, now: NIODeadline
    ) -> [Action] {
        connection.lastSent = now
        return [.send(message, requestID: requestID, flags: flags, on: connection.link)]
    }

    private func close(_ connection: inout Connection, reason: String) -> [Action] {
        connection.phase = .closing(wasReady: connection.isReady)
        return [.close(connection.link, reason: reason)]
    }

    /// A failed handshake, in the words of this node's log: what to fix on which node.
    public static func describe(_ error: WireHandshakeError) -> String {
        switch error {
        case .nodeWithoutSecret:
            // Replicating from a node that cannot prove it knows the secret
            // would let anyone who can pose as the primary feed this node data.
            return "the primary does not require authentication but this node has a secret: start the primary with the same --secret-file"
        case .secretRequired:
            return "the primary requires authentication; start this node with --secret-file"
        case .badNonce(let count):
            return "the primary's nonce is \(count) bytes, not \(WireSecret.serverNonceLength)"
        case .wrongNodeProof:
            return "the primary's proof is wrong: is the secret the same on both nodes?"
        case .proofRefused:
            return "the primary refused this node's proof: is the secret the same on both nodes?"
        case .refused(let error):
            return "the primary closed the link: \(error)"
        case .unexpectedReply(let type, let request):
            return "unexpected \(type) in answer to \(request)"
        }
    }
}
