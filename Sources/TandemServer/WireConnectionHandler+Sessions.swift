import MemcacheProtocol
import Replication
import NIOCore
import SessionStore
import WireProtocol

/// The administration requests on sessions (`tandemctl sessions …`): scans in
/// short steps on the event loop, one item, deletes and imports.
extension WireConnectionHandler {
    /// Slots a `scan` request examines at most: each request is a short piece
    /// of work (well under a millisecond), so a scan of millions of items never
    /// holds up the memcached clients that share this event loop.
    static let scanBudget = 4096
    /// Items a page returns at most.
    static let scanPageLimit: UInt32 = 10_000

    func serveScan(_ request: ScanRequest, requestID: UInt32, context: ChannelHandlerContext) {
        var shard = 0
        var slot = 0
        if !request.cursor.isEmpty {
            guard request.cursor.count == 8 else {
                refuse(.malformed, "scan.cursor must be empty or the 8 bytes a page returned", requestID: requestID, context: context)
                return
            }
            shard = Int(request.cursor[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            slot = Int(request.cursor[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        }
        let glob: KeyGlob?
        do {
            glob = request.match.isEmpty ? nil : try KeyGlob(request.match)
        } catch {
            refuse(.malformed, "scan.match: \(error)", requestID: requestID, context: context)
            return
        }
        let store = node.store
        let now = store.now()
        let prefix = request.prefix
        let minimumSize = Int(request.minimumSize)
        let expiringBefore: Int64? = request.expiringWithinMillis < 0 ? nil : now &+ request.expiringWithinMillis
        let limit = Int(min(max(request.limit, 1), Self.scanPageLimit))
        let include: (ItemSnapshot) -> Bool = { item in
            guard item.valueCount >= minimumSize else { return false }
            if let expiringBefore {
                guard item.deadline.millis != 0, item.deadline.millis <= expiringBefore else { return false }
            }
            return item.withKeyBytes { key in
                guard key.count >= prefix.count, prefix.withUnsafeBytes({ $0.elementsEqual(key.prefix($0.count)) }) else { return false }
                return glob?.matches(key) ?? true
            }
        }
        var records: [SessionRecord] = []
        var scanned = 0
        var matched = 0
        var budget = Self.scanBudget
        var cursor: (shard: Int, slot: Int)? = shard < store.shardCount ? (shard, slot) : nil
        while let position = cursor, budget > 0, matched < limit {
            // Never more live items than the page may still return: the cursor
            // then points exactly after the last item sent.
            let page = store.scan(shard: position.shard, from: position.slot, budget: min(budget, 256, limit - matched), include: include)
            budget -= max(page.examined, 1)
            scanned += page.examined
            for item in page.items {
                matched += 1
                if !request.options.contains(.countOnly) {
                    records.append(Self.record(item, withValue: request.options.contains(.values)))
                }
            }
            if let next = page.next {
                cursor = (position.shard, next)
            } else {
                cursor = position.shard + 1 < store.shardCount ? (position.shard + 1, 0) : nil
            }
        }
        var next: [UInt8] = []
        if let cursor {
            for value in [UInt32(cursor.shard), UInt32(cursor.slot)] {
                next += [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
            }
        }
        send(.scanPage(ScanPage(cursor: next, scanned: UInt32(scanned), matched: UInt32(matched), records: records)), requestID: requestID, context: context)
    }

    func serveInspect(_ key: [UInt8], requestID: UInt32, context: ChannelHandlerContext) {
        let found = key.withUnsafeBytes { node.store.fetch($0, options: FetchOptions(bump: false)) }
        guard let found else {
            refuse(.notFound, "no item with that key", requestID: requestID, context: context)
            return
        }
        send(.scanPage(ScanPage(cursor: [], scanned: 1, matched: 1, records: [Self.record(found.item, withValue: true)])), requestID: requestID, context: context)
    }

    func serveDelete(_ keys: [[UInt8]], requestID: UInt32, context: ChannelHandlerContext) {
        guard let primary = node.primary else {
            refuse(.notPrimary, notPrimaryMessage("delete"), requestID: requestID, context: context)
            return
        }
        var deleted: UInt64 = 0
        var missing: UInt64 = 0
        for key in keys {
            guard !key.isEmpty, key.count <= 250 else {
                missing += 1
                continue
            }
            switch key.withUnsafeBytes({ node.store.delete($0) }) {
            case .deleted: deleted += 1
            case .notFound, .exists: missing += 1
            }
        }
        answerAfterReplication(.deleteResult(deleted: deleted, missing: missing), wrote: deleted > 0, primary: primary, requestID: requestID, context: context)
    }

    func serveImport(_ records: [SessionRecord], requestID: UInt32, context: ChannelHandlerContext) {
        guard let primary = node.primary else {
            refuse(.notPrimary, notPrimaryMessage("import"), requestID: requestID, context: context)
            return
        }
        let store = node.store
        let now = store.now()
        var summary = ImportSummary(stored: 0, unchanged: 0, expired: 0)
        for record in records {
            guard !record.key.isEmpty, record.key.count <= 250, record.value.count <= node.configuration.store.maxItemSize else {
                refuse(.tooLarge, "an imported item's key must be 1–250 bytes and its value at most the node's -I", requestID: requestID, context: context)
                return
            }
            let deadline = Deadline(millis: record.deadlineMillis)
            if deadline.hasPassed(at: now) {
                summary.expired += 1
                continue
            }
            let same = record.key.withUnsafeBytes { key -> Bool in
                guard let held = store.fetch(key, options: FetchOptions(bump: false))?.item else { return false }
                return held.flags == record.flags && held.deadline == deadline && held.value == record.value
            }
            if same {
                summary.unchanged += 1
                continue
            }
            let outcome = record.key.withUnsafeBytes { key in
                record.value.withUnsafeBytes { value in
                    store.store(key, value: value, request: StoreRequest(mode: .set, flags: record.flags, deadline: deadline))
                }
            }
            guard case .stored = outcome else {
                refuse(.internalError, "the node could not store an imported item (\(outcome)); is it out of memory (-m)?", requestID: requestID, context: context)
                return
            }
            summary.stored += 1
        }
        answerAfterReplication(.importResult(summary), wrote: summary.stored > 0, primary: primary, requestID: requestID, context: context)
    }

    // MARK: Helpers

    static func record(_ item: ItemSnapshot, withValue: Bool) -> SessionRecord {
        SessionRecord(
            key: item.key, value: withValue ? item.value : [], flags: item.flags, deadlineMillis: item.deadline.millis,
            cas: item.cas, size: UInt32(clamping: item.valueCount), lastAccessMillis: item.lastAccess,
            writer: item.fromPeer ? .peer : .thisNode
        )
    }

    private func notPrimaryMessage(_ what: String) -> String {
        let peer = node.configuration.pair?.peer.map { " (its peer is \($0.host):\($0.port))" } ?? ""
        return "this node is a \(node.role): \(what) on the primary\(peer)"
    }

    /// Answers once the backup has the writes, as a client's write would be (sync mode).
    private func answerAfterReplication(_ message: WireMessage, wrote: Bool, primary: PrimaryReplication, requestID: UInt32, context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let finish: @Sendable () -> Void = {
            let (handler, context) = bound.value
            handler.send(message, requestID: requestID, context: context)
        }
        if wrote, let wait = primary.afterWrites(on: context.eventLoop) {
            wait.whenComplete { _ in finish() }
        } else {
            finish()
        }
    }
}
