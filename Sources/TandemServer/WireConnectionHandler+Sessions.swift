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
    /// A page stops growing once its records take this many bytes. With the
    /// largest record that can follow (a key of 250 bytes and a value of the
    /// largest `-I`, 8 MiB), a page still fits a frame: pages are bounded by
    /// bytes as well as items, so any data a node can hold can be exported.
    static let scanPageBytes = 4 << 20
    /// Bytes a `scanPage` body takes besides its records: cursor (length and 8
    /// bytes), scanned, matched, count.
    static let scanPageOverhead = 4 + 8 + 4 + 4 + 4
    /// The largest value any node holds: tandemd's ceiling for `-I`. Not this
    /// node's own `-I`: a backup holds what its primary accepted, under the primary's.
    static let largestValue = WireFrame.largestItemValue
    /// Slots one step of a scan hands to the store under one lock hold.
    static let scanStep = 256

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
        /// Records whose values are not in RAM: read before the page is sent.
        var cold: [(index: Int, item: ItemSnapshot)] = []
        var recordBytes = 0
        // The most one more record can add: the page never grows past a frame.
        let withValues = request.options.contains(.values) && !request.options.contains(.countOnly)
        let largestRecord = WireEncodedSize.sessionRecord + node.decoderLimits.maxKeyLength + (withValues ? Self.largestValue : 0)
        let roomForRecords = WireFrame.maximumBodySize - Self.scanPageOverhead
        var scanned = 0
        var matched = 0
        var budget = Self.scanBudget
        var cursor: (shard: Int, slot: Int)? = shard < store.shardCount ? (shard, slot) : nil
        while let position = cursor, budget > 0, matched < limit, recordBytes < Self.scanPageBytes {
            // Never more live items than the page may still take, by count and by
            // bytes (each may be as large as the largest record): the cursor then
            // points exactly after the last item sent.
            let fitting = max(1, (roomForRecords - recordBytes) / largestRecord)
            let page = store.scan(shard: position.shard, from: position.slot, budget: min(budget, Self.scanStep, limit - matched, fitting), include: include)
            budget -= max(page.examined, 1)
            scanned += page.examined
            for item in page.items {
                matched += 1
                if !request.options.contains(.countOnly) {
                    let record = Self.record(item, withValue: withValues)
                    recordBytes += WireEncodedSize.sessionRecord + record.key.count + (withValues ? item.valueCount : 0)
                    records.append(record)
                    if withValues && item.isCold { cold.append((records.count - 1, item)) }
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
        let page = ScanPage(cursor: next, scanned: UInt32(scanned), matched: UInt32(matched), records: records)
        guard !cold.isEmpty else {
            send(.scanPage(page), requestID: requestID, context: context)
            return
        }
        let futures = cold.map { node.value(of: $0.item, on: context.eventLoop) }
        let waiting = cold
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        EventLoopFuture.whenAllComplete(futures, on: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            var page = page
            var gone: [Int] = []
            for (entry, outcome) in zip(waiting, (try? result.get()) ?? []) {
                switch outcome {
                case .success(let value?):
                    page.records[entry.index].value = value
                case .success(nil):
                    // Deleted or expired since the scan saw it.
                    gone.append(entry.index)
                case .failure(let error):
                    handler.refuse(.internalError, "cannot read a value from storage: \(error)", requestID: requestID, context: context)
                    return
                }
            }
            for index in gone.reversed() { page.records.remove(at: index) }
            page.matched -= UInt32(gone.count)
            handler.send(.scanPage(page), requestID: requestID, context: context)
        }
    }

    func serveInspect(_ key: [UInt8], requestID: UInt32, context: ChannelHandlerContext) {
        let found = key.withUnsafeBytes { try? node.store.fetch($0, options: FetchOptions(bump: false, needsValue: false)) }
        guard let found = found ?? nil else {
            refuse(.notFound, "no item with that key", requestID: requestID, context: context)
            return
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        node.value(of: found.item, on: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            switch result {
            case .success(let value?):
                var record = Self.record(found.item, withValue: false)
                record.value = value
                handler.send(.scanPage(ScanPage(cursor: [], scanned: 1, matched: 1, records: [record])), requestID: requestID, context: context)
            case .success(nil):
                handler.refuse(.notFound, "no item with that key", requestID: requestID, context: context)
            case .failure(let error):
                handler.refuse(.internalError, "cannot read the value from storage: \(error)", requestID: requestID, context: context)
            }
        }
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
            // A plain delete needs no value: it never waits for one.
            switch key.withUnsafeBytes({ (try? node.store.delete($0)) ?? .notFound }) {
            case .deleted: deleted += 1
            case .notFound, .exists: missing += 1
            }
        }
        answerAfterReplication(.deleteResult(deleted: deleted, missing: missing), wrote: deleted > 0, primary: primary, requestID: requestID, context: context)
    }

    func serveImport(_ records: [SessionRecord], version: UInt16, requestID: UInt32, context: ChannelHandlerContext) {
        guard let primary = node.primary else {
            refuse(.notPrimary, notPrimaryMessage("import"), requestID: requestID, context: context)
            return
        }
        // Every item is judged on its own: a bad one is reported and the rest are still stored.
        let outcomes = records.map(importOne)
        let wrote = outcomes.contains(.stored)
        guard version < WireVersion.perItemImport else {
            answerAfterReplication(.importReport(outcomes), wrote: wrote, primary: primary, requestID: requestID, context: context)
            return
        }
        // Version 1 has only the totals: rejections are told as an error
        // naming the first, once the other items are stored.
        var summary = ImportSummary(stored: 0, unchanged: 0, expired: 0)
        var rejected: [(index: Int, rejection: ImportRejection)] = []
        for (index, outcome) in outcomes.enumerated() {
            switch outcome {
            case .stored: summary.stored += 1
            case .unchanged: summary.unchanged += 1
            case .expired: summary.expired += 1
            case .rejected(let rejection): rejected.append((index, rejection))
            }
        }
        guard let first = rejected.first else {
            answerAfterReplication(.importResult(summary), wrote: wrote, primary: primary, requestID: requestID, context: context)
            return
        }
        let code: WireErrorCode = first.rejection.reason == .notStored ? .internalError : .tooLarge
        let message = "\(rejected.count) of \(records.count) items rejected, the first (item \(first.index)): \(first.rejection.message); "
            + "stored \(summary.stored), unchanged \(summary.unchanged), expired \(summary.expired)"
        answerAfterReplication(.error(WireError(code, message)), wrote: wrote, primary: primary, requestID: requestID, context: context)
    }

    /// Stores one imported item unless it is expired, already held exactly so, or unusable.
    private func importOne(_ record: SessionRecord) -> ImportOutcome {
        let store = node.store
        // Keys the memcached protocols could not address would be stored but
        // unreachable by every client of the node.
        guard record.key.withUnsafeBytes({ ASCII.isValidKey($0, maxLength: node.decoderLimits.maxKeyLength) }) else {
            return .rejected(ImportRejection(.invalidKey, "key \(Self.printable(record.key)) cannot be used by memcached clients: it must be 1–\(node.decoderLimits.maxKeyLength) bytes without spaces or control bytes"))
        }
        let limit = node.configuration.store.maxItemSize
        guard record.value.count <= limit else {
            return .rejected(ImportRejection(.tooLarge, "the value of \(Self.printable(record.key)) is \(record.value.count) bytes, over the node's item size limit of \(limit) (-I)"))
        }
        let deadline = Deadline(millis: record.deadlineMillis)
        if deadline.hasPassed(at: store.now()) { return .expired }
        // A held item whose value is not in RAM is not compared: storing
        // the record again is harmless, reading the log here is not.
        let same = record.key.withUnsafeBytes { key -> Bool in
            guard let found = try? store.fetch(key, options: FetchOptions(bump: false, needsValue: false)), let held = Optional(found.item),
                !held.isCold
            else { return false }
            return held.flags == record.flags && held.deadline == deadline && held.value == record.value
        }
        if same { return .unchanged }
        // A set needs no value: it never waits for one.
        let outcome = record.key.withUnsafeBytes { key in
            record.value.withUnsafeBytes { value in
                (try? store.store(key, value: value, request: StoreRequest(mode: .set, flags: record.flags, deadline: deadline))) ?? .notStored
            }
        }
        guard case .stored = outcome else {
            return .rejected(ImportRejection(.notStored, "the node could not store \(Self.printable(record.key)) (\(outcome)); is it out of memory (-m)?"))
        }
        return .stored
    }

    /// A key for a message: its text with control bytes escaped, cut short when long.
    static func printable(_ key: [UInt8]) -> String {
        let shown = key.prefix(64).map { byte -> String in
            guard byte < 0x20 || byte >= 0x7F || byte == UInt8(ascii: "\\") else { return String(UnicodeScalar(byte)) }
            let hex = String(byte, radix: 16)
            return "\\x" + (hex.count == 1 ? "0" + hex : hex)
        }.joined()
        return "\"" + shown + (key.count > 64 ? "…\" (\(key.count) bytes)" : "\"")
    }

    // MARK: Helpers

    static func record(_ item: ItemSnapshot, withValue: Bool) -> SessionRecord {
        SessionRecord(
            key: item.key, value: withValue ? item.value : [], flags: item.flags, deadlineMillis: item.deadline.millis,
            cas: item.cas, size: UInt32(clamping: item.valueCount), lastAccessMillis: item.lastAccess,
            writer: item.fromPeer ? .peer : .thisNode
        )
    }

    func notPrimaryMessage(_ what: String) -> String {
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
