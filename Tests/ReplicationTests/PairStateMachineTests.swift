@testable import Replication
import Testing
import WireProtocol

/// Every rule of the pair, one row each: a machine in a state, an event, the
/// state it moves to, its epoch then, and the actions it asks for.
@Suite("Pair state machine")
struct PairStateMachineTests {
    typealias Machine = PairStateMachine
    static let history = ReplicationID(bytes: Array(1...16))
    static let other = ReplicationID(bytes: Array(17...32))

    static func machine(
        _ state: Machine.State, epoch: UInt64 = 3, peerEpoch: UInt64 = 0, role: NodeRole = .backup, hasPeer: Bool = true,
        failoverAfter: Int64 = 600, offset: UInt64 = 100
    ) -> Machine {
        var machine = Machine(
            configuration: .init(
                hasPeer: hasPeer, configuredRole: role, failoverAfterMillis: failoverAfter, heartbeatIntervalMillis: 100,
                recoveredReplicationID: history, recoveredOffset: offset
            ),
            epoch: epoch
        )
        machine.name = "b"
        machine.state = state
        machine.peerEpoch = peerEpoch
        return machine
    }

    static func status(
        _ role: NodeRole, epoch: UInt64 = 3, history: ReplicationID = history, offset: UInt64 = 100, configured: NodeRole = .backup,
        name: String = "a"
    ) -> PairStatus {
        PairStatus(nodeName: name, role: role, configuredRole: configured, epoch: epoch, replicationID: history, offset: offset)
    }

    struct Row: CustomTestStringConvertible, Sendable {
        var rule: String
        var given: Machine
        var event: Machine.Event
        var state: Machine.State
        var epoch: UInt64
        var actions: [Machine.Action]
        var testDescription: String { rule }
    }

    static func follow(_ reason: String, stepsDown: Bool = false) -> Machine.Action { .follow(reason: reason, stepsDown: stepsDown) }
    static func lead(_ epoch: UInt64, _ reason: String, automatic: Bool = false) -> Machine.Action {
        .lead(Machine.Lead(epoch: epoch, reason: reason, automatic: automatic, isPromotion: true))
    }
    static let silent = Machine.Observation(primarySilenceMillis: 10_000)

    static let rows: [Row] = [
        // Start.
        Row(rule: "without a peer: leads in the stored epoch, no promotion", given: machine(.joining(deadline: .max), hasPeer: false),
            event: .start(now: 0), state: .primary, epoch: 3,
            actions: [.lead(Machine.Lead(epoch: 3, reason: "start: no peer", automatic: false, isPromotion: false))]),
        Row(rule: "with a peer: asks it, until max(1 s, failover time)", given: machine(.joining(deadline: .max)),
            event: .start(now: 50), state: .joining(deadline: 1050), epoch: 3, actions: [.probePeer]),
        Row(rule: "joining: asks again at each tick before the deadline", given: machine(.joining(deadline: 1000)),
            event: .tick(now: 999, observed: .init()), state: .joining(deadline: 1000), epoch: 3, actions: [.probePeer]),
        Row(rule: "joining: no answer changes nothing", given: machine(.joining(deadline: 1000)),
            event: .peerStatus(nil), state: .joining(deadline: 1000), epoch: 3, actions: []),
        Row(rule: "joining: at the deadline, a configured primary promotes", given: machine(.joining(deadline: 1000), peerEpoch: 5, role: .primary),
            event: .tick(now: 1000, observed: .init()),
            state: .promoting(reason: "start: peer unreachable", automatic: false, previousEpoch: 3, from: .unsettled), epoch: 6,
            actions: [.log(.warning, "the peer did not answer at start; taking the configured role", ["role": "primary"]), .persistEpoch(6)]),
        Row(rule: "joining: at the deadline, a configured backup follows", given: machine(.joining(deadline: 1000)),
            event: .tick(now: 1001, observed: .init()), state: .backup(suspectSince: nil), epoch: 3,
            actions: [.log(.warning, "the peer did not answer at start; taking the configured role", ["role": "backup"]),
                      follow("start: configured as backup")]),
        Row(rule: "joining: the peer is primary: follow it in its epoch", given: machine(.joining(deadline: 1000)),
            event: .peerStatus(status(.primary, epoch: 7)), state: .backup(suspectSince: nil), epoch: 7,
            actions: [follow("start: a is the primary")]),
        Row(rule: "joining: the peer has the same history further on: ask it to lead", given: machine(.joining(deadline: 1000)),
            event: .peerStatus(status(.joining, offset: 101)), state: .handingOverAtStart, epoch: 3,
            actions: [.log(.notice, "the peer holds newer data than this node's storage; it leads", ["peer": "a", "peer_offset": "101", "offset": "100"]),
                      .askPeerToPromote(reason: "b restarted with older data", timeoutMillis: 1000)]),
        Row(rule: "joining: this node's data is newer: promote above the peer's epoch, to the next even one (configured primary)",
            given: machine(.joining(deadline: 1000), role: .primary),
            event: .peerStatus(status(.backup, epoch: 4, offset: 99)),
            state: .promoting(reason: "start: this node holds the newest data", automatic: false, previousEpoch: 3, from: .joining(deadline: 1000)),
            epoch: 6, actions: [.persistEpoch(6)]),
        Row(rule: "handing over at start: follows whatever the peer answered", given: machine(.handingOverAtStart),
            event: .peerPromoted(.failure(.peerRefused("timed out"))), state: .backup(suspectSince: nil), epoch: 3,
            actions: [follow("start: the peer holds newer data")]),
        Row(rule: "handing over at start: a promote request waits", given: machine(.handingOverAtStart),
            event: .promoteRequested(reason: "r", automatic: false), state: .handingOverAtStart, epoch: 3,
            actions: [.answer(.failure(.inProgress))]),

        // Promotion.
        Row(rule: "backup: a promote request stops following and stores a higher epoch", given: machine(.backup(suspectSince: nil), peerEpoch: 4),
            event: .promoteRequested(reason: "r", automatic: false),
            state: .promoting(reason: "r", automatic: false, previousEpoch: 3, from: .backup), epoch: 5,
            actions: [.stopFollowing, .persistEpoch(5)]),
        Row(rule: "unsettled: a promote request promotes, to the next odd epoch (configured backup)", given: machine(.unsettled),
            event: .promoteRequested(reason: "r", automatic: false),
            state: .promoting(reason: "r", automatic: false, previousEpoch: 3, from: .unsettled), epoch: 5, actions: [.persistEpoch(5)]),
        Row(rule: "primary: a promote request answers its epoch", given: machine(.primary),
            event: .promoteRequested(reason: "r", automatic: false), state: .primary, epoch: 3, actions: [.answer(.success(3))]),
        Row(rule: "demoting: still the primary for a promote request", given: machine(.demoting(reason: "d")),
            event: .promoteRequested(reason: "r", automatic: false), state: .demoting(reason: "d"), epoch: 3, actions: [.answer(.success(3))]),
        Row(rule: "promoting: another promotion is refused",
            given: machine(.promoting(reason: "x", automatic: false, previousEpoch: 2, from: .backup)),
            event: .promoteRequested(reason: "r", automatic: false),
            state: .promoting(reason: "x", automatic: false, previousEpoch: 2, from: .backup), epoch: 3, actions: [.answer(.failure(.inProgress))]),
        Row(rule: "promoting: the epoch stored: lead", given: machine(.promoting(reason: "x", automatic: true, previousEpoch: 2, from: .backup)),
            event: .epochPersisted(true), state: .primary, epoch: 3, actions: [lead(3, "x", automatic: true), .answer(.success(3))]),
        Row(rule: "promoting from backup: the epoch not stored: back to the old epoch, follow again",
            given: machine(.promoting(reason: "x", automatic: false, previousEpoch: 2, from: .backup)),
            event: .epochPersisted(false), state: .backup(suspectSince: nil), epoch: 2,
            actions: [.log(.error, "promotion abandoned: the new epoch could not be stored", ["epoch": "3", "reason": "x"]),
                      follow("promotion failed"), .answer(.failure(.epochNotPersisted))]),
        Row(rule: "a failover whose epoch is not stored is logged as a failed failover",
            given: machine(.promoting(reason: "x", automatic: true, previousEpoch: 2, from: .backup)),
            event: .epochPersisted(false), state: .backup(suspectSince: nil), epoch: 2,
            actions: [.log(.error, "promotion abandoned: the new epoch could not be stored", ["epoch": "3", "reason": "x"]),
                      .log(.error, "failover failed", ["error": "\(Machine.Refusal.epochNotPersisted)"]),
                      follow("promotion failed"), .answer(.failure(.epochNotPersisted))]),
        Row(rule: "promoting while joining: the epoch not stored: keep comparing",
            given: machine(.promoting(reason: "x", automatic: false, previousEpoch: 2, from: .joining(deadline: 900))),
            event: .epochPersisted(false), state: .joining(deadline: 900), epoch: 2,
            actions: [.log(.error, "promotion abandoned: the new epoch could not be stored", ["epoch": "3", "reason": "x"]),
                      .answer(.failure(.epochNotPersisted))]),
        Row(rule: "promoting at the start deadline: the epoch not stored: unsettled",
            given: machine(.promoting(reason: "x", automatic: false, previousEpoch: 2, from: .unsettled)),
            event: .epochPersisted(false), state: .unsettled, epoch: 2,
            actions: [.log(.error, "promotion abandoned: the new epoch could not be stored", ["epoch": "3", "reason": "x"]),
                      .answer(.failure(.epochNotPersisted))]),
        Row(rule: "promoting: a peer's hello waits for the outcome",
            given: machine(.promoting(reason: "x", automatic: false, previousEpoch: 2, from: .backup)),
            event: .peerHello(epoch: 9, name: "a"),
            state: .promoting(reason: "x", automatic: false, previousEpoch: 2, from: .backup), epoch: 3, actions: []),

        // Demotion.
        Row(rule: "primary: a demote request asks the peer to lead", given: machine(.primary),
            event: .demoteRequested(reason: "d"), state: .demoting(reason: "d"), epoch: 3,
            actions: [.askPeerToPromote(reason: "handed over by b: d", timeoutMillis: 2000)]),
        Row(rule: "no peer: nobody to hand over to", given: machine(.primary, hasPeer: false),
            event: .demoteRequested(reason: "d"), state: .primary, epoch: 3, actions: [.answer(.failure(.noPeer))]),
        Row(rule: "backup: a demote request answers its epoch", given: machine(.backup(suspectSince: nil)),
            event: .demoteRequested(reason: "d"), state: .backup(suspectSince: nil), epoch: 3, actions: [.answer(.success(3))]),
        Row(rule: "demoting: a second demote request is refused", given: machine(.demoting(reason: "d")),
            event: .demoteRequested(reason: "e"), state: .demoting(reason: "d"), epoch: 3, actions: [.answer(.failure(.inProgress))]),
        Row(rule: "demoting: the peer leads: follow it in its epoch", given: machine(.demoting(reason: "d")),
            event: .peerPromoted(.success(7)), state: .backup(suspectSince: nil), epoch: 7,
            actions: [follow("handed over: d", stepsDown: true), .answer(.success(7))]),
        Row(rule: "demoting: the peer refused: still the primary", given: machine(.demoting(reason: "d")),
            event: .peerPromoted(.failure(.peerRefused("no"))), state: .primary, epoch: 3, actions: [.answer(.failure(.peerRefused("no")))]),
        Row(rule: "a hand-over answered after the node stepped down: its epoch", given: machine(.backup(suspectSince: nil), epoch: 8),
            event: .peerPromoted(.success(8)), state: .backup(suspectSince: nil), epoch: 8, actions: [.answer(.success(8))]),

        // Stepping down.
        Row(rule: "primary: a hello in a higher epoch: step down", given: machine(.primary),
            event: .peerHello(epoch: 4, name: "a"), state: .backup(suspectSince: nil), epoch: 4,
            actions: [follow("peer a leads in epoch 4", stepsDown: true)]),
        Row(rule: "primary: a hello in the same epoch: stay", given: machine(.primary),
            event: .peerHello(epoch: 3, name: "z"), state: .primary, epoch: 3, actions: []),
        Row(rule: "demoting: a hello in a higher epoch: step down", given: machine(.demoting(reason: "d")),
            event: .peerHello(epoch: 5, name: "a"), state: .backup(suspectSince: nil), epoch: 5,
            actions: [follow("peer a leads in epoch 5", stepsDown: true)]),
        Row(rule: "backup: a hello only raises the peer epoch", given: machine(.backup(suspectSince: nil)),
            event: .peerHello(epoch: 9, name: "a"), state: .backup(suspectSince: nil), epoch: 3, actions: []),
        Row(rule: "primary: the peer leads in the same epoch with a greater name: step down", given: machine(.primary),
            event: .peerChecked(.init(name: "c", role: .primary, epoch: 3)), state: .backup(suspectSince: nil), epoch: 3,
            actions: [follow("peer c is primary in epoch 3", stepsDown: true)]),
        Row(rule: "primary: the peer leads in the same epoch with a smaller name: stay", given: machine(.primary),
            event: .peerChecked(.init(name: "a", role: .primary, epoch: 3)), state: .primary, epoch: 3, actions: []),
        Row(rule: "primary: the peer leads in a lower epoch: stay", given: machine(.primary),
            event: .peerChecked(.init(name: "z", role: .primary, epoch: 2)), state: .primary, epoch: 3, actions: []),
        Row(rule: "primary: the peer is a backup in a higher epoch: stay", given: machine(.primary),
            event: .peerChecked(.init(name: "z", role: .backup, epoch: 9)), state: .primary, epoch: 3, actions: []),

        // Timers.
        Row(rule: "primary without a backup: looks at its peer when due", given: machine(.primary),
            event: .tick(now: 0, observed: .init(hasBackup: false)), state: .primary, epoch: 3, actions: [.checkPeer]),
        Row(rule: "primary with a backup: does not", given: machine(.primary),
            event: .tick(now: 0, observed: .init(hasBackup: true)), state: .primary, epoch: 3, actions: []),
        Row(rule: "backup: a primary heard lately", given: machine(.backup(suspectSince: 100)),
            event: .tick(now: 500, observed: .init(primarySilenceMillis: 299)), state: .backup(suspectSince: nil), epoch: 3, actions: []),
        Row(rule: "backup: silent for the failover time less the window: try a fresh connection", given: machine(.backup(suspectSince: nil)),
            event: .tick(now: 500, observed: .init(primarySilenceMillis: 300)), state: .backup(suspectSince: 500), epoch: 3, actions: [.probePrimary]),
        Row(rule: "backup: silent for long, but suspected for less than the window", given: machine(.backup(suspectSince: 300)),
            event: .tick(now: 599, observed: silent), state: .backup(suspectSince: 300), epoch: 3, actions: [.probePrimary]),
        Row(rule: "backup: silent for the failover time, suspected for the window: fail over", given: machine(.backup(suspectSince: 300), peerEpoch: 3),
            event: .tick(now: 600, observed: silent),
            state: .promoting(reason: "failover: no word from the primary for 10000 ms", automatic: true, previousEpoch: 3, from: .backup), epoch: 5,
            actions: [.probePrimary, .stopFollowing, .persistEpoch(5)]),
        Row(rule: "backup with failover off: never promotes", given: machine(.backup(suspectSince: nil), failoverAfter: 0),
            event: .tick(now: 600, observed: silent), state: .backup(suspectSince: nil), epoch: 3, actions: []),
        Row(rule: "backup: follows in the epoch its primary's helloOK said", given: machine(.backup(suspectSince: nil), epoch: 0),
            event: .tick(now: 500, observed: .init(primarySilenceMillis: 10, primaryEpoch: 2)), state: .backup(suspectSince: nil), epoch: 2,
            actions: []),
        // Found by the pair simulation (PairSimulationTests, the failover and partition scenarios, seed 10): b's
        // hand-over at start was refused, so it followed a in epoch 2 while still in epoch 0; its failover went to
        // epoch 1, and a, back in epoch 2, took over again with older data and a full resync.
        Row(rule: "backup: a failover goes above its primary's epoch, though it learnt none before following",
            given: machine(.backup(suspectSince: 300), epoch: 0),
            event: .tick(now: 600, observed: .init(primarySilenceMillis: 700, primaryEpoch: 2)),
            state: .promoting(reason: "failover: no word from the primary for 700 ms", automatic: true, previousEpoch: 2, from: .backup), epoch: 3,
            actions: [.probePrimary, .stopFollowing, .persistEpoch(3)]),
        Row(rule: "backup: a primary's epoch lower than its own changes nothing", given: machine(.backup(suspectSince: nil), epoch: 5),
            event: .tick(now: 500, observed: .init(primarySilenceMillis: 10, primaryEpoch: 2)), state: .backup(suspectSince: nil), epoch: 5,
            actions: []),
    ]

    /// A configured backup that starts beside a joining primary hands over,
    /// and the primary, already promoting on its own, answers "in progress":
    /// the backup follows without having heard an epoch. The epoch the
    /// replication link's helloOK stated must give it one, or its failover would promote into
    /// an epoch below the old primary's, which, restarted, would lead again.
    @Test func aBackupThatFollowedWithoutAnEpochLearnsItFromTheLinkAndFailsOverAboveIt() {
        var backup = Machine(
            configuration: .init(hasPeer: true, configuredRole: .backup, failoverAfterMillis: 600, heartbeatIntervalMillis: 100),
            epoch: 0
        )
        backup.name = "b"
        _ = backup.step(.start(now: 0))
        let handOver = backup.step(.peerStatus(Self.status(.joining, epoch: 0, history: .none, offset: 0, configured: .primary)))
        #expect(handOver.contains(.askPeerToPromote(reason: "b restarted with older data", timeoutMillis: 1000)))
        _ = backup.step(.peerPromoted(.failure(.inProgress)))
        #expect(backup.state == .backup(suspectSince: nil))
        // The replication link connected: its helloOK said epoch 2.
        _ = backup.step(.tick(now: 100, observed: .init(primarySilenceMillis: 10, primaryEpoch: 2)))
        #expect(backup.epoch == 2)
        _ = backup.step(.tick(now: 1_000, observed: Self.silent))
        let failover = backup.step(.tick(now: 2_000, observed: Self.silent))
        #expect(failover.contains(.persistEpoch(3)))
        #expect(backup.epoch > 2)
    }

    @Test(arguments: rows)
    func transition(_ row: Row) {
        var machine = row.given
        let actions = machine.step(row.event)
        #expect(machine.state == row.state)
        #expect(machine.epoch == row.epoch)
        #expect(actions == row.actions)
    }

    @Test func thePeerCheckWaitsItsInterval() {
        var machine = Self.machine(.joining(deadline: .max), role: .primary)
        machine.state = .primary
        machine.nextPeerCheck = 0
        #expect(machine.step(.tick(now: 0, observed: .init())) == [.checkPeer])
        #expect(machine.step(.tick(now: 100, observed: .init())) == [])
        #expect(machine.step(.tick(now: 200, observed: .init())) == [.checkPeer])
    }

    /// Which node's data leads at start, from the side of node "b".
    @Test(arguments: [
        ("same history, further on", status(.joining, offset: 101), NodeRole.primary, true),
        ("same history, behind", status(.joining, offset: 99), NodeRole.backup, false),
        ("other history, higher epoch", status(.joining, epoch: 4, history: other, offset: 1), NodeRole.primary, true),
        ("other history, lower epoch", status(.joining, epoch: 2, history: other, offset: 900), NodeRole.backup, false),
        ("same place: the configured primary keeps it", status(.backup), NodeRole.primary, false),
        ("same place: a configured backup defers to a running peer", status(.backup), NodeRole.backup, true),
        ("same place: a configured backup defers to a configured primary", status(.joining, configured: .primary), NodeRole.backup, true),
        ("same place, both configured backups starting: the greater name", status(.joining, name: "c"), NodeRole.backup, true),
        ("same place, both starting, neither configured: the greater name", status(.joining, name: "a"), NodeRole.joining, false),
        ("a peer without history: the higher epoch", status(.joining, epoch: 4, history: .none), NodeRole.primary, true),
    ] as [(String, PairStatus, NodeRole, Bool)])
    func newerData(_ rule: String, _ peer: PairStatus, _ configured: NodeRole, _ newer: Bool) {
        let machine = Self.machine(.joining(deadline: 0), role: configured)
        #expect(machine.peerHoldsNewerData(peer) == newer, "\(rule)")
    }

    @Test func rolesShown() {
        #expect(Self.machine(.promoting(reason: "", automatic: false, previousEpoch: 0, from: .backup)).nodeRole == .backup)
        #expect(Self.machine(.promoting(reason: "", automatic: false, previousEpoch: 0, from: .unsettled)).nodeRole == .joining)
        #expect(Self.machine(.demoting(reason: "")).acceptsWrites)
        #expect(!Self.machine(.promoting(reason: "", automatic: false, previousEpoch: 0, from: .backup)).acceptsWrites)
    }

    @Test("the two nodes promote into disjoint epochs: odd for the configured backup, even for the configured primary")
    func disjointEpochs() {
        #expect(PairStateMachine.nextEpoch(above: 0, configuredRole: .backup) == 1)
        #expect(PairStateMachine.nextEpoch(above: 1, configuredRole: .backup) == 3)
        #expect(PairStateMachine.nextEpoch(above: 1, configuredRole: .primary) == 2)
        #expect(PairStateMachine.nextEpoch(above: 2, configuredRole: .primary) == 4)
        for highest in 0...20 as ClosedRange<UInt64> {
            #expect(PairStateMachine.nextEpoch(above: highest, configuredRole: .backup) != PairStateMachine.nextEpoch(above: highest, configuredRole: .primary))
        }
    }
}
