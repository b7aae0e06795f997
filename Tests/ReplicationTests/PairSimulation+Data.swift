import Logging
import NIOCore
import NIOEmbedded
@testable import Replication
@testable import SessionStore
import WireProtocol

/// The data side of the simulation: each node's store and what its writer
/// committed, the replication links, the clients' writes, and the checks
/// that no acknowledged write is lost and that the nodes converge.
///
/// **Persistence, modelled.** SQLite is the one part not run. A node's
/// writer takes the change feed's released changes at each commit (every
/// tick, and when an epoch is stored), with the replication position read
/// just before it takes them (`Persistence.setMetaProvider`: a stored offset
/// is never ahead of the items stored), and applies them to `Disk`: the
/// newest version of each key, the tombstones and the position. A failing
/// storage commits nothing and keeps the changes for the next commit. A
/// crash keeps `Disk` and loses everything else; the restart recovers into a
/// new store through the store's own recovery calls (`restore`,
/// `restoreTombstone`, `restoreFlushStamp`, `raiseCas`), as
/// `Persistence.recover` does.
///
/// **The loss windows checked.** README "Persistence and its loss windows":
/// `kill -9` loses what the writer had not committed. README "The pair and
/// its loss windows" and Protocol.md 2.3: in sync mode a write is answered
/// once the backup applied it, so killing either node loses nothing; while
/// the primary has no backup, resyncs it, runs degraded after a sync
/// timeout, or in async mode, it answers before the backup has the write.
/// Together: an acknowledged write may be lost only when, at a crash, the
/// crashing node's memory held the only copy of it (or of a newer version
/// of its key): not its own committed data, not the other node's memory
/// (or, if that node is down, its committed data). Such a write is
/// *excused*; every other acknowledged write must be readable on the
/// primary at the end, unless a version of its key with a newer stamp
/// replaced it (Protocol.md 2.6: "a version disappears only under a newer
/// one of the same key"). A write answered after the backup's
/// acknowledgement must also be on the backup then.
extension PairSimulation {
    static let wallBase: Int64 = 1_700_000_000_000
    static let linkTimeout: Int64 = 1000
    static let syncTimeout: Int64 = 1000
    /// Few keys, so that writes meet: overwrites, deletes and conflicts.
    static let keyCount = 10
    static let logger = Logger(label: "simulation", factory: { _ in SwiftLogNoOpLogHandler() })

    // MARK: Nodes' data

    /// What a node's writer committed: all it has after a crash.
    struct Disk {
        var items: [String: StoredItem] = [:]
        /// The row each item's version was written at (the log's seq).
        var rows: [String: UInt64] = [:]
        var nextRow: UInt64 = 1
        var tombstones: [String: UInt64] = [:]
        var flushStamp: UInt64 = 0
        /// The replication position stored with the last commit.
        var position = Position(replicationID: .none, offset: 0)
    }

    struct StoredItem: Equatable, CustomStringConvertible {
        var value: [UInt8]
        var flags: UInt32
        /// Milliseconds since the epoch (0: never).
        var deadline: Int64 = 0
        var cas: UInt64

        var description: String { "\(String(decoding: value, as: UTF8.self))@\(cas)" }
    }

    /// What a node runs for its role, as `PairRole.Role`.
    enum Role {
        case none
        case primary(PrimaryReplication)
        case backup(Follower)
    }

    /// A backup's following of its primary: `ReplicaClient`'s state, with
    /// the data's rules in a real `ReplicaStream` and the link's in a real
    /// `ReplicaLink` (its links are numbered as `links` is keyed).
    struct Follower {
        let id: Int
        var stream: ReplicaStream
        var link: ReplicaLink<Int>
        /// When it started following: its silence counts from there until it hears a primary.
        let started: Int64
        /// The highest stamp the primary's pings carried.
        var peerStamp: UInt64 = 0
        /// The open connection, if any.
        var linkID: Int? { link.connection?.link }
        /// Its clients' writes sent to the primary or held (`ReplicaClient`'s machine).
        var forwards = ForwardedWrites<Int, Int>(lastRequestID: 1 << 20)
    }

    struct NodeData {
        let store: SessionStore
        let feed: ChangeFeed
        /// The persistence writer's subscription.
        let writer: ChangeFeed.Subscription
        var disk: Disk
        /// Where the data recovered at start stands (`PairRole.Recovered`).
        let recovered: Position
        var role: Role = .none
        /// What a backup about to lead hands over (`stopFollowing` to `lead`).
        var handover: Handover?

        /// A node started from what its writer committed.
        init(recovering disk: Disk, clock: ManualClock, shards: Int = 1) {
            var configuration = StoreConfiguration(shardCount: shards, recordsChanges: true)
            // Which shard a key lands in must not vary from run to run: a seed replays exactly.
            configuration.hashSeed = 0x5EED
            let store = SessionStore(configuration: configuration, clock: clock)
            self.store = store
            var highest = disk.flushStamp
            for key in disk.items.keys.sorted() {
                let item = disk.items[key]!
                Array(key.utf8).withUnsafeBytes { key in
                    item.value.withUnsafeBytes { value in
                        _ = store.restore(
                            key, value: value, flags: item.flags, deadline: Deadline(millis: item.deadline), cas: item.cas, seq: disk.rows[String(decoding: key, as: UTF8.self)] ?? 0
                        )
                    }
                }
                highest = max(highest, item.cas)
            }
            for key in disk.tombstones.keys.sorted() {
                let stamp = disk.tombstones[key]!
                Array(key.utf8).withUnsafeBytes { store.restoreTombstone($0, stamp: stamp) }
                highest = max(highest, stamp)
            }
            store.restoreFlushStamp(disk.flushStamp)
            store.raiseCas(above: highest)
            feed = ChangeFeed(store: store)
            writer = feed.subscribe()
            self.disk = disk
            recovered = disk.position
        }

        var primary: PrimaryReplication? {
            if case .primary(let primary) = role { return primary }
            return nil
        }

        var follower: Follower? {
            if case .backup(let follower) = role { return follower }
            return nil
        }
    }

    /// Moves every node's clock, and the event loop's, to the simulation's time.
    mutating func runClocks() {
        for index in nodes.indices {
            let clock = nodes[index].clock
            clock.advance(millis: Self.wallBase + time + nodes[index].skew - clock.nowMillis())
        }
        loop.advanceTime(to: .uptimeNanoseconds(UInt64(time) * 1_000_000))
    }

    /// Where `node`'s data stands (`PairRole.data(of:)`): what a commit stores.
    func dataPosition(of node: Int) -> Position {
        switch nodes[node].data.role {
        case .none: return nodes[node].data.recovered
        case .primary(let primary): return Position(replicationID: primary.replicationID, offset: primary.offset)
        case .backup(let follower): return follower.stream.position
        }
    }

    /// The writer commits: the position first, then the changes released
    /// since its last commit (storage working). It stores `epoch` for a
    /// promotion's own commit (`persistEpoch`), else the epoch every commit
    /// carries (`PairStateMachine.committableEpoch`, as `PairRole.meta`).
    mutating func commit(_ node: Int, epoch: UInt64? = nil) {
        guard let machine = nodes[node].machine else { return }
        let epoch = epoch ?? machine.committableEpoch
        // Ordinary commits during a promotion keep the epoch before it, so a
        // promotion that storage then refuses leaves no epoch on disk that
        // the node never led in: a stored epoch never goes back.
        if epoch < nodes[node].storedEpoch { storedEpochWentBack = "\(machine.name) stored epoch \(epoch) over \(nodes[node].storedEpoch)" }
        if epoch < nodes[node].ledEpoch { storedEpochWentBack = "\(machine.name) stored epoch \(epoch), below epoch \(nodes[node].ledEpoch) it led in" }
        nodes[node].storedEpoch = epoch
        let position = dataPosition(of: node)
        var disk = nodes[node].data.disk
        var rows: [CommittedRow] = []
        for change in nodes[node].data.writer.takeChanges() {
            let key = String(decoding: change.key, as: UTF8.self)
            switch change.kind {
            case .upsert:
                disk.items[key] = StoredItem(
                    value: Array(change.storage[change.keyLength...]), flags: change.flags, deadline: change.deadline.millis, cas: change.stamp
                )
                disk.rows[key] = disk.nextRow
                rows.append(CommittedRow(storage: change.storage, keyLength: change.keyLength, seq: disk.nextRow, length: UInt32(change.valueCount), cas: change.stamp))
                disk.nextRow += 1
            case .remove:
                // The expiry of the committed version itself leaves its row,
                // which recovery skips by its deadline (`Persistence`).
                if change.committedRowExpires {
                    stats.expiredCommittedRows += 1
                } else {
                    disk.items[key] = nil
                    disk.rows[key] = nil
                }
                // `Persistence`: an expiry's stamp stays a tombstone.
                if change.deadline.hasPassed(at: nodes[node].data.store.now()) {
                    disk.tombstones[key] = max(disk.tombstones[key] ?? 0, change.stamp)
                }
            case .delete:
                disk.items[key] = nil
                disk.rows[key] = nil
                disk.tombstones[key] = max(disk.tombstones[key] ?? 0, change.stamp)
            case .flushAll:
                // The log's flush drops its tombstones too (`ItemDatabase.flushAll`).
                disk.items = [:]
                disk.rows = [:]
                disk.tombstones = [:]
            }
        }
        disk.flushStamp = nodes[node].data.store.flushStamp
        disk.position = position
        nodes[node].data.disk = disk
        // The headers learn their rows once committed: a value written is clean.
        _ = nodes[node].data.store.markCommitted(rows)
    }

    // MARK: Roles (PairRole's lead, follow, stopFollowing)

    mutating func lead(_ node: Int) {
        let data = nodes[node].data
        let handover = data.handover ?? Handover(recovered: data.recovered, stampCeiling: data.store.stampCeiling())
        nodes[node].data.handover = nil
        if let link = data.follower?.linkID { closeEnd(link, at: node) }
        // Writes the backup held for a primary run here (`failParked(.roleChanged)`).
        var held: [(Int, ForwardedWrites<Int, Int>.Ending)] = []
        if var follower = nodes[node].data.follower {
            held = follower.forwards.endHeld()
            nodes[node].data.role = .backup(follower)
        }
        defer { runHeldWrites(held, at: node) }
        let primary = PrimaryReplication(
            store: data.store, feed: data.feed, configuration: replication, logger: Self.logger,
            inherited: handover.inherited, previous: handover.continued
        )
        nodes[node].data.role = .primary(primary)
        log("\(nodes[node].name) leads: \(primary.replicationID) from \(primary.offset), continuing \(primary.previous.map { "\($0.replicationID) after \($0.forkOffset)" } ?? "nothing")")
    }

    mutating func follow(_ node: Int) {
        nodes[node].data.handover = nil
        var (position, exact) = ReplicaStream.start(steppingDownFrom: nil, recovered: nodes[node].data.recovered)
        switch nodes[node].data.role {
        case .primary(let primary):
            (position, exact) = ReplicaStream.start(steppingDownFrom: primary, recovered: nodes[node].data.recovered)
            primary.shutdown(reason: "steps down")
        case .backup(let follower):
            position = follower.stream.position
            exact = follower.stream.exact
            if let link = follower.linkID { closeEnd(link, at: node) }
        case .none:
            break
        }
        nextFollower += 1
        let stream = ReplicaStream(store: nodes[node].data.store, position: position, exact: exact, backlogCapacity: replication.backlogSize)
        var configuration = replication
        configuration.nodeName = nodes[node].name
        // A new replication client counts its silence from its start.
        nodes[node].data.role = .backup(Follower(id: nextFollower, stream: stream, link: ReplicaLink(configuration: configuration), started: time))
        log("\(nodes[node].name) follows from \(position.replicationID) at \(position.offset)\(exact ? " (exact)" : "")")
        stepLink(node) { $0.start() }
    }

    mutating func stopFollowing(_ node: Int) {
        guard var follower = nodes[node].data.follower else { return }
        follower.stream.stop()
        nodes[node].data.handover = follower.stream.handOver()
        let peerStamp = max(follower.peerStamp, follower.stream.highestStamp)
        nodes[node].data.store.raiseCas(above: Handover.stampFloor(peerStamp: peerStamp, silenceMillis: time - lastHeard(by: follower)))
        nodes[node].data.role = .backup(follower)
        stepLink(node) { $0.stop() }
        forwardsLinkLost(at: node, stopping: true)
    }

    mutating func probePrimary(_ node: Int) {
        stepLink(node) { $0.probe() }
    }

    // MARK: Replication links

    /// What a replication link carries: encoded frames, or word that the
    /// other end closed (or its process died).
    enum LinkMessage {
        case frames(ByteBuffer)
        case closed
    }

    /// The primary's end as `PrimaryReplication` sees it: `ReplicaSession`'s part.
    final class Connection: BackupConnection, @unchecked Sendable {
        var notified = false
        var closeRequested = false
        func notify() { notified = true }
        func close(reason: String) { closeRequested = true }
    }

    /// A snapshot being sent, page by page.
    struct SnapshotWalk {
        let offset: UInt64
        var shard = 0
        var cursor = 0
        var sent: UInt64 = 0
    }

    /// One connection from a backup to its primary.
    struct Link {
        let id: Int
        let backup: Int
        let primary: Int
        let lives: [Int]
        let follower: Int
        /// The backup's `ReplicaLink` attempt this connection is.
        let attempt: UInt64
        /// Each end's view, by node.
        var open = [true, true]
        /// A direction that lost a message delivers nothing more (a stalled connection).
        var stalled = [false, false]
        var lastDelivery: [Int64] = [0, 0]
        /// The primary's end: its heartbeat (`ReplicaSession`), once it streams.
        var lastSent: Int64
        var lastReceived: Int64
        /// The primary's end of the handshake (`WireConnectionHandler`).
        var acceptor: WireHandshakeAcceptor
        var merge: ReconcileMerge?
        var stream: BackupStream?
        var snapshot: SnapshotWalk?
        let connection = Connection()
    }

    /// The simulation's time as a monotonic deadline, for `ReplicaLink`.
    func deadline(_ millis: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(millis) * 1_000_000) }

    /// When a backup last heard its primary (or started following).
    func lastHeard(by follower: Follower) -> Int64 {
        follower.link.lastHeard.map { Int64($0.uptimeNanoseconds / 1_000_000) } ?? follower.started
    }

    /// Feeds `node`'s link machine an event and does what it decides
    /// (`ReplicaClient.perform`); returns the stream offset an `ack` is owed for.
    @discardableResult
    mutating func stepLink(_ node: Int, _ event: (inout ReplicaLink<Int>) -> [ReplicaLink<Int>.Action]) -> UInt64? {
        guard var follower = nodes[node].data.follower else { return nil }
        let actions = event(&follower.link)
        nodes[node].data.role = .backup(follower)
        var owed: UInt64?
        for action in actions {
            if let offset = performLink(action, at: node, follower: follower.id) { owed = offset }
        }
        return owed
    }

    mutating func performLink(_ action: ReplicaLink<Int>.Action, at node: Int, follower id: Int) -> UInt64? {
        guard var follower = nodes[node].data.follower, follower.id == id else { return nil }
        var owed: UInt64?
        switch action {
        case .connect(let attempt):
            connect(node, attempt: attempt)
        case .retry(let attempt, let delay):
            schedule(in: delay.nanoseconds / 1_000_000, .reconnect(node: node, follower: id, attempt: attempt))
        case .send(let message, let requestID, let flags, let link):
            send(on: link, from: node, message, requestID: requestID, flags: flags)
        case .close(let link, let reason):
            if let reason { log("\(nodes[node].name) closes link \(link): \(reason)") }
            closeEnd(link, at: node)
        case .ready(_, let link):
            forwardsLinkUp(at: node, link: link)
        case .reconcile(let link):
            send(on: link, from: node, .reconcile(replicateRequest(of: node)), requestID: ReplicaLink<Int>.reconcileRequestID)
        case .sendVersions(let watermark, let link):
            sendVersions(of: node, newerThan: watermark, on: link)
        case .reconciled:
            break
        case .replicate(let link):
            send(on: link, from: node, .replicate(replicateRequest(of: node)))
        case .startFullResync:
            // Refused only by a stream that stopped, which the link's stop closes first.
            guard follower.stream.startFullResync() else {
                broken = "\(nodes[node].name) could not start a full resync"
                return nil
            }
        case .applySnapshot(let items, _, _):
            follower.stream.applySnapshot(items)
        case .finishFullResync(let resync, _, _):
            follower.stream.finishFullResync(replicationID: resync.replicationID, offset: resync.offset)
            owed = resync.offset
        case .partialResync(let replicationID, let offset):
            guard follower.stream.partialResync(replicationID: replicationID, offset: offset) != nil else {
                broken = "\(nodes[node].name) was offered a partial resync from \(offset), which it does not have"
                return nil
            }
        case .apply(let changes, let body):
            owed = follower.stream.apply(changes, body: body)
        case .heardStamp(let stamp):
            follower.peerStamp = max(follower.peerStamp, stamp)
        case .forwardReplied(let requestID, let result):
            backupReceivesForwardReply(result, requestID: requestID, at: node)
            return nil
        case .lost:
            forwardsLinkLost(at: node, stopping: false)
            return nil
        }
        if case .backup(let current) = nodes[node].data.role, current.id == id {
            // The stream and stamp changes above; the link machine as the nested steps left it.
            follower.link = current.link
            follower.forwards = current.forwards
            nodes[node].data.role = .backup(follower)
        }
        return owed
    }

    /// `reconcile` and `replicate` carry where the data stands, and the epoch.
    func replicateRequest(of node: Int) -> Replicate {
        let position = nodes[node].data.follower!.stream.position
        return Replicate(replicationID: position.replicationID, offset: position.offset, epoch: nodes[node].machine!.epoch)
    }

    /// A backup's attempt to connect to its peer (the peer's port answers if
    /// its process runs): refused at once by a machine whose process is
    /// down; unanswered until the connect timeout when the network is cut.
    mutating func connect(_ node: Int, attempt: UInt64) {
        guard let follower = nodes[node].data.follower else { return }
        let peer = 1 - node
        let reachable = linkUp[node][peer] && linkUp[peer][node]
        guard reachable, nodes[peer].machine != nil else {
            schedule(in: reachable ? 1 : Self.linkTimeout, .connectFailed(node: node, follower: follower.id, attempt: attempt))
            return
        }
        nextLink += 1
        let id = nextLink
        links[id] = Link(
            id: id, backup: node, primary: peer, lives: [nodes[0].life, nodes[1].life], follower: follower.id, attempt: attempt,
            lastSent: time, lastReceived: time, acceptor: WireHandshakeAcceptor(secret: replication.secret)
        )
        let epoch = nodes[node].machine!.epoch
        let now = deadline(time)
        stepLink(node) { $0.connected(attempt, link: id, epoch: epoch, now: now) }
    }

    /// A connection attempt's outcome or a back-off's end, for the follower that made it.
    mutating func linkEvent(_ node: Int, follower id: Int, _ event: (inout ReplicaLink<Int>) -> [ReplicaLink<Int>.Action]) {
        guard nodes[node].machine != nil, nodes[node].data.follower?.id == id else { return }
        stepLink(node, event)
    }

    /// Sends on link `id` from `node`'s end: in order, after a delay; a cut
    /// direction stalls the connection for good.
    mutating func send(on id: Int, from node: Int, _ message: LinkMessage) {
        guard var link = links[id], link.open[node] else { return }
        let to = 1 - node
        if node == link.primary { link.lastSent = time }
        guard !link.stalled[node], linkUp[node][to] else {
            link.stalled[node] = true
            links[id] = link
            return
        }
        var delay = Int64(random.int(0...random.pick([2, 5, 20])))
        // A lost packet is sent again: late, not lost.
        if random.chance(lossPercent) { delay += 200 }
        let at = max(time + delay, link.lastDelivery[node])
        link.lastDelivery[node] = at
        links[id] = link
        schedule(at: at, .deliver(to: to, .link(id: id, message)))
    }

    mutating func send(on id: Int, from node: Int, _ message: WireMessage, requestID: UInt32 = 0, flags: UInt16 = 0) {
        var buffer = ByteBuffer()
        try! buffer.writeWireMessage(message, flags: flags, requestID: requestID)
        send(on: id, from: node, .frames(buffer))
    }

    /// Closes `node`'s end of link `id` (the other end hears it if the way is open).
    mutating func closeEnd(_ id: Int, at node: Int) {
        guard var link = links[id], link.open[node] else { return }
        tellClosed(&link, from: node)
        link.open[node] = false
        let stream = link.stream
        link.stream = nil
        link.snapshot = nil
        links[id] = link.open.contains(true) ? link : nil
        if node == link.primary {
            // `ReplicaSession.closed()`: the primary no longer has it as its backup.
            var stream = stream
            stream?.closed()
            stream?.primary.detach(link.connection)
        } else if nodes[node].data.follower?.id == link.follower {
            // The channel's close future: `ReplicaClient.closed`.
            stepLink(node) { $0.closed(link.attempt) }
        }
    }

    /// The other end learns that `node`'s end closed, after what was sent before (if the way is open).
    mutating func tellClosed(_ link: inout Link, from node: Int) {
        guard !link.stalled[node], linkUp[node][1 - node] else { return }
        let at = max(time + Int64(random.int(0...5)), link.lastDelivery[node])
        link.lastDelivery[node] = at
        schedule(at: at, .deliver(to: 1 - node, .link(id: link.id, .closed)))
    }

    /// A crashed node's connections: gone, and the peer is told if the way is open.
    mutating func dropLinks(of node: Int) {
        for id in links.keys.sorted() {
            guard var link = links[id], link.open[node] else { continue }
            tellClosed(&link, from: node)
            link.open[node] = false
            links[id] = link.open.contains(true) ? link : nil
        }
    }

    /// Heartbeats and link timeouts at `node`'s tick: the backup's end from
    /// the start (`ReplicaLink.tick`), the primary's once it streams
    /// (`ReplicaSession`).
    mutating func tickLinks(of node: Int) {
        if let follower = nodes[node].data.follower, let attempt = follower.link.connection?.attempt {
            let (now, clock) = (deadline(time), nodes[node].data.store.now())
            stepLink(node) { $0.tick(attempt, now: now, clockMillis: clock) }
        }
        for id in links.keys.sorted() {
            guard let link = links[id], link.open[node], node == link.primary, link.stream != nil else { continue }
            if time - link.lastReceived > Self.linkTimeout {
                log("\(nodes[node].name) closes link \(id): silent")
                closeEnd(id, at: node)
            } else if time - link.lastSent >= Self.heartbeat {
                // A primary's pings carry its stamp clock.
                send(on: id, from: node, .ping(timestampMillis: HybridTimestamp.millis(nodes[node].data.store.currentStamp())))
            }
        }
    }

    /// A message for `node`'s end of link `id`.
    mutating func receive(_ message: LinkMessage, on id: Int, at node: Int) {
        guard var link = links[id], link.open[node], link.lives[node] == nodes[node].life, nodes[node].machine != nil else { return }
        if node == link.primary { link.lastReceived = time }
        links[id] = link
        switch message {
        case .closed:
            closeEnd(id, at: node)
        case .frames(let bytes) where node == link.primary:
            for frame in Self.frames(in: bytes) {
                guard links[id]?.open[node] == true else { return }
                let message = try! frame.message()
                if case .forward(let request) = message {
                    primaryRunsForward(request, requestID: frame.requestID, on: id)
                } else {
                    primaryReceives(message, requestID: frame.requestID, on: id)
                }
            }
        case .frames(let bytes):
            backupReceives(bytes, on: id)
        }
    }

    // MARK: The primary's end (WireConnectionHandler and ReplicaSession)

    mutating func primaryReceives(_ message: WireMessage, requestID: UInt32, on id: Int) {
        let node = links[id]!.primary
        let backupName = nodes[links[id]!.backup].name
        let primary = nodes[node].data.primary
        switch links[id]!.acceptor.state {
        case .awaitingHello, .awaitingAuth:
            handshake(message, requestID: requestID, on: id)
            return
        case .refused:
            return
        case .accepted:
            break
        }
        switch message {
        case .reconcile(let position):
            guard let primary else {
                send(on: id, from: node, .error(WireError(.notPrimary, "not the primary")), requestID: requestID, flags: WireFrame.Flags.response)
                return
            }
            let watermark = primary.reconcileWatermark(for: position)
            if watermark != .max { links[id]!.merge = ReconcileMerge(watermark: watermark) }
            send(on: id, from: node, .reconcileFrom(watermark: watermark), requestID: requestID, flags: WireFrame.Flags.response)
        case .reconcileChunk(let changes):
            guard var merge = links[id]!.merge else {
                broken = "reconcileChunk on link \(id) without a reconciliation"
                return
            }
            merge.merge(changes, into: nodes[node].data.store, from: backupName, logger: Self.logger)
            links[id]!.merge = merge
        case .reconcileEnd(let count):
            guard let merge = links[id]!.merge, merge.received == count else {
                broken = "reconcileEnd(\(count)) on link \(id) does not match what arrived"
                return
            }
            links[id]!.merge = nil
            stats.reconciledVersions += merge.applied
            stats.reconcileConflicts += merge.conflicts
            log("\(nodes[node].name) merged \(merge.received) versions from \(backupName): \(merge.applied) applied, \(merge.conflicts) conflicts")
            send(on: id, from: node, .reconcileDone(merge.summary))
        case .replicate(let request):
            guard let primary else {
                send(on: id, from: node, .error(WireError(.notPrimary, "not the primary")))
                return
            }
            var stream = BackupStream(primary: primary)
            let opening = stream.open(for: request, on: links[id]!.connection, backupName: backupName, continuingHistories: true)
            links[id]!.stream = stream
            switch opening {
            case .partial(let replicationID, let offset, let resumption):
                primary.acknowledged(offset)
                stats.partialResyncs += 1
                if resumption == .partialAfterPromotion { stats.partialResyncsAfterPromotion += 1 }
                log("\(nodes[node].name) resumes \(backupName) after \(offset) (\(resumption))")
                send(on: id, from: node, .partialResync(replicationID: replicationID, offset: offset))
                pushPending(id)
            case .full(let resync, let reason):
                stats.fullResyncs += 1
                stats.fullResyncReasons[Self.kind(of: reason), default: 0] += 1
                log("\(nodes[node].name) sends \(backupName) a snapshot at \(resync.offset): \(reason)")
                send(on: id, from: node, .fullResync(resync))
                links[id]!.snapshot = SnapshotWalk(offset: resync.offset)
                schedule(in: Int64(random.int(1...5)), .snapshotPage(link: id))
            }
        case .ack(let offset):
            guard var stream = links[id]!.stream else { return }
            switch stream.acknowledge(offset) {
            case .accepted(let offset): stream.primary.acknowledged(offset)
            case .violation(let reason): broken = "link \(id): \(reason)"
            case .ignored: break
            }
            links[id]!.stream = stream
        case .ping, .pong:
            break
        default:
            broken = "a primary's end of link \(id) received \(message.type)"
        }
    }

    /// A full resync's reason without its numbers, for counting.
    static func kind(of reason: String) -> String {
        String(reason.split(separator: " ").prefix(while: { !$0.contains(where: \.isNumber) }).joined(separator: " "))
    }

    /// Sends the backlog's frames the backup has not had yet (`ReplicaSession.pushPending`).
    mutating func pushPending(_ id: Int) {
        guard var link = links[id], link.open[link.primary], var stream = link.stream else { return }
        let pending = stream.pending()
        link.stream = stream
        links[id] = link
        switch pending {
        case .nothing:
            break
        case .frames(let frames):
            for frame in frames { send(on: id, from: link.primary, .frames(frame)) }
        case .overflow(let offset):
            log("link \(id): the backlog no longer holds \(offset)")
            closeEnd(id, at: link.primary)
        }
    }

    /// The snapshot's next page (`ReplicaSession.streamSnapshot`), taken from
    /// the store as it is now: writes made meanwhile are in the stream after
    /// the snapshot's offset too.
    mutating func sendSnapshotPage(_ id: Int) {
        guard let link = links[id], link.open[link.primary], var walk = link.snapshot, link.stream != nil,
            let primary = nodes[link.primary].data.primary
        else { return }
        let store = nodes[link.primary].data.store
        let page = store.items(inShard: walk.shard, from: walk.cursor, limit: 4)
        if !page.items.isEmpty {
            let items = page.items.map { item in
                ReplicatedItem(
                    key: ByteBuffer(bytes: item.storage[..<item.keyLength]), value: ByteBuffer(bytes: item.storage[item.keyLength...]),
                    flags: item.flags, deadlineMillis: item.deadline.millis, stamp: item.cas
                )
            }
            send(on: id, from: link.primary, .snapshotChunk(items))
            walk.sent += UInt64(items.count)
        }
        guard BackupStream.snapshotCanResume(after: walk.offset, on: primary) else {
            log("link \(id): the backlog overflowed during the snapshot")
            closeEnd(id, at: link.primary)
            return
        }
        if let next = page.next {
            walk.cursor = next
        } else {
            walk.shard += 1
            walk.cursor = 0
        }
        guard walk.shard >= store.shardCount else {
            links[id]?.snapshot = walk
            schedule(in: Int64(random.int(1...5)), .snapshotPage(link: id))
            return
        }
        send(on: id, from: link.primary, .snapshotEnd(items: walk.sent))
        links[id]?.snapshot = nil
        links[id]?.stream?.snapshotSent()
        pushPending(id)
    }

    /// Sends `ack`s, pushes streams, closes the connections the primaries
    /// asked to close, and answers the writes whose waits ended.
    mutating func settleData() {
        var again = true
        while again {
            again = false
            for id in links.keys.sorted() {
                guard let link = links[id] else { continue }
                if link.connection.closeRequested {
                    link.connection.closeRequested = false
                    closeEnd(id, at: link.primary)
                    again = true
                } else if link.connection.notified {
                    link.connection.notified = false
                    pushPending(id)
                    again = true
                }
            }
        }
        answerWrites()
        sendForwardReplies()
        answerForwardedWrites()
    }

    /// The primary's end of the handshake (`WireConnectionHandler`): the
    /// acceptor answers, then a hello that counts (without a secret at once,
    /// with one once proved) may make the node step down.
    mutating func handshake(_ message: WireMessage, requestID: UInt32, on id: Int) {
        let node = links[id]!.primary
        guard let machine = nodes[node].machine else { return }
        let identity = NodeIdentity(name: machine.name, role: machine.nodeRole, epoch: machine.epoch)
        switch links[id]!.acceptor.received(message, node: identity) {
        case .refuse(let code, let reason):
            send(on: id, from: node, .error(WireError(code, reason)), requestID: requestID, flags: WireFrame.Flags.response)
            closeEnd(id, at: node)
        case .answer(let answer, let accepted):
            send(on: id, from: node, answer, requestID: requestID, flags: WireFrame.Flags.response)
            if let accepted { step(node, .peerHello(epoch: accepted.epoch, name: accepted.name), replyTo: nil) }
        }
    }

    // MARK: The backup's end (ReplicaConnectionHandler and ReplicaClient)

    /// Frames at the backup's end, each through its `ReplicaLink`; then one
    /// `ack` for the burst (`channelReadComplete`).
    mutating func backupReceives(_ bytes: ByteBuffer, on id: Int) {
        let link = links[id]!
        let node = link.backup
        guard let follower = nodes[node].data.follower, follower.id == link.follower,
            follower.link.connection?.attempt == link.attempt
        else {
            closeEnd(id, at: node)
            return
        }
        var ackOwed: UInt64?
        for frame in Self.frames(in: bytes) {
            guard links[id]?.open[node] == true else { return }
            let message = try! frame.message()
            let now = deadline(time)
            if let offset = stepLink(node, { $0.received(message, in: frame, on: link.attempt, now: now) }) { ackOwed = offset }
        }
        if let ackOwed, links[id]?.open[node] == true {
            let now = deadline(time)
            stepLink(node) { $0.acknowledge(link.attempt, offset: ackOwed, now: now) }
        }
    }

    /// Every item and tombstone stamped above the watermark
    /// (`ReplicaClient.sendVersions`), then `reconcileEnd`.
    mutating func sendVersions(of node: Int, newerThan watermark: UInt64, on id: Int) {
        let store = nodes[node].data.store
        var versions: [ReplicatedChange] = []
        if store.flushStamp > watermark { versions.append(ReconcileMerge.version(ofFlush: store.flushStamp)) }
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.versions(inShard: shard, newerThan: watermark, from: from, limit: 256)
                cursor = page.next
                versions += page.items.map { ReconcileMerge.version(of: $0, coldValue: []) }
            }
            let tombstones = store.tombstones(inShard: shard, newerThan: watermark).sorted { $0.key.lexicographicallyPrecedes($1.key) }
            versions += tombstones.map { ReconcileMerge.version(ofDelete: $0.key, stamp: $0.stamp) }
        }
        if !versions.isEmpty { send(on: id, from: node, .reconcileChunk(versions)) }
        send(on: id, from: node, .reconcileEnd(count: UInt64(versions.count)), requestID: ReplicaLink<Int>.reconcileRequestID)
    }

    static func frames(in bytes: ByteBuffer) -> [WireFrame] {
        var buffer = bytes
        var decoder = WireFrameDecoder()
        var frames: [WireFrame] = []
        while let frame = try! decoder.decode(buffer: &buffer) { frames.append(frame) }
        precondition(buffer.readableBytes == 0, "a partial frame on a simulated link")
        return frames
    }

    // MARK: Clients

    /// One client write.
    struct Write {
        let id: Int
        let node: Int
        let life: Int
        let key: String
        /// nil: a delete.
        let value: [UInt8]?
        /// When the set's item expires (ms since the epoch; 0: never).
        let deadline: Int64
        let stamp: UInt64
        /// The stream offset the write is at, which a sync write waits for the backup to acknowledge.
        let target: UInt64
        let primary: PrimaryReplication
        var acknowledged = false
        /// The backup that had applied it when it was answered (sync), and its life then.
        var replicatedTo: (node: Int, life: Int)?
        /// Why its loss is within a documented window.
        var excused: String?
    }

    /// Writes whose waits ended, and how far the backup had acknowledged then.
    final class Completions: @unchecked Sendable {
        var done: [(write: Int, acknowledged: UInt64)] = []
        /// Forwarded writes the primary may now answer.
        var forwardReplies: [(link: Int, requestID: UInt32, write: Int?)] = []
    }

    /// A client writes to a node that takes writes (either, while both do):
    /// a set or a delete of a key drawn, or of `key` when scripted.
    mutating func clientWrite(_ scripted: (key: String, delete: Bool)? = nil) {
        guard !writesPaused || scripted != nil else { return }
        if scripted == nil, options.script == nil, random.chance(options.forwardPercent) {
            forwardedClientWrite()
            return
        }
        let candidates = (0..<2).filter { nodes[$0].machine?.acceptsWrites == true && nodes[$0].data.primary != nil }
        guard !candidates.isEmpty else { return }
        let node = candidates.count == 1 ? candidates[0] : random.pick(candidates)
        if scripted == nil, options.script == nil, random.chance(1) {
            flushAll(at: node)
            return
        }
        let key = scripted?.key ?? "k\(random.int(0...Self.keyCount - 1))"
        let delete = scripted?.delete ?? random.chance(20)
        // Some sets expire, within 2 s: before the final check, whatever the clocks' skew.
        let expiring = scripted == nil && options.script == nil && !delete && random.chance(10)
        let deadline = expiring ? nodes[node].data.store.now() + Int64(random.int(300...2000)) : 0
        if expiring { stats.expiringSets += 1 }
        guard let id = runWrite(at: node, key: key, value: delete ? nil : Array("w\(writes.count)".utf8), deadline: deadline) else { return }
        let primary = writes[id].primary
        log("client → \(nodes[node].name): \(delete ? "delete \(key)" : "set \(key)=w\(id)") @\(writes[id].stamp), offset \(writes[id].target)\(deadline == 0 ? "" : ", expires at \(deadline)")")
        answerAfterReplication(id, on: primary)
    }

    /// `MemcacheConnectionHandler`: after a connection's writes, the reply
    /// waits for what replication says (`answerWrites` then answers it).
    func answerAfterReplication(_ id: Int, on primary: PrimaryReplication) {
        let completions = self.completions
        if let wait = primary.afterWrites(on: loop) {
            wait.whenComplete { _ in completions.done.append((id, primary.acknowledgements.reached)) }
        } else {
            completions.done.append((id, 0))
        }
    }

    /// A client's `flush_all` on the primary `node`: every item goes, in one
    /// place of the stream, under a stamp of its own (replicated, persisted,
    /// and what reconciliation weighs an older version against).
    mutating func flushAll(at node: Int) {
        let primary = nodes[node].data.primary!
        let store = nodes[node].data.store
        store.flushAll()
        flushStamps.append(store.flushStamp)
        stats.flushes += 1
        log("client → \(nodes[node].name): flush_all @\(store.flushStamp), offset \(primary.offset(ofSequence: store.lastSequence))")
        // Its reply waits as a write's does; the check needs only its stamp.
        _ = primary.afterWrites(on: loop)
    }

    /// Runs a set (or, with `value` nil, a delete) on the primary `node` and
    /// records it as a write (not yet answered); nil when a delete found nothing.
    mutating func runWrite(at node: Int, key: String, value: [UInt8]?, deadline: Int64 = 0) -> Int? {
        let primary = nodes[node].data.primary!
        let store = nodes[node].data.store
        let id = writes.count
        let stamp: UInt64
        if let bytes = value {
            let outcome = try! Array(key.utf8).withUnsafeBytes { key in
                try bytes.withUnsafeBytes { try store.store(key, value: $0, request: StoreRequest(mode: .set, deadline: Deadline(millis: deadline))) }
            }
            guard case .stored(let cas, _) = outcome else {
                broken = "a set on \(nodes[node].name) was not stored: \(outcome)"
                return nil
            }
            stamp = cas
        } else {
            let outcome = try! Array(key.utf8).withUnsafeBytes { try store.delete($0) }
            guard outcome == .deleted else { return nil }
            stamp = Self.tombstones(of: store)[key]!
        }
        let target = primary.offset(ofSequence: store.lastSequence)
        writes.append(Write(id: id, node: node, life: nodes[node].life, key: key, value: value, deadline: deadline, stamp: stamp, target: target, primary: primary))
        stats.writes += 1
        return id
    }

    /// Answers the writes whose waits ended; a write answered because the
    /// backup acknowledged it must be on the backup.
    mutating func answerWrites() {
        let done = completions.done
        completions.done = []
        for (id, acknowledged) in done {
            let write = writes[id]
            // A client of a node that crashed meanwhile got no answer.
            guard nodes[write.node].life == write.life, nodes[write.node].machine != nil else { continue }
            writes[id].acknowledged = true
            stats.acknowledged += 1
            guard acknowledged >= write.target else { continue }
            stats.acknowledgedInSync += 1
            let backup = 1 - write.node
            guard nodes[backup].machine != nil, let follower = nodes[backup].data.follower,
                follower.stream.position.replicationID == write.primary.replicationID
            else { continue }
            // A delete is there as the key's absence (a snapshot carries no tombstones).
            let store = nodes[backup].data.store
            let standing = Self.item(write.key, in: store)
            let applied = write.value == nil ? (standing.map { $0.cas >= write.stamp } ?? true) : Self.version(of: write.key, in: store) >= write.stamp
            guard follower.stream.position.offset >= write.target, applied else {
                broken = "write \(id) (\(write.key)@\(write.stamp), offset \(write.target)) was answered as acknowledged by \(nodes[backup].name), which is at \(follower.stream.position.offset) without it"
                return
            }
            writes[id].replicatedTo = (backup, nodes[backup].life)
        }
    }

    // MARK: What survives

    /// The tombstones of a store, by key.
    static func tombstones(of store: SessionStore) -> [String: UInt64] {
        var stamps: [String: UInt64] = [:]
        for shard in 0..<store.shardCount {
            for (key, stamp) in store.tombstones(inShard: shard, newerThan: 0) { stamps[String(decoding: key, as: UTF8.self)] = stamp }
        }
        return stamps
    }

    /// The live items of a store, by key.
    static func items(of store: SessionStore) -> [String: StoredItem] {
        var items: [String: StoredItem] = [:]
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.items(inShard: shard, from: from, limit: 256)
                cursor = page.next
                for item in page.items {
                    items[String(decoding: item.key, as: UTF8.self)] = StoredItem(
                        value: item.value, flags: item.flags, deadline: item.deadline.millis, cas: item.cas
                    )
                }
            }
        }
        return items
    }

    /// The live item `key` names in a store, without touching it: a read
    /// would expire an item whose deadline passed, a change the node's
    /// schedule did not make.
    static func item(_ key: String, in store: SessionStore) -> ItemSnapshot? {
        let bytes = Array(key.utf8)
        for shard in 0..<store.shardCount {
            var cursor: Int? = 0
            while let from = cursor {
                let page = store.items(inShard: shard, from: from, limit: 256)
                if let item = page.items.first(where: { $0.key == bytes }) { return item }
                cursor = page.next
            }
        }
        return nil
    }

    /// The stamp of the newest version of `key` a store holds: an item, a
    /// tombstone, or the last flush_all, which stands for every key (0: none).
    /// An item that has expired counts: its version is the newest until a
    /// newer one replaces it.
    static func version(of key: String, in store: SessionStore) -> UInt64 {
        let held = Array(key.utf8).withUnsafeBytes { store.heldStamp(of: $0) }
        return max(held ?? 0, tombstones(of: store)[key] ?? 0, store.flushStamp)
    }

    static func version(of key: String, in disk: Disk) -> UInt64 {
        max(disk.items[key]?.cas ?? 0, disk.tombstones[key] ?? 0, disk.flushStamp)
    }

    /// At `node`'s crash: the acknowledged writes whose only copy (of them
    /// or of a newer version of their key) was in its memory are lost, in
    /// the window the documentation gives.
    mutating func excuseWritesLost(crashing node: Int) {
        let other = 1 - node
        let otherUp = nodes[other].machine != nil
        for index in writes.indices where writes[index].acknowledged && writes[index].excused == nil {
            let write = writes[index]
            if Self.version(of: write.key, in: nodes[node].data.disk) >= write.stamp { continue }
            if otherUp, Self.version(of: write.key, in: nodes[other].data.store) >= write.stamp { continue }
            if !otherUp, Self.version(of: write.key, in: nodes[other].data.disk) >= write.stamp { continue }
            // The pair's promise (README "The pair and its loss windows"): a
            // write the backup acknowledged survives the crash of either node.
            // While that backup runs on (the same life), the loss is not excused.
            if let (backup, life) = write.replicatedTo, backup == other, otherUp, nodes[other].life == life { continue }
            writes[index].excused = "only in \(nodes[node].name)'s memory when it crashed at \(time) ms"
            stats.excused += 1
            log("write \(write.id) (\(write.key)@\(write.stamp)) lost with \(nodes[node].name)'s memory")
        }
    }

    /// After healing: the backup has the primary's whole stream, both stores
    /// hold the same items, and every acknowledged write not excused is
    /// readable on the primary with its value, unless a newer version of its
    /// key replaced it.
    mutating func checkData(primary: Int, backup: Int) -> String? {
        settleData()
        if let broken { return broken }
        guard let leader = nodes[primary].data.primary, let follower = nodes[backup].data.follower else {
            return "after healing, the roles' data are not a primary's and a backup's"
        }
        let position = follower.stream.position
        guard position == Position(replicationID: leader.replicationID, offset: leader.offset) else {
            return "after healing, the backup is at \(position.replicationID) \(position.offset), the primary at \(leader.replicationID) \(leader.offset)"
        }
        let onPrimary = Self.items(of: nodes[primary].data.store)
        let onBackup = Self.items(of: nodes[backup].data.store)
        guard onPrimary == onBackup else {
            let keys = Set(onPrimary.keys).union(onBackup.keys).sorted().filter { onPrimary[$0] != onBackup[$0] }
            return "after healing, the nodes hold different data: " + keys.map { "\($0): \(onPrimary[$0].map { "\($0)" } ?? "none") on the primary, \(onBackup[$0].map { "\($0)" } ?? "none") on the backup" }.joined(separator: "; ")
        }
        // Every version standing comes from a write a client made.
        for (key, item) in onPrimary {
            guard writes.contains(where: { $0.key == key && $0.stamp == item.cas && $0.value == item.value }) else {
                return "\(key) holds \(item), which no client wrote"
            }
        }
        for key in (0..<Self.keyCount).map({ "k\($0)" }) {
            let kept = writes.filter { $0.key == key && $0.acknowledged && $0.excused == nil }
            guard let newest = kept.max(by: { $0.stamp < $1.stamp }) else { continue }
            let standing = onPrimary[key]
            if let standing, standing.cas > newest.stamp { continue }
            if let value = newest.value {
                if let standing, standing.cas == newest.stamp, standing.value == value { continue }
                if standing == nil, writes.contains(where: { $0.key == key && $0.value == nil && $0.stamp > newest.stamp }) { continue }
                // A flush_all after it may have emptied the store (or been lost).
                if standing == nil, flushStamps.contains(where: { $0 > newest.stamp }) { continue }
                // It, or a newer version (acknowledged or not), expired: the
                // key is empty, and no older version may stand in for it.
                let now = nodes[primary].data.store.now()
                if standing == nil, writes.contains(where: { $0.key == key && $0.deadline != 0 && $0.deadline <= now && $0.stamp >= newest.stamp }) {
                    continue
                }
            } else if standing == nil {
                continue
            }
            return "acknowledged write \(newest.id) (\(newest.value.map { "set \(key)=\(String(decoding: $0, as: UTF8.self))" } ?? "delete \(key)") @\(newest.stamp) on \(nodes[newest.node].name)) is lost: the primary holds \(standing.map { "\($0)" } ?? "nothing")"
        }
        return nil
    }
}
