import NIOCore

/// Bounds on everything the decoder reads from a socket.
public struct MemcacheDecoderLimits: Sendable {
    /// memcached closes a connection whose buffered input holds 2,048 bytes
    /// without a newline, unless they start a `get`/`gets` (proto_text.c).
    public static let defaultMaxLineLength = 2048
    /// memcached bounds multiget lines by nothing but memory (it grows the
    /// read buffer as far as the line goes: 18,000 keys make a ~190 KB line).
    /// Tandem keeps a bound so that one connection's buffer stays finite:
    /// 4 MiB is some 200,000 keys of 20 bytes. A longer line is answered
    /// `CLIENT_ERROR line too long` (see Protocol.md 3.1).
    public static let defaultMaxRetrievalLineLength = 4 << 20
    /// memcached's `KEY_MAX_LENGTH`.
    public static let defaultMaxKeyLength = 250
    /// memcached's `MFLAG_MAX_OPAQUE_LENGTH`; it bounds the whole `O` token,
    /// the letter included, so an opaque holds at most 31 bytes.
    public static let defaultMaxOpaqueTokenLength = 32

    /// A command line longer than this without a newline closes the connection.
    public var maxLineLength: Int
    /// `get`/`gets`/`gat`/`gats` may carry many keys; their own, larger bound.
    public var maxRetrievalLineLength: Int
    /// The longest key, and the longest key token (base64 keys are bounded
    /// before decoding, as memcached does).
    public var maxKeyLength: Int
    /// Values over this are refused with `SERVER_ERROR object too large for cache`
    /// (their data block is swallowed, never buffered).
    public var maxItemSize: Int
    /// The longest `O` token of a meta command, its letter included.
    public var maxOpaqueTokenLength: Int

    public init(
        maxLineLength: Int = defaultMaxLineLength, maxRetrievalLineLength: Int = defaultMaxRetrievalLineLength,
        maxKeyLength: Int = defaultMaxKeyLength, maxItemSize: Int = 1 << 20,
        maxOpaqueTokenLength: Int = defaultMaxOpaqueTokenLength
    ) {
        self.maxLineLength = maxLineLength
        self.maxRetrievalLineLength = maxRetrievalLineLength
        self.maxKeyLength = maxKeyLength
        self.maxItemSize = maxItemSize
        self.maxOpaqueTokenLength = maxOpaqueTokenLength
    }
}

/// Turns bytes into `MemcacheCommand`s: the text protocol and the meta
/// protocol, which share a connection. It touches no store.
///
/// Recoverable mistakes come out as `.invalid` commands for the dispatcher to
/// answer; only a stream that cannot be re-synchronised throws.
public struct MemcacheDecoder: Sendable {
    /// Where the decoder is in the byte stream.
    enum State: Sendable {
        /// Expecting a command line.
        case awaitingLine
        /// A storage command line was read; its data block (plus `\r\n`) is next.
        case awaitingData(PendingStore)
        /// Dropping the data block of a storage command that was refused.
        case swallowing(remaining: Int)
        /// Dropping the rest of a retrieval line that was refused for its
        /// length, up to and including its newline.
        case discardingLine
    }

    /// A storage command waiting for its data block.
    enum PendingStore: Sendable {
        /// A classic storage command, its value still empty.
        case classic(StorageCommand, length: Int)
        /// An `ms` command.
        case meta(MetaCommand, length: Int)

        var length: Int {
            switch self {
            case .classic(_, let length), .meta(_, let length): return length
            }
        }
    }

    public let limits: MemcacheDecoderLimits
    private var state: State = .awaitingLine
    /// Token ranges of the current line, reused so that decoding does not allocate.
    private(set) var tokens: [Range<Int>] = []
    /// How many bytes at the front of the buffer are already known to hold no
    /// newline, so that a line arriving over many reads is scanned once, not
    /// once per read (which is quadratic for a 64 KiB `get` sent byte by byte).
    private var scannedWithoutNewline = 0

    public init(limits: MemcacheDecoderLimits = MemcacheDecoderLimits()) {
        self.limits = limits
        self.tokens.reserveCapacity(32)
    }

    /// Decodes the next command from `buffer`, or returns nil when more bytes are needed.
    ///
    /// Pass the same buffer each time, with newly read bytes appended after the
    /// ones left unread (as `ByteToMessageHandler` does): a partial command is
    /// not read again from the start.
    public mutating func next(_ buffer: inout ByteBuffer) throws(MemcacheProtocolError) -> MemcacheCommand? {
        while true {
            switch state {
            case .swallowing(let remaining):
                let dropped = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: dropped)
                if dropped < remaining {
                    state = .swallowing(remaining: remaining - dropped)
                    return nil
                }
                state = .awaitingLine

            case .discardingLine:
                let newline = buffer.withUnsafeReadableBytes { $0.firstIndex(of: ASCII.lf) }
                guard let newline else {
                    buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                    return nil
                }
                buffer.moveReaderIndex(forwardBy: newline + 1)
                state = .awaitingLine

            case .awaitingData(let pending):
                guard buffer.readableBytes >= pending.length + 2 else { return nil }
                let value = buffer.readSlice(length: pending.length)!
                let terminator = buffer.readInteger(as: UInt16.self)!
                state = .awaitingLine
                guard terminator == 0x0D0A else {
                    // The line's noreply covers its data block too, as in memcached.
                    let noreply: Bool
                    switch pending {
                    case .classic(let command, _): noreply = command.noreply
                    case .meta: noreply = false
                    }
                    return .invalid(.badDataChunk, noreply: noreply)
                }
                switch pending {
                case .classic(var command, _):
                    command.value = value
                    return .store(command)
                case .meta(var command, _):
                    command.value = value
                    return .meta(command)
                }

            case .awaitingLine:
                if let command = try decodeLine(&buffer) { return command }
                // A storage command line moves on to its data block; anything else needs more bytes.
                if case .awaitingLine = state { return nil }
            }
        }
    }

    private mutating func decodeLine(_ buffer: inout ByteBuffer) throws(MemcacheProtocolError) -> MemcacheCommand? {
        let readable = buffer.readableBytes
        guard readable > 0 else {
            scannedWithoutNewline = 0
            return nil
        }
        // Read once per line: it picks the line's bound here and its decoder in `parse`
        // (the line starts with the same bytes, so it is the same answer).
        let retrieval = buffer.withUnsafeReadableBytes { Self.retrieval($0) }
        let limit = retrieval != nil ? limits.maxRetrievalLineLength : limits.maxLineLength
        let end = min(readable, limit)
        let start = min(scannedWithoutNewline, end)
        let newline = buffer.withUnsafeReadableBytes { bytes in
            UnsafeRawBufferPointer(rebasing: bytes[start..<end]).firstIndex(of: ASCII.lf).map { start + $0 }
        }
        guard let newline else {
            guard readable >= limit else {
                scannedWithoutNewline = end
                return nil
            }
            scannedWithoutNewline = 0
            // memcached closes on other long lines, silently; Tandem does too.
            guard retrieval != nil else { throw .lineTooLong(limit: limit) }
            // A multiget is answered whatever its length in memcached; past
            // Tandem's bound it is at least answered, never cut off, and the
            // connection stays in frame by dropping the rest of the line.
            buffer.moveReaderIndex(forwardBy: limit)
            state = .discardingLine
            return .invalid(.lineTooLong, noreply: false)
        }
        scannedWithoutNewline = 0
        let line = buffer.readSlice(length: newline + 1)!
        return try parse(line, retrieval: retrieval)
    }

    /// A retrieval command at the start of a line.
    struct Retrieval {
        var returnsCas: Bool
        var touches: Bool
        /// Where the arguments start: after leading spaces, the name and one space.
        var arguments: Int
    }

    /// Which retrieval command `bytes` start with, if any (after leading
    /// spaces, which the tokenizer skips too): its name and a space. A name
    /// without arguments is decoded, and refused, like any other line.
    private static func retrieval(_ bytes: UnsafeRawBufferPointer) -> Retrieval? {
        var start = 0
        while start < bytes.count, bytes[start] == ASCII.space { start += 1 }
        guard bytes.count - start >= 4, bytes[start] == UInt8(ascii: "g") else { return nil }
        let second = bytes[start + 1], third = bytes[start + 2], fourth = bytes[start + 3]
        guard second == UInt8(ascii: "e") || second == UInt8(ascii: "a"), third == UInt8(ascii: "t") else { return nil }
        let touches = second == UInt8(ascii: "a")
        if fourth == ASCII.space { return Retrieval(returnsCas: false, touches: touches, arguments: start + 4) }
        guard fourth == UInt8(ascii: "s"), bytes.count - start >= 5, bytes[start + 4] == ASCII.space else { return nil }
        return Retrieval(returnsCas: true, touches: touches, arguments: start + 5)
    }

    // MARK: Line parsing

    private mutating func parse(_ line: ByteBuffer, retrieval: Retrieval?) throws(MemcacheProtocolError) -> MemcacheCommand? {
        let command = line.withUnsafeReadableBytes { raw -> Result<MemcacheCommand?, MemcacheProtocolError> in
            var end = raw.count - 1  // drop "\n"
            if end > 0, raw[end - 1] == ASCII.cr { end -= 1 }
            let content = UnsafeRawBufferPointer(rebasing: raw[..<end])
            if let retrieval {
                return .success(decodeRetrieval(content, line: line, retrieval))
            }
            tokenize(content)
            let view = LineView(raw: raw, tokens: tokens, base: line)
            guard view.count > 0 else { return .success(.invalid(.unknownCommand, noreply: false)) }
            do throws(MemcacheProtocolError) {
                return .success(try decodeCommand(view))
            } catch {
                return .failure(error)
            }
        }
        // Lines other than retrievals are at most `maxLineLength` long, but a
        // configured bound may be large: do not keep a big token array for
        // the rest of the connection's life.
        if tokens.capacity > Self.retainedTokenCapacity {
            tokens = []
            tokens.reserveCapacity(32)
        }
        return try command.get()
    }

    /// The most token slots kept between lines.
    static let retainedTokenCapacity = 1024

    private mutating func tokenize(_ content: UnsafeRawBufferPointer) {
        tokens.removeAll(keepingCapacity: true)
        var start = 0
        var index = 0
        while index < content.count {
            if content[index] == ASCII.space {
                if index > start { tokens.append(start..<index) }
                start = index + 1
            }
            index += 1
        }
        if index > start { tokens.append(start..<index) }
    }

    private mutating func decodeCommand(_ line: LineView) throws(MemcacheProtocolError) -> MemcacheCommand? {
        let name = line.bytes(0)
        switch name.count {
        case 2 where name[0] == UInt8(ascii: "m"):
            return decodeMeta(line, verbLetter: name[1])
        case 3:
            // A retrieval name followed by a space was decoded before
            // tokenizing (`decodeRetrieval`); here it stands alone, without keys.
            if line.is(0, "get") || line.is(0, "gat") { return .invalid(.unknownCommand, noreply: false) }
            if line.is(0, "set") { return decodeStorage(line, .set) }
            if line.is(0, "add") { return decodeStorage(line, .add) }
            if line.is(0, "cas") { return decodeStorage(line, .cas) }
        case 4:
            if line.is(0, "gets") || line.is(0, "gats") { return .invalid(.unknownCommand, noreply: false) }
            if line.is(0, "incr") { return decodeArithmetic(line, increment: true) }
            if line.is(0, "decr") { return decodeArithmetic(line, increment: false) }
            if line.is(0, "quit") { return .quit }
        case 5:
            if line.is(0, "touch") { return decodeTouch(line) }
            if line.is(0, "stats") { return decodeStats(line) }
        case 6:
            if line.is(0, "delete") { return decodeDelete(line) }
            if line.is(0, "append") { return decodeStorage(line, .append) }
        case 7:
            if line.is(0, "replace") { return decodeStorage(line, .replace) }
            if line.is(0, "prepend") { return decodeStorage(line, .prepend) }
            if line.is(0, "version") { return .version }
        case 9:
            if line.is(0, "flush_all") { return decodeFlushAll(line) }
            if line.is(0, "verbosity") { return decodeVerbosity(line) }
        default:
            break
        }
        if Self.looksLikeHTTP(line) { throw .httpRequest }
        return .invalid(.unknownCommand, noreply: false)
    }

    /// memcached's `MAX_TOKENS`: it splits a line into at most 23 tokens and
    /// leaves the rest of a longer line in the last one.
    static let memcachedMaxTokens = 24

    /// Words that memcached has commands for and Tandem does not; they are
    /// answered `ERROR` but never taken for HTTP, as in memcached.
    private static let memcachedOnlyWords: [StaticString] = ["bget", "extstore", "lru", "lru_crawler", "refresh_certs", "watch"]

    /// Whether a line that is no command looks like an HTTP request (its
    /// last token starts with `HTTP/`), on which memcached closes the
    /// connection without a reply. memcached applies the rule only after its
    /// command table has had its say: words of one byte, words starting with
    /// a, c, d, g, i, s or t (its common commands, looked up by first letter,
    /// which answer `ERROR` themselves), two-letter meta words, the other
    /// words it knows, and lines of `memcachedMaxTokens` tokens or more are
    /// answered `ERROR` instead. So `GET / HTTP/1.1` closes, `get / HTTP/1.1`
    /// is a `get`.
    static func looksLikeHTTP(_ line: LineView) -> Bool {
        guard line.count < memcachedMaxTokens else { return false }
        let name = line.bytes(0)
        guard name.count >= 2 else { return false }
        switch name[0] {
        case UInt8(ascii: "a"), UInt8(ascii: "c"), UInt8(ascii: "d"), UInt8(ascii: "g"), UInt8(ascii: "i"),
            UInt8(ascii: "s"), UInt8(ascii: "t"):
            return false
        default:
            break
        }
        for word in memcachedOnlyWords where line.is(0, word) {
            return false
        }
        let last = line.bytes(line.count - 1)
        let marker: StaticString = "HTTP/"
        return marker.withUTF8Buffer { prefix in
            last.count >= prefix.count && last.prefix(prefix.count).elementsEqual(prefix)
        }
    }

    /// `get|gets <key>+` and `gat|gats <exptime> <key>+`, read from the
    /// line's bytes rather than its tokens: a multiget may carry hundreds of
    /// thousands of keys, and splitting them would allocate in proportion.
    /// `content` is the line without its terminator.
    private func decodeRetrieval(_ content: UnsafeRawBufferPointer, line: ByteBuffer, _ retrieval: Retrieval) -> MemcacheCommand {
        var index = retrieval.arguments
        func skipSpaces() {
            while index < content.count, content[index] == ASCII.space { index += 1 }
        }
        skipSpaces()
        var exptime: Int64?
        if retrieval.touches {
            let start = index
            while index < content.count, content[index] != ASCII.space { index += 1 }
            let token = UnsafeRawBufferPointer(rebasing: content[start..<index])
            skipSpaces()
            // Without a key the command is incomplete (memcached's token count: `ERROR`).
            guard index < content.count else { return .invalid(.unknownCommand, noreply: false) }
            guard let value = ASCII.parseInt64(token) else { return .invalid(.badCommandLine, noreply: false) }
            exptime = value
        }
        var end = content.count
        while end > index, content[end - 1] == ASCII.space { end -= 1 }
        guard end > index else { return .invalid(.unknownCommand, noreply: false) }
        guard ASCII.isValidKeyList(UnsafeRawBufferPointer(rebasing: content[index..<end]), maxKeyLength: limits.maxKeyLength) else {
            return .invalid(.badKey, noreply: false)
        }
        let keys = line.getSlice(at: line.readerIndex + index, length: end - index)!
        return .retrieve(RetrievalCommand(keys: KeyList(bytes: keys), returnsCas: retrieval.returnsCas, touchExptime: exptime))
    }

    /// `<cmd> <key> <flags> <exptime> <bytes> [cas unique] [noreply]`
    private mutating func decodeStorage(_ line: LineView, _ verb: StorageVerb) -> MemcacheCommand? {
        let required = verb == .cas ? 6 : 5
        // A wrong token count is no command at all to memcached: `ERROR`, noreply or not.
        guard line.count == required || line.count == required + 1 else {
            return .invalid(.unknownCommand, noreply: false)
        }
        let silent = line.endsWithNoreply
        // The length comes first: with it, a refused command's data block can be swallowed.
        guard let length = ASCII.parseInt64(line.bytes(4)), length >= 0, length <= Int64(Int32.max) - 2 else {
            return .invalid(.badCommandLine, noreply: silent)
        }
        let swallow = Int(length) + 2
        guard isKey(line.bytes(1)) else {
            state = .swallowing(remaining: swallow)
            return .invalid(.badKey, noreply: silent)
        }
        let noreply = line.count == required + 1
        guard let flags = ASCII.parseUInt64(line.bytes(2)), flags <= UInt64(UInt32.max),
            let exptime = ASCII.parseInt64(line.bytes(3)),
            !noreply || line.is(required, "noreply")
        else {
            state = .swallowing(remaining: swallow)
            return .invalid(.badCommandLine, noreply: silent)
        }
        var casUnique: UInt64 = 0
        if verb == .cas {
            guard let token = ASCII.parseUInt64(line.bytes(5)) else {
                state = .swallowing(remaining: swallow)
                return .invalid(.badCommandLine, noreply: silent)
            }
            casUnique = token
        }
        guard Int(length) <= limits.maxItemSize else {
            state = .swallowing(remaining: swallow)
            return verb == .set ? .refusedSet(key: line.slice(1), noreply: silent) : .invalid(.tooLarge, noreply: silent)
        }
        let command = StorageCommand(
            verb: verb, key: line.slice(1), flags: UInt32(flags), exptime: exptime,
            casUnique: casUnique, noreply: noreply, value: ByteBuffer()
        )
        state = .awaitingData(.classic(command, length: Int(length)))
        return nil
    }

    /// `delete <key> [0] [noreply]`
    private func decodeDelete(_ line: LineView) -> MemcacheCommand {
        guard line.count >= 2, line.count <= 4 else { return .invalid(.unknownCommand, noreply: false) }
        let silent = line.endsWithNoreply
        guard isKey(line.bytes(1)) else { return .invalid(.badKey, noreply: silent) }
        var noreply = false
        var index = 2
        if index < line.count, !line.is(index, "noreply") {
            // Only the legacy "0" hold time is accepted.
            guard line.is(index, "0") else { return .invalid(.deleteWithTime, noreply: silent) }
            index += 1
        }
        if index < line.count {
            guard line.is(index, "noreply") else { return .invalid(.badCommandLine, noreply: silent) }
            noreply = true
            index += 1
        }
        guard index == line.count else { return .invalid(.badCommandLine, noreply: silent) }
        return .delete(key: line.slice(1), noreply: noreply)
    }

    /// `incr|decr <key> <delta> [noreply]`
    private func decodeArithmetic(_ line: LineView, increment: Bool) -> MemcacheCommand {
        guard line.count == 3 || line.count == 4 else { return .invalid(.unknownCommand, noreply: false) }
        let silent = line.endsWithNoreply
        guard isKey(line.bytes(1)) else { return .invalid(.badKey, noreply: silent) }
        guard let delta = ASCII.parseUInt64(line.bytes(2)) else { return .invalid(.invalidDelta, noreply: silent) }
        let noreply = line.count == 4
        if noreply, !line.is(3, "noreply") { return .invalid(.badCommandLine, noreply: silent) }
        return .arithmetic(key: line.slice(1), increment: increment, delta: delta, noreply: noreply)
    }

    /// `touch <key> <exptime> [noreply]`
    private func decodeTouch(_ line: LineView) -> MemcacheCommand {
        guard line.count == 3 || line.count == 4 else { return .invalid(.unknownCommand, noreply: false) }
        let silent = line.endsWithNoreply
        guard isKey(line.bytes(1)) else { return .invalid(.badKey, noreply: silent) }
        guard let exptime = ASCII.parseInt64(line.bytes(2)) else { return .invalid(.badCommandLine, noreply: silent) }
        let noreply = line.count == 4
        if noreply, !line.is(3, "noreply") { return .invalid(.badCommandLine, noreply: silent) }
        return .touch(key: line.slice(1), exptime: exptime, noreply: noreply)
    }

    /// `flush_all [delay] [noreply]`. Like memcached, a delay that is not
    /// positive means now: it comes out as 0.
    private func decodeFlushAll(_ line: LineView) -> MemcacheCommand {
        guard line.count <= 3 else { return .invalid(.unknownCommand, noreply: false) }
        let silent = line.endsWithNoreply
        var delay: Int64 = 0
        var noreply = false
        var index = 1
        if index < line.count, !line.is(index, "noreply") {
            guard let value = ASCII.parseInt64(line.bytes(index)) else { return .invalid(.badCommandLine, noreply: silent) }
            delay = max(value, 0)
            index += 1
        }
        if index < line.count {
            guard line.is(index, "noreply") else { return .invalid(.badCommandLine, noreply: silent) }
            noreply = true
            index += 1
        }
        guard index == line.count else { return .invalid(.badCommandLine, noreply: silent) }
        return .flushAll(delay: delay, noreply: noreply)
    }

    /// `verbosity <level> [noreply]`. Like memcached, a level that is not a
    /// number counts as 0 and a lone `noreply` is accepted.
    private func decodeVerbosity(_ line: LineView) -> MemcacheCommand {
        guard line.count == 2 || line.count == 3 else { return .invalid(.unknownCommand, noreply: false) }
        let noreply = line.endsWithNoreply
        let level = ASCII.parseUInt64(line.bytes(1)) ?? 0
        return .verbosity(level: level, noreply: noreply)
    }

    private func decodeStats(_ line: LineView) -> MemcacheCommand {
        guard line.count > 1 else { return .stats(group: .general) }
        let group: StatsGroup
        if line.is(1, "settings") {
            group = .settings
        } else if line.is(1, "items") {
            group = .items
        } else if line.is(1, "slabs") {
            group = .slabs
        } else if line.is(1, "sizes") {
            group = .sizes
        } else if line.is(1, "conns") {
            group = .conns
        } else if line.is(1, "reset") {
            group = .reset
        } else {
            group = .other(String(decoding: line.bytes(1), as: UTF8.self))
        }
        guard line.count == 2 else { return .invalid(.badCommandLine, noreply: false) }
        return .stats(group: group)
    }

    // MARK: Meta

    private mutating func decodeMeta(_ line: LineView, verbLetter: UInt8) -> MemcacheCommand? {
        let verb: MetaVerb
        switch verbLetter {
        case UInt8(ascii: "g"): verb = .get
        case UInt8(ascii: "s"): verb = .set
        case UInt8(ascii: "d"): verb = .delete
        case UInt8(ascii: "a"): verb = .arithmetic
        case UInt8(ascii: "n"): verb = .noop
        case UInt8(ascii: "e"): verb = .debug
        default: return .invalid(.unknownCommand, noreply: false)
        }
        if verb == .noop {
            return .meta(MetaCommand(verb: .noop, key: ByteBuffer(), flags: MetaFlags()))
        }
        // Meta commands have no `noreply`: `q` hides only their success codes.
        guard line.count >= 2 else { return .invalid(.badCommandLine, noreply: false) }

        var firstFlag = 2
        var length = 0
        if verb == .set {
            guard line.count >= 3, let declared = ASCII.parseInt64(line.bytes(2)), declared >= 0, declared <= Int64(Int32.max) - 2 else {
                return .invalid(.badCommandLine, noreply: false)
            }
            length = Int(declared)
            firstFlag = 3
        }

        // From here on, an `ms` error must swallow the data block to stay in frame.
        let swallow = verb == .set ? length + 2 : 0
        // memcached checks the key token's length before the flags; it bounds
        // a base64 key before decoding, so one holds at most 186 bytes.
        guard line.bytes(1).count <= limits.maxKeyLength else {
            if swallow > 0 { state = .swallowing(remaining: swallow) }
            return .invalid(.badKey, noreply: false)
        }
        let parsed = parseMetaFlags(line, from: firstFlag, verb: verb)
        let flags: MetaFlags
        switch parsed {
        case .failure(let error):
            if swallow > 0 { state = .swallowing(remaining: swallow) }
            return .invalid(error, noreply: false)
        case .success(let value):
            flags = value
        }

        var key = line.slice(1)
        if flags.has("b") {
            let decoded = key.withUnsafeReadableBytes { Base64.decode($0) }
            guard let decoded, !decoded.isEmpty else {
                if swallow > 0 { state = .swallowing(remaining: swallow) }
                return .invalid(.badBase64Key, noreply: false)
            }
            key = ByteBuffer(bytes: decoded)
        } else if !isKey(line.bytes(1)) {
            if swallow > 0 { state = .swallowing(remaining: swallow) }
            return .invalid(.badKey, noreply: false)
        }

        let command = MetaCommand(verb: verb, key: key, flags: flags)
        guard verb == .set else { return .meta(command) }
        guard length <= limits.maxItemSize else {
            state = .swallowing(remaining: swallow)
            return .invalid(.tooLarge, noreply: false)
        }
        state = .awaitingData(.meta(command, length: length))
        return nil
    }

    private func parseMetaFlags(_ line: LineView, from first: Int, verb: MetaVerb) -> Result<MetaFlags, MemcacheRequestError> {
        var flags = MetaFlags()
        guard first < line.count else { return .success(flags) }
        for index in first..<line.count {
            let token = line.bytes(index)
            let letter = token[0]
            let argument = UnsafeRawBufferPointer(rebasing: token.dropFirst())
            // P and L are hints for proxies: accepted and ignored.
            if letter == UInt8(ascii: "P") || letter == UInt8(ascii: "L") { continue }
            guard Self.metaFlagAllowed(letter, for: verb) else {
                return .failure(.badMetaFlag("invalid flag"))
            }
            guard flags.insert(letter) else { return .failure(.badMetaFlag("duplicate flag")) }
            switch letter {
            case UInt8(ascii: "O"):
                guard token.count <= limits.maxOpaqueTokenLength else { return .failure(.badMetaFlag("opaque token too long")) }
                flags.opaque = line.base.getSlice(at: line.base.readerIndex + line.tokens[index].lowerBound + 1, length: argument.count)
            case UInt8(ascii: "T"):
                guard let value = ASCII.parseInt64(argument) else { return .failure(.badMetaFlag("bad token in command line format")) }
                flags.ttl = value
            case UInt8(ascii: "N"):
                guard let value = ASCII.parseInt64(argument) else { return .failure(.badMetaFlag("bad token in command line format")) }
                flags.vivifyTTL = value
            case UInt8(ascii: "R"):
                guard let value = ASCII.parseInt64(argument) else { return .failure(.badMetaFlag("bad token in command line format")) }
                flags.recacheSeconds = value
            case UInt8(ascii: "C"):
                guard let value = ASCII.parseUInt64(argument) else { return .failure(.badMetaFlag("bad token in command line format")) }
                flags.compareCas = value
            case UInt8(ascii: "E"):
                guard let value = ASCII.parseUInt64(argument) else { return .failure(.badMetaFlag("bad token in command line format")) }
                flags.explicitCas = value
            case UInt8(ascii: "F"):
                guard let value = ASCII.parseUInt64(argument), value <= UInt64(UInt32.max) else {
                    return .failure(.badMetaFlag("bad token in command line format"))
                }
                flags.clientFlags = UInt32(value)
            case UInt8(ascii: "D"):
                guard let value = ASCII.parseUInt64(argument) else { return .failure(.badMetaFlag("invalid numeric delta argument")) }
                flags.delta = value
            case UInt8(ascii: "J"):
                guard let value = ASCII.parseUInt64(argument) else { return .failure(.badMetaFlag("invalid numeric initial value")) }
                flags.initial = value
            case UInt8(ascii: "M"):
                guard argument.count == 1 else { return .failure(.invalidMetaMode) }
                flags.mode = argument[0]
            default:
                // Flags without tokens must stand alone.
                guard argument.isEmpty else { return .failure(.badMetaFlag("invalid flag")) }
            }
        }
        return .success(flags)
    }

    /// The flags each meta command accepts (memcached's protocol.txt).
    private static func metaFlagAllowed(_ letter: UInt8, for verb: MetaVerb) -> Bool {
        let allowed: StaticString
        switch verb {
        case .get: allowed = "bcfhklOqstuvCENRT"
        case .set: allowed = "bcCEFIkOqsSTMN"
        case .delete: allowed = "bCEIkOqTx"
        case .arithmetic: allowed = "bCENJDTMOqtcvk"
        case .debug: allowed = "b"
        case .noop: allowed = ""
        }
        return allowed.withUTF8Buffer { $0.contains(letter) }
    }

    private func isKey(_ bytes: UnsafeRawBufferPointer) -> Bool {
        ASCII.isValidKey(bytes, maxLength: limits.maxKeyLength)
    }
}

/// The tokens of one command line, over the line's bytes.
struct LineView {
    /// The whole line including its terminator.
    let raw: UnsafeRawBufferPointer
    let tokens: [Range<Int>]
    /// The line as a buffer, for slicing out keys without copying.
    let base: ByteBuffer

    var count: Int { tokens.count }

    func bytes(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: raw[tokens[index]])
    }

    /// Whether the last token is `noreply`: how memcached decides that a
    /// command (and any error it causes) is to be answered with nothing.
    var endsWithNoreply: Bool {
        count > 0 && `is`(count - 1, "noreply")
    }

    func `is`(_ index: Int, _ word: StaticString) -> Bool {
        let token = bytes(index)
        return word.withUTF8Buffer { expected in
            expected.count == token.count && expected.elementsEqual(token)
        }
    }

    /// Token `index` as a slice of the read buffer.
    func slice(_ index: Int) -> ByteBuffer {
        base.getSlice(at: base.readerIndex + tokens[index].lowerBound, length: tokens[index].count)!
    }
}

extension MemcacheDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MemcacheCommand

    public mutating func decode(buffer: inout ByteBuffer) throws -> MemcacheCommand? {
        try next(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MemcacheCommand? {
        try next(&buffer)
    }
}
