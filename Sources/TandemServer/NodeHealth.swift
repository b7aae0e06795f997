import Replication
import SessionPersistence
import WireProtocol

/// `GET /health`: whether the node can serve memcached clients now, in one line.
///
/// 200 (`ok …`) when it can; 503 with the reason when:
/// - it is starting (recovering, or comparing its data with its peer's before
///   its memcached port opens: `joining`),
/// - it is a backup whose link to the primary is not streaming and that will
///   not fail over (`--failover-after 0`): its reads may be stale and its
///   writes fail with `SERVER_ERROR primary unavailable` until someone runs
///   `tandemctl promote` or the primary returns,
/// - it is shutting down (draining connections).
///
/// - its storage fails (`persistence_errors` rising, `persistence_pending` >
///   0): it still serves every request from memory and retries, but what it
///   acknowledges would not survive a restart, so it is not healthy. The line
///   says so, and says not to restart it: the changes only its memory holds
///   would be lost. Orchestrators that restart processes should probe
///   `GET /live` (200 while the process answers), not /health.
///
/// A backup whose link is down but that fails over is 200 too: within
/// `--failover-after` it either hears from the primary again or becomes the
/// primary, and the writes it receives meanwhile are held and answered.
enum NodeHealth {
    struct Verdict: Sendable {
        var canServe: Bool
        /// `ok …`, or the reason the node cannot serve.
        var line: String
    }

    static func evaluate(_ context: ServerContext, phase: MetricsServer.Phase) -> Verdict {
        var verdict = roleVerdict(context, phase: phase)
        if verdict.canServe, let persistence = context.persistence {
            let figures = persistence.statistics()
            if figures.failing, figures.pending > 0 {
                verdict = Verdict(
                    canServe: false,
                    line: "persistence failing: \(figures.pending) changes kept only in memory, do not restart (\(verdict.line), serving from memory): \(figures.lastError ?? "unknown error")"
                )
            }
        }
        return verdict
    }

    private static func roleVerdict(_ context: ServerContext, phase: MetricsServer.Phase) -> Verdict {
        switch phase {
        case .starting:
            if let pair = context.pair, let peer = pair.configuration.peer {
                return Verdict(canServe: false, line: "joining: comparing data with the peer \(peer.host):\(peer.port) before serving")
            }
            return Verdict(canServe: false, line: "starting: the memcached port is not open yet")
        case .stopping:
            return Verdict(canServe: false, line: "stopping: draining connections")
        case .serving:
            break
        }
        guard let pair = context.pair else { return Verdict(canServe: true, line: "ok standalone") }
        let epoch = pair.epoch
        switch pair.nodeRole {
        case .joining:
            return Verdict(canServe: false, line: "joining: settling the role with the peer")
        case .primary:
            return Verdict(canServe: true, line: "ok primary epoch \(epoch)")
        case .backup:
            guard let replica = pair.replica else {
                // The role changed between the two reads; the next request sees the new one.
                return Verdict(canServe: false, line: "changing role")
            }
            let peer = "\(replica.peerHost):\(replica.peerPort)"
            let link = replica.linkState
            switch link {
            case .streaming:
                return Verdict(canServe: true, line: "ok backup following \(peer) epoch \(epoch)")
            case .connecting, .handshaking, .resyncing, .down, .stopped:
                let failoverAfter = pair.configuration.replication.failoverAfter.nanoseconds / 1_000_000
                if failoverAfter > 0 {
                    return Verdict(
                        canServe: true,
                        line: "ok backup of \(peer) epoch \(epoch), link \(link.rawValue): fails over after \(failoverAfter) ms of silence"
                    )
                }
                return Verdict(
                    canServe: false,
                    line: "backup: the link to the primary \(peer) is \(link.rawValue) and failover is off (--failover-after 0); writes fail until it returns or tandemctl promote"
                )
            }
        }
    }
}
