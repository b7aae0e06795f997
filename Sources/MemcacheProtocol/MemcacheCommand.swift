import NIOCore

/// One decoded memcached request. Keys and values are slices of the read
/// buffer: the dispatcher must copy what it keeps before the next read.
public enum MemcacheCommand: Sendable, Equatable {
    /// `get`/`gets` (and `gat`/`gats` with `touch`) for one or more keys.
    case retrieve(RetrievalCommand)
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas` with its data block.
    case store(StorageCommand)
    /// `delete <key> [noreply]`.
    case delete(key: ByteBuffer, noreply: Bool)
    /// `incr`/`decr <key> <delta> [noreply]`.
    case arithmetic(key: ByteBuffer, increment: Bool, delta: UInt64, noreply: Bool)
    /// `touch <key> <exptime> [noreply]`.
    case touch(key: ByteBuffer, exptime: Int64, noreply: Bool)
    /// `flush_all [delay] [noreply]`.
    case flushAll(delay: Int64, noreply: Bool)
    /// `version`.
    case version
    /// `verbosity <level> [noreply]`.
    case verbosity(level: UInt64, noreply: Bool)
    /// `quit`: close after the replies before it.
    case quit
    /// `stats [group]`.
    case stats(group: StatsGroup)
    /// A meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`).
    case meta(MetaCommand)
    /// A `set` whose value is over the item size limit: refused (its data
    /// block is swallowed) and, as memcached does, the key's old value is
    /// removed, so that no client reads stale data after a failed set.
    case refusedSet(key: ByteBuffer, noreply: Bool)
    /// A request the client got wrong; the connection stays usable.
    ///
    /// `noreply` is set when the line belongs to a command that takes
    /// `noreply` and its last token is `noreply`: memcached then sends no
    /// error either (it decides by scanning that last token, before the rest
    /// of the line is known to be well formed), and a client that pipelines
    /// `noreply` commands would otherwise read the error as the answer to its
    /// next request.
    case invalid(MemcacheRequestError, noreply: Bool)
}

/// The argument of `stats`.
public enum StatsGroup: Sendable, Equatable {
    /// `stats` with no argument: the general block.
    case general
    case settings
    case items
    case slabs
    case sizes
    case conns
    /// `stats reset`.
    case reset
    /// Anything else (memcached answers with an error).
    case other(String)
}

/// `get`, `gets`, `gat`, `gats`.
public struct RetrievalCommand: Sendable, Equatable {
    /// The keys, validated, in request order.
    public var keys: KeyList
    /// Whether to include the CAS token in each `VALUE` line (`gets`, `gats`).
    public var returnsCas: Bool
    /// For `gat`/`gats`: the new exptime to set on every hit.
    public var touchExptime: Int64?
    /// Whether `END` follows this command's values: false for all but the
    /// last part of a retrieval answered in parts (`parts(ofAtMost:)`).
    public var endsReply: Bool = true

    public init(keys: KeyList, returnsCas: Bool, touchExptime: Int64? = nil) {
        self.keys = keys
        self.returnsCas = returnsCas
        self.touchExptime = touchExptime
    }

    /// The command cut into parts of at most `keysPerPart` keys, in order,
    /// only the last one ending the reply; the command itself if it has no
    /// more keys than that. A server answers a long `get` part by part so
    /// that its reply need not be built whole in memory: one line naming a
    /// large value a thousand times would otherwise make it copy the value
    /// a thousand times before sending a byte.
    public func parts(ofAtMost keysPerPart: Int) -> [RetrievalCommand] {
        precondition(keysPerPart > 0)
        var parts: [RetrievalCommand] = []
        var iterator = keys.makeIterator()
        var start = keys.bytes.readerIndex
        var count = 0
        while iterator.next() != nil {
            count += 1
            guard count == keysPerPart else { continue }
            // The iterator reads a copy of `keys.bytes`: its index is where that key ends there.
            let end = iterator.remaining.readerIndex
            var part = self
            part.keys = KeyList(bytes: keys.bytes.getSlice(at: start, length: end - start)!)
            part.endsReply = false
            parts.append(part)
            start = end
            count = 0
        }
        guard !parts.isEmpty else { return [self] }
        let end = keys.bytes.readerIndex + keys.bytes.readableBytes
        if count > 0 {
            var last = self
            last.keys = KeyList(bytes: keys.bytes.getSlice(at: start, length: end - start)!)
            parts.append(last)
        } else {
            parts[parts.count - 1].endsReply = endsReply
        }
        return parts
    }
}

/// The space-separated key list of a retrieval command, kept as one slice so
/// that decoding a `get` allocates nothing; iterate it for the keys.
public struct KeyList: Sendable, Equatable, Sequence {
    /// The bytes of the keys region, keys separated by one or more spaces.
    public let bytes: ByteBuffer

    public init(bytes: ByteBuffer) {
        self.bytes = bytes
    }

    public struct Iterator: IteratorProtocol {
        var remaining: ByteBuffer

        public mutating func next() -> ByteBuffer? {
            while remaining.readableBytes > 0, remaining.getInteger(at: remaining.readerIndex, as: UInt8.self) == ASCII.space {
                remaining.moveReaderIndex(forwardBy: 1)
            }
            guard remaining.readableBytes > 0 else { return nil }
            let length = remaining.withUnsafeReadableBytes { bytes in
                bytes.firstIndex(of: ASCII.space) ?? bytes.count
            }
            return remaining.readSlice(length: length)
        }
    }

    public func makeIterator() -> Iterator {
        Iterator(remaining: bytes)
    }
}

/// Which storage command a `StorageCommand` is.
public enum StorageVerb: Sendable, Equatable {
    case set, add, replace, append, prepend, cas
}

/// A storage command with its data block.
public struct StorageCommand: Sendable, Equatable {
    public var verb: StorageVerb
    public var key: ByteBuffer
    public var flags: UInt32
    public var exptime: Int64
    /// The `cas` command's unique token; 0 for the other verbs.
    public var casUnique: UInt64
    public var noreply: Bool
    /// The data block, without its trailing `\r\n`.
    public var value: ByteBuffer

    public init(verb: StorageVerb, key: ByteBuffer, flags: UInt32, exptime: Int64, casUnique: UInt64 = 0, noreply: Bool, value: ByteBuffer) {
        self.verb = verb
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.casUnique = casUnique
        self.noreply = noreply
        self.value = value
    }
}

/// Something wrong with one request. The dispatcher answers it; the
/// connection keeps working.
public enum MemcacheRequestError: Error, Sendable, Equatable {
    /// Not a command this server knows: `ERROR`.
    case unknownCommand
    /// Wrong number or form of arguments: `CLIENT_ERROR bad command line format`.
    case badCommandLine
    /// A key over 250 bytes or with control characters.
    case badKey
    /// The data block did not end with `\r\n`.
    case badDataChunk
    /// The declared value is larger than the item size limit (data block swallowed).
    case tooLarge
    /// An incr/decr delta that is not an unsigned 64-bit number.
    case invalidDelta
    /// `delete <key> <time>` with a non-zero time, which memcached no longer supports.
    case deleteWithTime
    /// A meta flag that is unknown, repeated or has a bad token; the text says which.
    case badMetaFlag(String)
    /// A meta mode token that the command does not have.
    case invalidMetaMode
    /// A base64 key that does not decode.
    case badBase64Key
    /// A `get`/`gets`/`gat`/`gats` line longer than
    /// `MemcacheDecoderLimits.maxRetrievalLineLength`: answered, and the rest
    /// of the line is read and dropped.
    case lineTooLong
}

/// Errors after which the byte stream cannot be trusted: the connection closes.
public enum MemcacheProtocolError: Error, Sendable, Equatable {
    /// No newline within the line length limit (of a line that is not a retrieval).
    case lineTooLong(limit: Int)
    /// A request line that looks like HTTP (see `MemcacheDecoder.looksLikeHTTP`):
    /// memcached closes such a connection without a reply, so that a browser
    /// led to post to a cache port cannot drive it (a cross-protocol request).
    case httpRequest
}

extension MemcacheCommand {
    /// Whether the command can change the store (the server slows such
    /// connections down when persistence falls behind).
    public var isWrite: Bool {
        switch self {
        case .store, .delete, .arithmetic, .touch, .flushAll, .refusedSet:
            return true
        case .retrieve(let retrieval):
            return retrieval.touchExptime != nil
        case .meta(let meta):
            switch meta.verb {
            case .set, .delete, .arithmetic: return true
            case .get: return meta.flags.ttl != nil || meta.flags.vivifyTTL != nil
            case .noop, .debug: return false
            }
        case .version, .verbosity, .quit, .stats, .invalid:
            return false
        }
    }

    /// Whether running the write a second time leaves what running it once
    /// did, and answers the same (`set`, `touch`): one whose outcome a
    /// failover made unknown may then be run again for the client.
    public var isRepeatableWrite: Bool {
        switch self {
        case .store(let storage): return storage.verb == .set
        case .touch: return true
        case .retrieve, .delete, .arithmetic, .flushAll, .version, .verbosity, .quit, .stats, .meta, .refusedSet,
            .invalid:
            return false
        }
    }

    /// Whether the client asked for no reply (`noreply`). Errors are then not
    /// sent either, as in memcached: the client would take them for the
    /// answer to its next request.
    public var noreply: Bool {
        switch self {
        case .store(let storage): return storage.noreply
        case .delete(_, let noreply), .arithmetic(_, _, _, let noreply), .touch(_, _, let noreply),
            .flushAll(_, let noreply), .verbosity(_, let noreply), .refusedSet(_, let noreply),
            .invalid(_, let noreply):
            return noreply
        case .retrieve, .version, .quit, .stats, .meta:
            return false
        }
    }
}
