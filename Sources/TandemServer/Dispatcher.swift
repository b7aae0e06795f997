import MemcacheProtocol
import NIOCore
import SessionStore

/// What the connection does after a command.
enum Disposition {
    /// Keep reading commands.
    case proceed
    /// Write what is pending, then close (`quit`).
    case close
}

/// Executes decoded commands against the store and writes their replies.
/// The one place where results and request errors become protocol replies.
///
/// A command that needs a value not in RAM throws `ValueOnDisk` before it
/// changes anything or counts itself: the connection takes back what the
/// command wrote so far, reads the value, installs it and runs the command
/// again. So counters are bumped only once a command's store calls are done.
struct Dispatcher {
    let context: ServerContext
    let counters: CommandCounters
    let eventLoop: any EventLoop
    /// Values read from the log for the command being run (its connection's).
    let loadedValues = LoadedValues()

    var store: SessionStore { context.store }

    func execute(_ command: MemcacheCommand, into out: inout ByteBuffer) throws(ValueOnDisk) -> Disposition {
        switch command {
        case .retrieve(let retrieval):
            try retrieve(retrieval, into: &out)
        case .store(let storage):
            try self.store(storage, into: &out)
        case .delete(let key, let noreply):
            try delete(key, noreply: noreply, into: &out)
        case .arithmetic(let key, let increment, let delta, let noreply):
            try arithmetic(key, increment: increment, delta: delta, noreply: noreply, into: &out)
        case .touch(let key, let exptime, let noreply):
            try touch(key, exptime: exptime, noreply: noreply, into: &out)
        case .flushAll(let delay, let noreply):
            counters.increment(.cmdFlush)
            context.scheduleFlush(delay: delay, on: eventLoop)
            if !noreply { out.writeStatus(.ok) }
        case .version:
            out.writeStaticString("VERSION ")
            out.writeString(ServerContext.version)
            out.writeStaticString("\r\n")
        case .verbosity(let level, let noreply):
            context.verbosity.store(Int(min(level, 2)), ordering: .relaxed)
            if !noreply { out.writeStatus(.ok) }
        case .quit:
            return .close
        case .stats(let group):
            stats(group, into: &out)
        case .meta(let meta):
            try execute(meta, into: &out)
            counters.increment(.cmdMeta)
        case .refusedSet(let key, let noreply):
            _ = try key.withReadableBytes { key throws(ValueOnDisk) in try store.delete(key) }
            counters.increment(.cmdSet)
            reply(to: .tooLarge, noreply: noreply, into: &out)
        case .invalid(let error, let noreply):
            reply(to: error, noreply: noreply, into: &out)
        }
        return .proceed
    }

    // MARK: Errors

    /// Counts a request error and answers it, unless the client asked for no
    /// reply: with `noreply` memcached sends no error either, and a client
    /// that pipelines such commands would take one for the answer to its
    /// next request.
    func reply(to error: MemcacheRequestError, noreply: Bool, into out: inout ByteBuffer) {
        counters.increment(.protocolErrors)
        if case .tooLarge = error { counters.increment(.storeTooLarge) }
        guard !noreply else { return }
        switch error {
        case .unknownCommand:
            out.writeStatus(.error)
        case .badCommandLine, .badKey:
            out.writeClientError("bad command line format")
        case .badDataChunk:
            out.writeClientError("bad data chunk")
        case .tooLarge:
            out.writeServerError("object too large for cache")
        case .invalidDelta:
            out.writeClientError("invalid numeric delta argument")
        case .deleteWithTime:
            out.writeClientError("bad command line format.  Usage: delete <key> [noreply]")
        case .badMetaFlag(let reason):
            out.writeClientError(reason)
        case .invalidMetaMode:
            out.writeClientError("invalid mode for ms, ma")
        case .badBase64Key:
            out.writeClientError("error decoding key")
        case .lineTooLong:
            out.writeClientError("line too long")
        }
    }

    func deadline(_ exptime: Int64) -> Deadline {
        Deadline.memcached(exptime: exptime, now: store.now())
    }

    // MARK: Text protocol

    private func retrieve(_ command: RetrievalCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        var options = FetchOptions(touch: command.touchExptime.map(deadline))
        var hits: UInt64 = 0
        var requested: UInt64 = 0
        for key in command.keys {
            requested += 1
            options.loaded = loadedValues.value(for: key)
            let result = try key.withReadableBytes { key throws(ValueOnDisk) in try store.fetch(key, options: options) }
            guard let result else { continue }
            hits += 1
            result.item.withValueBytes { value in
                out.writeValue(key: key, flags: result.item.flags, value: value, cas: command.returnsCas ? result.item.cas : nil)
            }
        }
        if command.endsReply { out.writeStatus(.end) }
        let misses = requested - hits
        counters.increment(.cmdGet, by: requested)
        counters.increment(.getHits, by: hits)
        counters.increment(.getMisses, by: misses)
        if command.touchExptime != nil {
            // Once per command, answered in parts or not.
            if command.endsReply { counters.increment(.cmdTouch) }
            counters.increment(.touchHits, by: hits)
            counters.increment(.touchMisses, by: misses)
        }
    }

    private func store(_ command: StorageCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let mode: StoreMode
        switch command.verb {
        case .set, .cas: mode = .set
        case .add: mode = .add
        case .replace: mode = .replace
        case .append: mode = .append
        case .prepend: mode = .prepend
        }
        let request = StoreRequest(
            mode: mode, flags: command.flags, deadline: deadline(command.exptime),
            compareCas: command.verb == .cas ? command.casUnique : nil
        )
        let outcome = try storeCounted(command.key, value: command.value, request: request)
        switch outcome {
        case .stored:
            if !command.noreply { out.writeStatus(.stored) }
        case .notStored:
            if !command.noreply { out.writeStatus(.notStored) }
        case .exists:
            if !command.noreply { out.writeStatus(.exists) }
        case .notFound:
            if !command.noreply { out.writeStatus(.notFound) }
        case .tooLarge:
            // Errors too are silent with noreply, as in memcached.
            counters.increment(.storeTooLarge)
            if !command.noreply { out.writeServerError("object too large for cache") }
        case .outOfMemory:
            counters.increment(.storeNoMemory)
            if !command.noreply { out.writeServerError("out of memory storing object") }
        }
    }

    private func delete(_ key: ByteBuffer, noreply: Bool, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let outcome = try key.withReadableBytes { key throws(ValueOnDisk) in try store.delete(key) }
        switch outcome {
        case .deleted:
            counters.increment(.deleteHits)
            if !noreply { out.writeStatus(.deleted) }
        case .notFound, .exists:
            counters.increment(.deleteMisses)
            if !noreply { out.writeStatus(.notFound) }
        }
    }

    private func arithmetic(_ key: ByteBuffer, increment: Bool, delta: UInt64, noreply: Bool, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let outcome = try key.withReadableBytes { key throws(ValueOnDisk) in
            try store.arithmetic(key, request: ArithmeticRequest(increment: increment, delta: delta))
        }
        switch outcome {
        case .value(let value, _, _):
            counters.increment(increment ? .incrHits : .decrHits)
            if !noreply {
                out.writeDecimal(value)
                out.writeStaticString("\r\n")
            }
        case .notFound, .exists:
            counters.increment(increment ? .incrMisses : .decrMisses)
            if !noreply { out.writeStatus(.notFound) }
        case .nonNumeric:
            // Errors too are silent with noreply, as in memcached.
            if !noreply { out.writeClientError("cannot increment or decrement non-numeric value") }
        case .outOfMemory:
            counters.increment(.storeNoMemory)
            if !noreply { out.writeServerError("out of memory") }
        }
    }

    private func touch(_ key: ByteBuffer, exptime: Int64, noreply: Bool, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let found = try key.withReadableBytes { key throws(ValueOnDisk) in try store.touch(key, deadline: deadline(exptime)) }
        counters.increment(.cmdTouch)
        counters.increment(found ? .touchHits : .touchMisses)
        if !noreply { out.writeStatus(found ? .touched : .notFound) }
    }
}

extension ByteBuffer {
    /// `withUnsafeReadableBytes` for a body that throws only `ValueOnDisk`
    /// (NIO's `rethrows` would widen it to `any Error`).
    func withReadableBytes<T>(_ body: (UnsafeRawBufferPointer) throws(ValueOnDisk) -> T) throws(ValueOnDisk) -> T {
        let result: Result<T, ValueOnDisk> = withUnsafeReadableBytes { bytes in
            do throws(ValueOnDisk) { return .success(try body(bytes)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}

extension Dispatcher {
    /// The cold values a multi-key retrieval will need, to be read at once
    /// (a plain `get`; one that touches reads as it goes, rarely for many keys).
    func coldValues(of command: MemcacheCommand) -> [ValueOnDisk] {
        guard case .retrieve(let retrieval) = command, retrieval.touchExptime == nil else { return [] }
        var wanted: [ValueOnDisk] = []
        for key in retrieval.keys {
            if let cold = key.withUnsafeReadableBytes({ store.valueOnDisk($0) }) { wanted.append(cold) }
        }
        return wanted
    }

    /// Answers a command whose value could not be read from the log (a
    /// storage fault): the error memcached sends when it cannot serve, as
    /// silent as the command's other errors.
    func replyValueUnreadable(to command: MemcacheCommand, into out: inout ByteBuffer) {
        counters.increment(.protocolErrors)
        guard !command.noreply else { return }
        out.writeServerError("cannot read the value from storage")
    }

    func replyValueUnreadable(to command: BinaryCommand, into out: inout ByteBuffer) {
        counters.increment(.protocolErrors)
        switch command {
        case .request(let request):
            out.writeBinaryError(opcode: request.opcode.rawValue, status: .temporaryFailure, opaque: request.opaque)
        case .refused(let opcode, let opaque, _, _):
            out.writeBinaryError(opcode: opcode, status: .temporaryFailure, opaque: opaque)
        }
    }
}

/// The values read from the log for the command a connection is running,
/// by key (`FetchOptions.loaded`): a `get` of many cold keys is answered
/// even when each value read pushes an earlier one out of RAM again.
/// Emptied once the command has run; used on the connection's event loop only.
final class LoadedValues {
    private var byKey: [[UInt8]: LoadedValue] = [:]

    func insert(_ value: LoadedValue, for key: [UInt8]) {
        byKey[key] = value
    }

    /// The value loaded for `key`, if any (nothing is copied while none is).
    func value(for key: ByteBuffer) -> LoadedValue? {
        guard !byKey.isEmpty else { return nil }
        return byKey[Array(key.readableBytesView)]
    }

    /// Whether a value was loaded for `key`.
    func contains(_ key: [UInt8]) -> Bool {
        byKey[key] != nil
    }

    func removeAll() {
        if !byKey.isEmpty { byKey.removeAll() }
    }
}
