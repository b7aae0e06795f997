import NIOCore

/// Writes a decoded command back as a memcached request, so that a backup can
/// forward a write to the primary. Decoding the output gives the same command.
extension ByteBuffer {
    /// Appends `command` as request bytes; returns false for commands that are
    /// not requests to forward (`quit`, invalid input).
    @discardableResult
    public mutating func writeMemcacheRequest(_ command: MemcacheCommand) -> Bool {
        switch command {
        case .retrieve(let retrieval):
            if let exptime = retrieval.touchExptime {
                writeStaticString(retrieval.returnsCas ? "gats " : "gat ")
                writeDecimal(exptime)
                writeInteger(ASCII.space)
            } else {
                writeStaticString(retrieval.returnsCas ? "gets " : "get ")
            }
            writeImmutableBuffer(retrieval.keys.bytes)
            writeStaticString("\r\n")
        case .store(let storage):
            switch storage.verb {
            case .set: writeStaticString("set ")
            case .add: writeStaticString("add ")
            case .replace: writeStaticString("replace ")
            case .append: writeStaticString("append ")
            case .prepend: writeStaticString("prepend ")
            case .cas: writeStaticString("cas ")
            }
            writeImmutableBuffer(storage.key)
            writeInteger(ASCII.space)
            writeDecimal(UInt64(storage.flags))
            writeInteger(ASCII.space)
            writeDecimal(storage.exptime)
            writeInteger(ASCII.space)
            writeDecimal(UInt64(storage.value.readableBytes))
            if storage.verb == .cas {
                writeInteger(ASCII.space)
                writeDecimal(storage.casUnique)
            }
            if storage.noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
            writeImmutableBuffer(storage.value)
            writeStaticString("\r\n")
        case .delete(let key, let noreply):
            writeStaticString("delete ")
            writeImmutableBuffer(key)
            if noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
        case .arithmetic(let key, let increment, let delta, let noreply):
            writeStaticString(increment ? "incr " : "decr ")
            writeImmutableBuffer(key)
            writeInteger(ASCII.space)
            writeDecimal(delta)
            if noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
        case .touch(let key, let exptime, let noreply):
            writeStaticString("touch ")
            writeImmutableBuffer(key)
            writeInteger(ASCII.space)
            writeDecimal(exptime)
            if noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
        case .flushAll(let delay, let noreply):
            writeStaticString("flush_all ")
            writeDecimal(delay)
            if noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
        case .version:
            writeStaticString("version\r\n")
        case .verbosity(let level, let noreply):
            writeStaticString("verbosity ")
            writeDecimal(level)
            if noreply { writeStaticString(" noreply") }
            writeStaticString("\r\n")
        case .refusedSet(let key, _):
            // The value never arrived; what reaches the primary is the removal of the old one.
            writeStaticString("delete ")
            writeImmutableBuffer(key)
            writeStaticString(" noreply\r\n")
        case .stats, .quit, .invalid:
            return false
        case .meta(let meta):
            writeMetaRequest(meta)
        }
        return true
    }

    private mutating func writeMetaRequest(_ meta: MetaCommand) {
        switch meta.verb {
        case .get: writeStaticString("mg ")
        case .set: writeStaticString("ms ")
        case .delete: writeStaticString("md ")
        case .arithmetic: writeStaticString("ma ")
        case .noop:
            writeStaticString("mn\r\n")
            return
        case .debug: writeStaticString("me ")
        }
        // The key travels as it arrived: base64 again if it came that way.
        if meta.flags.has("b") {
            meta.key.withUnsafeReadableBytes { Base64.encode($0, into: &self) }
        } else {
            writeImmutableBuffer(meta.key)
        }
        if meta.verb == .set {
            writeInteger(ASCII.space)
            writeDecimal(UInt64(meta.value?.readableBytes ?? 0))
        }
        let flags = meta.flags
        for letter in flags.order {
            writeInteger(ASCII.space)
            writeInteger(letter)
            switch letter {
            case UInt8(ascii: "O"): if let opaque = flags.opaque { writeImmutableBuffer(opaque) }
            case UInt8(ascii: "T"): if let ttl = flags.ttl { writeDecimal(ttl) }
            case UInt8(ascii: "N"): if let ttl = flags.vivifyTTL { writeDecimal(ttl) }
            case UInt8(ascii: "R"): if let seconds = flags.recacheSeconds { writeDecimal(seconds) }
            case UInt8(ascii: "C"): if let cas = flags.compareCas { writeDecimal(cas) }
            case UInt8(ascii: "E"): if let cas = flags.explicitCas { writeDecimal(cas) }
            case UInt8(ascii: "F"): if let clientFlags = flags.clientFlags { writeDecimal(UInt64(clientFlags)) }
            case UInt8(ascii: "M"): if let mode = flags.mode { writeInteger(mode) }
            case UInt8(ascii: "D"): if let delta = flags.delta { writeDecimal(delta) }
            case UInt8(ascii: "J"): if let initial = flags.initial { writeDecimal(initial) }
            default: break
            }
        }
        writeStaticString("\r\n")
        if meta.verb == .set {
            if let value = meta.value { writeImmutableBuffer(value) }
            writeStaticString("\r\n")
        }
    }
}
