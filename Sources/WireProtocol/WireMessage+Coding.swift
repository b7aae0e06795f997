import NIOCore

// Message bodies exactly as Protocol.md 1.4 lists their fields, with the
// encodings of section 1.2.

extension WireMessage {
    /// The frame type that carries this message.
    public var type: WireMessageType {
        switch self {
        case .hello: return .hello
        case .helloOK: return .helloOK
        case .auth: return .auth
        case .authOK: return .authOK
        case .error: return .error
        case .ping: return .ping
        case .pong: return .pong
        case .replicate: return .replicate
        case .fullResync: return .fullResync
        case .snapshotChunk: return .snapshotChunk
        case .snapshotEnd: return .snapshotEnd
        case .partialResync: return .partialResync
        case .changes: return .changes
        case .ack: return .ack
        case .reconcile: return .reconcile
        case .reconcileFrom: return .reconcileFrom
        case .reconcileChunk: return .reconcileChunk
        case .reconcileEnd: return .reconcileEnd
        case .reconcileDone: return .reconcileDone
        case .promote: return .promote
        case .demote: return .demote
        case .roleChanged: return .roleChanged
        case .pairStatus: return .pairStatus
        case .pairStatusReply: return .pairStatusReply
        case .scan: return .scan
        case .scanPage: return .scanPage
        case .inspect: return .inspect
        case .deleteKeys: return .deleteKeys
        case .deleteResult: return .deleteResult
        case .importItems: return .importItems
        case .importResult: return .importResult
        case .importReport: return .importReport
        case .backup: return .backup
        case .backupDone: return .backupDone
        case .watch: return .watch
        case .watchEvent: return .watchEvent
        case .forward: return .forward
        case .forwardReply: return .forwardReply
        case .statusRequest: return .statusRequest
        case .statsRequest: return .statsRequest
        case .properties: return .properties
        case .get: return .get
        case .items: return .items
        case .store: return .store
        case .touch: return .touch
        case .delete: return .delete
        case .writeResult: return .writeResult
        }
    }

    /// The exact number of bytes `encodeBody(into:)` writes.
    public var encodedBodySize: Int {
        switch self {
        case .hello(let hello):
            return 4 + 2 + 2 + 1 + 4 + hello.nodeName.utf8.count + 4 + hello.nonce.count + 8
        case .helloOK(let ok):
            return 2 + 4 + ok.nodeName.utf8.count + 1 + 8 + 1 + 4 + ok.nonce.count
        case .auth(let proof), .authOK(let proof):
            return 4 + proof.count
        case .error(let error):
            return 2 + 4 + error.message.utf8.count
        case .ping, .pong, .snapshotEnd, .ack, .reconcileFrom, .reconcileEnd:
            return 8
        case .replicate, .reconcile:
            return 16 + 8 + 8
        case .reconcileDone:
            return 24
        case .promote(let reason), .demote(let reason):
            return 4 + reason.utf8.count
        case .roleChanged:
            return 1 + 8
        case .scan(let request):
            return 4 + request.cursor.count + 4 + 4 + request.prefix.count + 4 + request.match.utf8.count + 4 + 8 + 1
        case .scanPage(let page):
            return 4 + page.cursor.count + 4 + 4 + 4 + page.records.reduce(0) { $0 + WireEncodedSize.sessionRecord + $1.key.count + $1.value.count }
        case .inspect(let key), .watch(let key):
            return 4 + key.count
        case .deleteKeys(let keys):
            return 4 + keys.reduce(0) { $0 + 4 + $1.count }
        case .deleteResult:
            return 16
        case .importItems(let records):
            return 4 + records.reduce(0) { $0 + WireEncodedSize.sessionRecord + $1.key.count + $1.value.count }
        case .importResult:
            return 24
        case .importReport(let outcomes):
            return 4 + outcomes.reduce(0) { $0 + WireEncodedSize.importOutcome($1) }
        case .backup(let path):
            return 4 + path.utf8.count
        case .backupDone(let summary):
            return 4 + summary.path.utf8.count + 16
        case .watchEvent(let event):
            return WireEncodedSize.watchEvent + event.key.count
        case .fullResync:
            return 16 + 8 + 8 + 8
        case .snapshotChunk(let items):
            var size = 4
            for item in items {
                size += WireEncodedSize.snapshotItem(keyCount: item.key.readableBytes, valueCount: item.value.readableBytes)
            }
            return size
        case .partialResync:
            return 16 + 8
        case .changes(let changes), .reconcileChunk(let changes):
            var size = 4
            for change in changes {
                switch change.kind {
                case .upsert:
                    size += WireEncodedSize.changeUpsert(keyCount: change.key.readableBytes, valueCount: change.value.readableBytes)
                case .remove:
                    size += WireEncodedSize.changeRemove(keyCount: change.key.readableBytes)
                case .flushAll, .delete:
                    size += WireEncodedSize.changeDelete(keyCount: change.key.readableBytes)
                }
            }
            return size
        case .forward(let request):
            return 4 + request.readableBytes
        case .forwardReply(_, let reply):
            return 8 + 4 + reply.readableBytes
        case .statusRequest, .statsRequest, .pairStatus:
            return 0
        case .pairStatusReply(let status):
            return WireEncodedSize.pairStatus + status.nodeName.utf8.count
        case .properties(let properties):
            var size = 4
            for property in properties {
                size += WireEncodedSize.property + property.name.utf8.count + property.value.utf8.count
            }
            return size
        case .get(let keys):
            return 4 + keys.reduce(0) { $0 + 4 + $1.readableBytes }
        case .items(let items):
            return 4 + items.reduce(0) { $0 + WireEncodedSize.dataItem + $1.key.readableBytes + $1.value.readableBytes }
        case .store(let write):
            return WireEncodedSize.dataWrite + write.key.readableBytes + write.value.readableBytes
        case .touch(let key, _):
            return 4 + key.readableBytes + 8
        case .delete(let key):
            return 4 + key.readableBytes
        case .writeResult:
            return 1 + 8
        }
    }

    /// Appends this message's body (not the frame header) to `buffer`.
    ///
    /// The encoding is canonical: decoding it gives this message back, except that
    /// fields a `changes` element of kind `remove` or `flushAll` does not carry
    /// (value, flags, deadline, cas) are not sent and decode as empty/0, and
    /// `WireErrorCode.unknown` is sent as its raw value 0xFFFF.
    /// Lengths and counts over `UInt32.max` trap (they cannot fit a frame anyway).
    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let hello):
            buffer.writeInteger(hello.magic)
            buffer.writeInteger(hello.minimumVersion)
            buffer.writeInteger(hello.maximumVersion)
            buffer.writeInteger(hello.role.rawValue)
            buffer.writeWireString(hello.nodeName)
            buffer.writeWireBytes(hello.nonce)
            buffer.writeInteger(hello.epoch)
        case .helloOK(let ok):
            buffer.writeInteger(ok.version)
            buffer.writeWireString(ok.nodeName)
            buffer.writeInteger(ok.nodeRole.rawValue)
            buffer.writeInteger(ok.epoch)
            buffer.writeInteger(ok.authentication.rawValue)
            buffer.writeWireBytes(ok.nonce)
        case .auth(let proof), .authOK(let proof):
            buffer.writeWireBytes(proof)
        case .error(let error):
            buffer.writeInteger(error.code.rawValue)
            buffer.writeWireString(error.message)
        case .ping(let timestamp), .pong(let timestamp):
            buffer.writeInteger(timestamp)
        case .replicate(let replicate):
            buffer.writeReplicationID(replicate.replicationID)
            buffer.writeInteger(replicate.offset)
            buffer.writeInteger(replicate.epoch)
        case .fullResync(let resync):
            buffer.writeReplicationID(resync.replicationID)
            buffer.writeInteger(resync.offset)
            buffer.writeInteger(resync.estimatedItems)
            buffer.writeInteger(resync.estimatedBytes)
        case .snapshotChunk(let items):
            buffer.writeInteger(UInt32(items.count))
            for item in items {
                buffer.writeWireBytes(item.key)
                buffer.writeWireBytes(item.value)
                buffer.writeInteger(item.flags)
                buffer.writeInteger(item.deadlineMillis)
                buffer.writeInteger(item.stamp)
            }
        case .snapshotEnd(let items):
            buffer.writeInteger(items)
        case .partialResync(let replicationID, let offset):
            buffer.writeReplicationID(replicationID)
            buffer.writeInteger(offset)
        case .changes(let changes), .reconcileChunk(let changes):
            buffer.writeInteger(UInt32(changes.count))
            for change in changes {
                buffer.writeInteger(change.offset)
                buffer.writeInteger(change.kind.rawValue)
                buffer.writeWireBytes(change.key)
                if change.kind == .upsert {
                    buffer.writeWireBytes(change.value)
                    buffer.writeInteger(change.flags)
                    buffer.writeInteger(change.deadlineMillis)
                    buffer.writeInteger(change.stamp)
                } else if change.kind.carriesStampOnly {
                    buffer.writeInteger(change.stamp)
                }
            }
        case .ack(let offset), .reconcileFrom(let offset), .reconcileEnd(let offset):
            buffer.writeInteger(offset)
        case .reconcile(let request):
            buffer.writeReplicationID(request.replicationID)
            buffer.writeInteger(request.offset)
            buffer.writeInteger(request.epoch)
        case .reconcileDone(let summary):
            buffer.writeInteger(summary.received)
            buffer.writeInteger(summary.applied)
            buffer.writeInteger(summary.conflicts)
        case .promote(let reason), .demote(let reason):
            buffer.writeWireString(reason)
        case .roleChanged(let role, let epoch):
            buffer.writeInteger(role.rawValue)
            buffer.writeInteger(epoch)
        case .pairStatusReply(let status):
            buffer.writePairStatus(status)
        case .scan(let request):
            buffer.writeWireBytes(request.cursor)
            buffer.writeInteger(request.limit)
            buffer.writeWireBytes(request.prefix)
            buffer.writeWireString(request.match)
            buffer.writeInteger(request.minimumSize)
            buffer.writeInteger(request.expiringWithinMillis)
            buffer.writeInteger(request.options.rawValue)
        case .scanPage(let page):
            buffer.writeWireBytes(page.cursor)
            buffer.writeInteger(page.scanned)
            buffer.writeInteger(page.matched)
            buffer.writeInteger(UInt32(page.records.count))
            for record in page.records { buffer.writeSessionRecord(record) }
        case .inspect(let key), .watch(let key):
            buffer.writeWireBytes(key)
        case .deleteKeys(let keys):
            buffer.writeInteger(UInt32(keys.count))
            for key in keys { buffer.writeWireBytes(key) }
        case .deleteResult(let deleted, let missing):
            buffer.writeInteger(deleted)
            buffer.writeInteger(missing)
        case .importItems(let records):
            buffer.writeInteger(UInt32(records.count))
            for record in records { buffer.writeSessionRecord(record) }
        case .importResult(let summary):
            buffer.writeInteger(summary.stored)
            buffer.writeInteger(summary.unchanged)
            buffer.writeInteger(summary.expired)
        case .importReport(let outcomes):
            buffer.writeInteger(UInt32(outcomes.count))
            for outcome in outcomes { buffer.writeImportOutcome(outcome) }
        case .backup(let path):
            buffer.writeWireString(path)
        case .backupDone(let summary):
            buffer.writeWireString(summary.path)
            buffer.writeInteger(summary.bytes)
            buffer.writeInteger(summary.items)
        case .watchEvent(let event):
            buffer.writeInteger(event.kind.rawValue)
            buffer.writeWireBytes(event.key)
            buffer.writeInteger(event.size)
            buffer.writeInteger(event.deadlineMillis)
            buffer.writeInteger(event.timeMillis)
        case .forward(let request):
            buffer.writeWireBytes(request)
        case .forwardReply(let offset, let reply):
            buffer.writeInteger(offset)
            buffer.writeWireBytes(reply)
        case .statusRequest, .statsRequest, .pairStatus:
            break
        case .properties(let properties):
            buffer.writeInteger(UInt32(properties.count))
            for property in properties {
                buffer.writeWireString(property.name)
                buffer.writeWireString(property.value)
            }
        case .get(let keys):
            buffer.writeInteger(UInt32(keys.count))
            for key in keys { buffer.writeWireBytes(key) }
        case .items(let items):
            buffer.writeInteger(UInt32(items.count))
            for item in items { buffer.writeDataItem(item) }
        case .store(let write):
            buffer.writeDataWrite(write)
        case .touch(let key, let ttl):
            buffer.writeWireBytes(key)
            buffer.writeInteger(ttl)
        case .delete(let key):
            buffer.writeWireBytes(key)
        case .writeResult(let result):
            buffer.writeInteger(result.outcome.rawValue)
            buffer.writeInteger(result.stamp)
        }
    }

    /// Parses the body of a frame of type `type`.
    ///
    /// Total: any input either gives a message or throws `.unknownMessageType` (a type
    /// not in Protocol.md 1.4) or `.malformed` (section 1.2: the body ends early, has
    /// bytes left over, a `bytes` length or a `count` runs past its end, an enumerated
    /// field has an undefined value, a `string` is not UTF-8). Counts are checked
    /// against the bytes left before anything is reserved for them.
    ///
    /// `bytes` fields that are `ByteBuffer`s (keys, values, forwarded requests and
    /// replies) are slices of `body`, not copies. `hello.magic` is not checked here:
    /// answering a wrong magic is the session's job (section 1.3).
    /// An error code this implementation does not know becomes `.unknown`, with the
    /// message "unknown error code N: <message>" (section 1.5).
    public init(type: UInt16, body: ByteBuffer) throws(WireProtocolError) {
        guard let messageType = WireMessageType(rawValue: type) else {
            throw .unknownMessageType(type)
        }
        var reader = WireBodyReader(body, type: messageType)
        switch messageType {
        case .hello:
            let magic = try reader.integer("magic", as: UInt32.self)
            let minimumVersion = try reader.integer("min_version", as: UInt16.self)
            let maximumVersion = try reader.integer("max_version", as: UInt16.self)
            let role = try reader.enumeration("role", as: ConnectionRole.self)
            let nodeName = try reader.string("node_name")
            let nonce = try reader.byteArray("nonce")
            let epoch = try reader.integer("epoch", as: UInt64.self)
            var hello = Hello(minimumVersion: minimumVersion, maximumVersion: maximumVersion, role: role, nodeName: nodeName, nonce: nonce, epoch: epoch)
            hello.magic = magic
            self = .hello(hello)
        case .helloOK:
            let version = try reader.integer("version", as: UInt16.self)
            let nodeName = try reader.string("node_name")
            let nodeRole = try reader.enumeration("node_role", as: NodeRole.self)
            let epoch = try reader.integer("epoch", as: UInt64.self)
            let authentication = try reader.enumeration("auth", as: AuthenticationMethod.self)
            let nonce = try reader.byteArray("nonce")
            self = .helloOK(HelloOK(version: version, nodeName: nodeName, nodeRole: nodeRole, epoch: epoch, authentication: authentication, nonce: nonce))
        case .auth:
            self = .auth(proof: try reader.byteArray("proof"))
        case .authOK:
            self = .authOK(proof: try reader.byteArray("proof"))
        case .error:
            let rawCode = try reader.integer("code", as: UInt16.self)
            let message = try reader.string("message")
            if let code = WireErrorCode(rawValue: rawCode) {
                self = .error(WireError(code, message))
            } else {
                let text = "unknown error code \(rawCode)" + (message.isEmpty ? "" : ": " + message)
                self = .error(WireError(.unknown, text))
            }
        case .ping:
            self = .ping(timestampMillis: try reader.integer("timestamp", as: Int64.self))
        case .pong:
            self = .pong(timestampMillis: try reader.integer("timestamp", as: Int64.self))
        case .replicate:
            let replicationID = try reader.replicationID("replication_id")
            let offset = try reader.integer("offset", as: UInt64.self)
            let epoch = try reader.integer("epoch", as: UInt64.self)
            self = .replicate(Replicate(replicationID: replicationID, offset: offset, epoch: epoch))
        case .fullResync:
            let replicationID = try reader.replicationID("replication_id")
            let offset = try reader.integer("offset", as: UInt64.self)
            let estimatedItems = try reader.integer("estimated_items", as: UInt64.self)
            let estimatedBytes = try reader.integer("estimated_bytes", as: UInt64.self)
            self = .fullResync(FullResync(replicationID: replicationID, offset: offset, estimatedItems: estimatedItems, estimatedBytes: estimatedBytes))
        case .snapshotChunk:
            let count = try reader.count("count", minimumElementSize: WireEncodedSize.snapshotItem)
            var items: [ReplicatedItem] = []
            items.reserveCapacity(count)
            for index in 0..<count {
                reader.element = index
                let key = try reader.bytes("key")
                let value = try reader.bytes("value")
                let flags = try reader.integer("flags", as: UInt32.self)
                let deadline = try reader.integer("deadline", as: Int64.self)
                let stamp = try reader.integer("cas", as: UInt64.self)
                items.append(ReplicatedItem(key: key, value: value, flags: flags, deadlineMillis: deadline, stamp: stamp))
            }
            reader.element = nil
            self = .snapshotChunk(items)
        case .snapshotEnd:
            self = .snapshotEnd(items: try reader.integer("items", as: UInt64.self))
        case .partialResync:
            let replicationID = try reader.replicationID("replication_id")
            let offset = try reader.integer("offset", as: UInt64.self)
            self = .partialResync(replicationID: replicationID, offset: offset)
        case .changes, .reconcileChunk:
            let count = try reader.count("count", minimumElementSize: WireEncodedSize.changeRemove)
            var changes: [ReplicatedChange] = []
            changes.reserveCapacity(count)
            for index in 0..<count {
                reader.element = index
                let offset = try reader.integer("offset", as: UInt64.self)
                let kind = try reader.enumeration("kind", as: ReplicatedChange.Kind.self)
                let key = try reader.bytes("key")
                if kind == .upsert {
                    let value = try reader.bytes("value")
                    let flags = try reader.integer("flags", as: UInt32.self)
                    let deadline = try reader.integer("deadline", as: Int64.self)
                    let stamp = try reader.integer("cas", as: UInt64.self)
                    changes.append(ReplicatedChange(offset: offset, kind: kind, key: key, value: value, flags: flags, deadlineMillis: deadline, stamp: stamp))
                } else if kind.carriesStampOnly {
                    let stamp = try reader.integer("stamp", as: UInt64.self)
                    changes.append(ReplicatedChange(offset: offset, kind: kind, key: key, stamp: stamp))
                } else {
                    changes.append(ReplicatedChange(offset: offset, kind: kind, key: key))
                }
            }
            reader.element = nil
            self = messageType == .changes ? .changes(changes) : .reconcileChunk(changes)
        case .ack:
            self = .ack(offset: try reader.integer("offset", as: UInt64.self))
        case .reconcile:
            let replicationID = try reader.replicationID("replication_id")
            let offset = try reader.integer("offset", as: UInt64.self)
            let epoch = try reader.integer("epoch", as: UInt64.self)
            self = .reconcile(Replicate(replicationID: replicationID, offset: offset, epoch: epoch))
        case .reconcileFrom:
            self = .reconcileFrom(watermark: try reader.integer("watermark", as: UInt64.self))
        case .reconcileEnd:
            self = .reconcileEnd(count: try reader.integer("count", as: UInt64.self))
        case .reconcileDone:
            let received = try reader.integer("received", as: UInt64.self)
            let applied = try reader.integer("applied", as: UInt64.self)
            let conflicts = try reader.integer("conflicts", as: UInt64.self)
            self = .reconcileDone(ReconcileSummary(received: received, applied: applied, conflicts: conflicts))
        case .promote:
            self = .promote(reason: try reader.string("reason"))
        case .demote:
            self = .demote(reason: try reader.string("reason"))
        case .roleChanged:
            let role = try reader.enumeration("role", as: NodeRole.self)
            let epoch = try reader.integer("epoch", as: UInt64.self)
            self = .roleChanged(role: role, epoch: epoch)
        case .pairStatus:
            self = .pairStatus
        case .pairStatusReply:
            self = .pairStatusReply(try reader.pairStatus())
        case .scan:
            let cursor = try reader.byteArray("cursor")
            let limit = try reader.integer("limit", as: UInt32.self)
            let prefix = try reader.byteArray("prefix")
            let match = try reader.string("match")
            let minimumSize = try reader.integer("min_size", as: UInt32.self)
            let expiring = try reader.integer("expiring_within_ms", as: Int64.self)
            let options = ScanRequest.Options(rawValue: try reader.integer("options", as: UInt8.self))
            self = .scan(ScanRequest(cursor: cursor, limit: limit, prefix: prefix, match: match, minimumSize: minimumSize, expiringWithinMillis: expiring, options: options))
        case .scanPage:
            let cursor = try reader.byteArray("cursor")
            let scanned = try reader.integer("scanned", as: UInt32.self)
            let matched = try reader.integer("matched", as: UInt32.self)
            self = .scanPage(ScanPage(cursor: cursor, scanned: scanned, matched: matched, records: try reader.sessionRecords()))
        case .inspect:
            self = .inspect(key: try reader.byteArray("key"))
        case .watch:
            self = .watch(prefix: try reader.byteArray("prefix"))
        case .deleteKeys:
            let count = try reader.count("count", minimumElementSize: 4)
            var keys: [[UInt8]] = []
            keys.reserveCapacity(count)
            for index in 0..<count {
                reader.element = index
                keys.append(try reader.byteArray("key"))
            }
            reader.element = nil
            self = .deleteKeys(keys)
        case .deleteResult:
            let deleted = try reader.integer("deleted", as: UInt64.self)
            let missing = try reader.integer("missing", as: UInt64.self)
            self = .deleteResult(deleted: deleted, missing: missing)
        case .importItems:
            self = .importItems(try reader.sessionRecords())
        case .importResult:
            let stored = try reader.integer("stored", as: UInt64.self)
            let unchanged = try reader.integer("unchanged", as: UInt64.self)
            let expired = try reader.integer("expired", as: UInt64.self)
            self = .importResult(ImportSummary(stored: stored, unchanged: unchanged, expired: expired))
        case .importReport:
            self = .importReport(try reader.importOutcomes())
        case .backup:
            self = .backup(path: try reader.string("path"))
        case .backupDone:
            let path = try reader.string("path")
            let bytes = try reader.integer("bytes", as: UInt64.self)
            let items = try reader.integer("items", as: UInt64.self)
            self = .backupDone(BackupSummary(path: path, bytes: bytes, items: items))
        case .watchEvent:
            let kind = try reader.enumeration("kind", as: WatchEvent.Kind.self)
            let key = try reader.byteArray("key")
            let size = try reader.integer("size", as: UInt32.self)
            let deadline = try reader.integer("deadline", as: Int64.self)
            let time = try reader.integer("time", as: Int64.self)
            self = .watchEvent(WatchEvent(kind: kind, key: key, size: size, deadlineMillis: deadline, timeMillis: time))
        case .forward:
            self = .forward(request: try reader.bytes("request"))
        case .forwardReply:
            let offset = try reader.integer("offset", as: UInt64.self)
            let reply = try reader.bytes("reply")
            self = .forwardReply(offset: offset, reply: reply)
        case .statusRequest:
            self = .statusRequest
        case .statsRequest:
            self = .statsRequest
        case .properties:
            let count = try reader.count("count", minimumElementSize: WireEncodedSize.property)
            var properties: [Property] = []
            properties.reserveCapacity(count)
            for index in 0..<count {
                reader.element = index
                let name = try reader.string("name")
                let value = try reader.string("value")
                properties.append(Property(name, value))
            }
            reader.element = nil
            self = .properties(properties)
        case .get:
            self = .get(keys: try reader.dataKeys())
        case .items:
            self = .items(try reader.dataItems())
        case .store:
            self = .store(try reader.dataWrite())
        case .touch:
            let key = try reader.bytes("key")
            let ttl = try reader.integer("ttl_ms", as: Int64.self)
            self = .touch(key: key, ttlMillis: ttl)
        case .delete:
            self = .delete(key: try reader.bytes("key"))
        case .writeResult:
            let outcome = try reader.enumeration("outcome", as: WriteResult.Outcome.self)
            let stamp = try reader.integer("stamp", as: UInt64.self)
            self = .writeResult(WriteResult(outcome, stamp: stamp))
        }
        try reader.finish()
    }

    /// Parses a received frame's body.
    public init(frame: WireFrame) throws(WireProtocolError) {
        try self.init(type: frame.type, body: frame.body)
    }
}
