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
struct Dispatcher {
    let context: ServerContext
    let counters: CommandCounters
    let eventLoop: any EventLoop

    var store: SessionStore { context.store }

    func execute(_ command: MemcacheCommand, into out: inout ByteBuffer) -> Disposition {
        switch command {
        case .retrieve(let retrieval):
            retrieve(retrieval, into: &out)
        case .store(let storage):
            self.store(storage, into: &out)
        case .delete(let key, let noreply):
            delete(key, noreply: noreply, into: &out)
        case .arithmetic(let key, let increment, let delta, let noreply):
            arithmetic(key, increment: increment, delta: delta, noreply: noreply, into: &out)
        case .touch(let key, let exptime, let noreply):
            touch(key, exptime: exptime, noreply: noreply, into: &out)
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
            counters.increment(.cmdMeta)
            execute(meta, into: &out)
        case .refusedSet(let key, let noreply):
            counters.increment(.cmdSet)
            _ = key.withUnsafeReadableBytes { store.delete($0) }
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

    private func retrieve(_ command: RetrievalCommand, into out: inout ByteBuffer) {
        let options = FetchOptions(touch: command.touchExptime.map(deadline))
        if command.touchExptime != nil { counters.increment(.cmdTouch) }
        for key in command.keys {
            counters.increment(.cmdGet)
            let result = key.withUnsafeReadableBytes { store.fetch($0, options: options) }
            guard let result else {
                counters.increment(.getMisses)
                if command.touchExptime != nil { counters.increment(.touchMisses) }
                continue
            }
            counters.increment(.getHits)
            if command.touchExptime != nil { counters.increment(.touchHits) }
            result.item.withValueBytes { value in
                out.writeValue(key: key, flags: result.item.flags, value: value, cas: command.returnsCas ? result.item.cas : nil)
            }
        }
        out.writeStatus(.end)
    }

    private func store(_ command: StorageCommand, into out: inout ByteBuffer) {
        counters.increment(.cmdSet)
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
        let outcome = command.key.withUnsafeReadableBytes { key in
            command.value.withUnsafeReadableBytes { value in
                store.store(key, value: value, request: request)
            }
        }
        countOutcome(outcome)
        if command.verb == .cas {
            switch outcome {
            case .stored: counters.increment(.casHits)
            case .exists: counters.increment(.casBadval)
            case .notFound: counters.increment(.casMisses)
            case .notStored, .tooLarge, .outOfMemory: break
            }
        }
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

    private func delete(_ key: ByteBuffer, noreply: Bool, into out: inout ByteBuffer) {
        let outcome = key.withUnsafeReadableBytes { store.delete($0) }
        switch outcome {
        case .deleted:
            counters.increment(.deleteHits)
            if !noreply { out.writeStatus(.deleted) }
        case .notFound, .exists:
            counters.increment(.deleteMisses)
            if !noreply { out.writeStatus(.notFound) }
        }
    }

    private func arithmetic(_ key: ByteBuffer, increment: Bool, delta: UInt64, noreply: Bool, into out: inout ByteBuffer) {
        let outcome = key.withUnsafeReadableBytes {
            store.arithmetic($0, request: ArithmeticRequest(increment: increment, delta: delta))
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

    private func touch(_ key: ByteBuffer, exptime: Int64, noreply: Bool, into out: inout ByteBuffer) {
        counters.increment(.cmdTouch)
        let found = key.withUnsafeReadableBytes { store.touch($0, deadline: deadline(exptime)) }
        counters.increment(found ? .touchHits : .touchMisses)
        if !noreply { out.writeStatus(found ? .touched : .notFound) }
    }
}
