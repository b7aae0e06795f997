import MemcacheProtocol
import NIOCore
import SessionStore

/// The meta protocol (`mg`, `ms`, `md`, `ma`, `mn`, `me`).
extension Dispatcher {
    /// What a reply's return flags can draw on.
    struct ReturnValues {
        var cas: UInt64?
        var clientFlags: UInt32?
        var hitBefore: Bool?
        var secondsSinceAccess: Int64?
        var size: Int?
        var ttl: Int64?
    }

    func execute(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        switch command.verb {
        case .get: try metaGet(command, into: &out)
        case .set: try metaSet(command, into: &out)
        case .delete: try metaDelete(command, into: &out)
        case .arithmetic: try metaArithmetic(command, into: &out)
        case .noop: out.writeStatus(.metaNoop)
        case .debug: try metaDebug(command, into: &out)
        }
    }

    private func metaGet(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let flags = command.flags
        // Without `v` (and no touch) a cold item answers from its header.
        var options = FetchOptions(
            touch: flags.ttl.map(deadline), bump: !flags.has("u"),
            vivify: flags.vivifyTTL.map(deadline), recacheBelowSeconds: flags.recacheSeconds, offersWinToken: true,
            needsValue: flags.has("v")
        )
        options.loaded = loadedValues.value(for: command.key)
        let found = try command.key.withReadableBytes { key throws(ValueOnDisk) in try store.fetch(key, options: options) }
        counters.increment(.cmdGet)
        if flags.ttl != nil { counters.increment(.cmdTouch) }
        guard let result = found else {
            counters.increment(.getMisses)
            if !flags.has("q") { writeMiss(command, .metaMiss, into: &out) }
            return
        }
        counters.increment(.getHits)
        let now = store.now()
        let values = ReturnValues(
            cas: result.item.cas, clientFlags: result.item.flags, hitBefore: result.hitBefore,
            secondsSinceAccess: result.millisSinceLastAccess / 1000, size: result.item.valueCount,
            ttl: result.item.deadline.remainingSeconds(at: now)
        )
        // C: the client's copy is current when the CAS matches, so the value is left out.
        let sendsValue = flags.has("v") && flags.compareCas != result.item.cas
        if sendsValue {
            out.writeStaticString("VA ")
            out.writeDecimal(UInt64(result.item.valueCount))
        } else {
            out.writeStatus(.metaHeader)
        }
        writeReturnFlags(command, values, into: &out)
        // memcached's order: Z, then X, then W (never W with Z).
        if result.tokenAlreadySent { out.writeStaticString(" Z") }
        if result.stale { out.writeStaticString(" X") }
        if result.won { out.writeStaticString(" W") }
        out.writeStaticString("\r\n")
        if sendsValue {
            _ = result.item.withValueBytes { out.writeBytes($0) }
            out.writeStaticString("\r\n")
        }
    }

    private func metaSet(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let flags = command.flags
        let mode: StoreMode
        switch flags.mode {
        case nil, UInt8(ascii: "S"), UInt8(ascii: "s"): mode = .set
        case UInt8(ascii: "E"), UInt8(ascii: "e"): mode = .add
        case UInt8(ascii: "R"), UInt8(ascii: "r"): mode = .replace
        case UInt8(ascii: "A"), UInt8(ascii: "a"): mode = .append
        case UInt8(ascii: "P"), UInt8(ascii: "p"): mode = .prepend
        default:
            counters.increment(.cmdSet)
            counters.increment(.protocolErrors)
            out.writeClientError("invalid mode for ms M token")
            return
        }
        let request = StoreRequest(
            mode: mode, flags: flags.clientFlags ?? 0, deadline: flags.ttl.map(deadline) ?? .never,
            compareCas: flags.compareCas, explicitCas: flags.explicitCas, invalidate: flags.has("I"),
            vivifyDeadline: flags.vivifyTTL.map(deadline)
        )
        let outcome = try storeCounted(command.key, value: command.value ?? ByteBuffer(), request: request)
        switch outcome {
        case .stored(let cas, let size):
            guard !flags.has("q") else { return }
            out.writeStatus(.metaHeader)
            writeReturnFlags(command, ReturnValues(cas: cas, size: size), into: &out)
            out.writeStaticString("\r\n")
        case .notStored:
            writeMiss(command, .metaNotStored, into: &out)
        case .exists:
            writeMiss(command, .metaExists, into: &out)
        case .notFound:
            writeMiss(command, .metaNotFound, into: &out)
        case .tooLarge:
            counters.increment(.storeTooLarge)
            out.writeServerError("object too large for cache")
        case .outOfMemory:
            counters.increment(.storeNoMemory)
            out.writeServerError("out of memory storing object")
        }
    }

    private func metaDelete(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let flags = command.flags
        let request = DeleteRequest(
            compareCas: flags.compareCas, explicitCas: flags.explicitCas, invalidate: flags.has("I"),
            deadline: flags.has("I") ? flags.ttl.map(deadline) : nil, removeValueOnly: flags.has("x")
        )
        let outcome = try command.key.withReadableBytes { key throws(ValueOnDisk) in try store.delete(key, request: request) }
        switch outcome {
        case .deleted:
            counters.increment(.deleteHits)
            guard !flags.has("q") else { return }
            out.writeStatus(.metaHeader)
            writeReturnFlags(command, ReturnValues(), into: &out)
            out.writeStaticString("\r\n")
        case .notFound:
            counters.increment(.deleteMisses)
            writeMiss(command, .metaNotFound, into: &out)
        case .exists:
            writeMiss(command, .metaExists, into: &out)
        }
    }

    private func metaArithmetic(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let flags = command.flags
        let increment: Bool
        switch flags.mode {
        case nil, UInt8(ascii: "I"), UInt8(ascii: "i"), UInt8(ascii: "+"): increment = true
        case UInt8(ascii: "D"), UInt8(ascii: "d"), UInt8(ascii: "-"): increment = false
        default:
            counters.increment(.protocolErrors)
            out.writeClientError("invalid mode for ma M token")
            return
        }
        let request = ArithmeticRequest(
            increment: increment, delta: flags.delta ?? 1, compareCas: flags.compareCas,
            explicitCas: flags.explicitCas,
            vivify: flags.vivifyTTL.map { (deadline: deadline($0), initial: flags.initial ?? 0) },
            touch: flags.ttl.map(deadline)
        )
        let outcome = try command.key.withReadableBytes { key throws(ValueOnDisk) in try store.arithmetic(key, request: request) }
        switch outcome {
        case .value(let number, let cas, let itemDeadline):
            counters.increment(increment ? .incrHits : .decrHits)
            let values = ReturnValues(cas: cas, ttl: itemDeadline.remainingSeconds(at: store.now()))
            if flags.has("q") {
                // Quiet: success says nothing, value or not (as memcached).
            } else if flags.has("v") {
                var digits = ByteBuffer()
                digits.writeDecimal(number)
                out.writeStaticString("VA ")
                out.writeDecimal(UInt64(digits.readableBytes))
                writeReturnFlags(command, values, into: &out)
                out.writeStaticString("\r\n")
                out.writeImmutableBuffer(digits)
                out.writeStaticString("\r\n")
            } else {
                out.writeStatus(.metaHeader)
                writeReturnFlags(command, values, into: &out)
                out.writeStaticString("\r\n")
            }
        case .notFound:
            counters.increment(increment ? .incrMisses : .decrMisses)
            writeMiss(command, .metaNotFound, into: &out)
        case .exists:
            writeMiss(command, .metaExists, into: &out)
        case .nonNumeric:
            out.writeClientError("cannot increment or decrement non-numeric value")
        case .outOfMemory:
            counters.increment(.storeNoMemory)
            writeMiss(command, .metaNotStored, into: &out)
        }
    }

    /// `ME <key> exp=… la=… cas=… fetch=… cls=… size=…`
    private func metaDebug(_ command: MetaCommand, into out: inout ByteBuffer) throws(ValueOnDisk) {
        let found = try command.key.withReadableBytes { key throws(ValueOnDisk) in
            try store.fetch(key, options: FetchOptions(bump: false, needsValue: false))
        }
        guard let result = found else {
            out.writeStatus(.metaMiss)
            return
        }
        out.writeStaticString("ME ")
        writeKey(command, into: &out)
        out.writeStaticString(" exp=")
        out.writeDecimal(result.item.deadline.remainingSeconds(at: store.now()))
        out.writeStaticString(" la=")
        out.writeDecimal(UInt64(result.millisSinceLastAccess / 1000))
        out.writeStaticString(" cas=")
        out.writeDecimal(result.item.cas)
        out.writeStaticString(result.hitBefore ? " fetch=yes" : " fetch=no")
        out.writeStaticString(" cls=1 size=")
        out.writeDecimal(UInt64(result.item.storage.count))
        out.writeStaticString("\r\n")
    }

    /// A non-success code (`EN`, `NF`, `NS`, `EX`) with the flags that identify
    /// the request (`O`, `k`, `b`), so pipelining clients can match it.
    private func writeMiss(_ command: MetaCommand, _ status: MemcacheStatus, into out: inout ByteBuffer) {
        if status == .metaMiss {
            out.writeStaticString("EN")
        } else {
            out.writeStatus(status)
        }
        for letter in command.flags.order {
            switch letter {
            case UInt8(ascii: "O"): writeOpaque(command, into: &out)
            case UInt8(ascii: "k"):
                writeKeyFlag(command, into: &out)
            case UInt8(ascii: "c") where command.verb == .set:
                // memcached's `ms` returns the CAS of a value it stored; one
                // it did not store has none, and `c` answers `c0`.
                out.writeStaticString(" c0")
            default: break
            }
        }
        out.writeStaticString("\r\n")
    }

    /// The requested return flags, in request order.
    private func writeReturnFlags(_ command: MetaCommand, _ values: ReturnValues, into out: inout ByteBuffer) {
        for letter in command.flags.order {
            switch letter {
            case UInt8(ascii: "O"):
                writeOpaque(command, into: &out)
            case UInt8(ascii: "k"):
                writeKeyFlag(command, into: &out)
            case UInt8(ascii: "c"):
                if let cas = values.cas {
                    out.writeStaticString(" c")
                    out.writeDecimal(cas)
                }
            case UInt8(ascii: "f"):
                if let flags = values.clientFlags {
                    out.writeStaticString(" f")
                    out.writeDecimal(UInt64(flags))
                }
            case UInt8(ascii: "h"):
                if let hit = values.hitBefore { out.writeStaticString(hit ? " h1" : " h0") }
            case UInt8(ascii: "l"):
                if let seconds = values.secondsSinceAccess {
                    out.writeStaticString(" l")
                    out.writeDecimal(seconds)
                }
            case UInt8(ascii: "s"):
                if let size = values.size {
                    out.writeStaticString(" s")
                    out.writeDecimal(UInt64(size))
                }
            case UInt8(ascii: "t"):
                if let ttl = values.ttl {
                    out.writeStaticString(" t")
                    out.writeDecimal(ttl)
                }
            default:
                break
            }
        }
    }

    private func writeOpaque(_ command: MetaCommand, into out: inout ByteBuffer) {
        guard let opaque = command.flags.opaque else { return }
        out.writeStaticString(" O")
        out.writeImmutableBuffer(opaque)
    }

    /// The `k` return flag: ` k<key>`, followed by ` b` when the key is
    /// base64 (where memcached puts it, whatever the position of `b` in the request).
    private func writeKeyFlag(_ command: MetaCommand, into out: inout ByteBuffer) {
        out.writeStaticString(" k")
        writeKey(command, into: &out)
        if command.flags.has("b") { out.writeStaticString(" b") }
    }

    /// The key as the client sent it: base64 again when it came that way.
    private func writeKey(_ command: MetaCommand, into out: inout ByteBuffer) {
        if command.flags.has("b") {
            command.key.withUnsafeReadableBytes { Base64.encode($0, into: &out) }
        } else {
            out.writeImmutableBuffer(command.key)
        }
    }
}
