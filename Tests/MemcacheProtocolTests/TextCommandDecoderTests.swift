@testable import MemcacheProtocol
import NIOCore
import Testing

/// Every text-protocol command, through NIO's `ByteToMessageDecoderVerifier`
/// (each input whole, drip-fed byte by byte, and all inputs at once).
@Suite("Text protocol decoding")
struct TextCommandDecoderTests {
    @Test func retrievalCommands() throws {
        try verify([
            ("get k\r\n", [retrieve("k")]),
            ("get a b c\r\n", [retrieve("a b c")]),
            ("gets k\r\n", [retrieve("k", cas: true)]),
            ("gets a bb ccc\r\n", [retrieve("a bb ccc", cas: true)]),
            ("gat 100 k\r\n", [retrieve("k", touch: 100)]),
            ("gat 0 a b\r\n", [retrieve("a b", touch: 0)]),
            ("gats -1 a b\r\n", [retrieve("a b", cas: true, touch: -1)]),
            ("gats 9223372036854775807 k\r\n", [retrieve("k", cas: true, touch: .max)]),
            // Keys may use any printable byte, including UTF-8.
            ("get {a}:b/c-d_e\r\n", [retrieve("{a}:b/c-d_e")]),
            ("get k\u{e9}y\r\n", [retrieve("k\u{e9}y")]),
        ])
    }

    @Test func keyListIteratesKeys() throws {
        let result = try decode("get  a   bb c  \r\n")
        guard case .retrieve(let command) = try #require(result.commands.first) else {
            Issue.record("not a retrieval: \(result)")
            return
        }
        #expect(command.keys.map { String(buffer: $0) } == ["a", "bb", "c"])
        let fiftyKeys = (0..<50).map { "key\($0)" }
        let many = try decode("gets " + fiftyKeys.joined(separator: " ") + "\r\n")
        guard case .retrieve(let manyCommand) = try #require(many.commands.first) else {
            Issue.record("not a retrieval: \(many)")
            return
        }
        #expect(manyCommand.keys.map { String(buffer: $0) } == fiftyKeys)
        #expect(manyCommand.returnsCas)
    }

    @Test func storageCommands() throws {
        try verify([
            ("set k 5 100 3\r\nabc\r\n", [store(.set, "k", flags: 5, exptime: 100, "abc")]),
            ("set k 0 0 3 noreply\r\nabc\r\n", [store(.set, "k", noreply: true, "abc")]),
            ("add k 1 -1 2\r\nhi\r\n", [store(.add, "k", flags: 1, exptime: -1, "hi")]),
            ("add k 1 2 2 noreply\r\nhi\r\n", [store(.add, "k", flags: 1, exptime: 2, noreply: true, "hi")]),
            ("replace k 0 0 1\r\nx\r\n", [store(.replace, "k", "x")]),
            ("replace k 0 0 1 noreply\r\nx\r\n", [store(.replace, "k", noreply: true, "x")]),
            ("append k 0 0 4\r\ntail\r\n", [store(.append, "k", "tail")]),
            ("append k 0 0 4 noreply\r\ntail\r\n", [store(.append, "k", noreply: true, "tail")]),
            ("prepend k 0 0 4\r\nhead\r\n", [store(.prepend, "k", "head")]),
            ("prepend k 0 0 4 noreply\r\nhead\r\n", [store(.prepend, "k", noreply: true, "head")]),
            ("cas k 7 60 3 12345\r\nabc\r\n", [store(.cas, "k", flags: 7, exptime: 60, cas: 12345, "abc")]),
            ("cas k 0 0 3 18446744073709551615 noreply\r\nabc\r\n", [store(.cas, "k", cas: .max, noreply: true, "abc")]),
            // Flags are 32-bit; exptime may be negative (expires at once).
            ("set k 4294967295 -100 1\r\nz\r\n", [store(.set, "k", flags: .max, exptime: -100, "z")]),
            // Empty value.
            ("set k 0 0 0\r\n\r\n", [store(.set, "k", "")]),
            // The data block is opaque: it may hold line ends and command text.
            ("set k 0 0 4\r\n\r\n\r\n\r\n", [store(.set, "k", "\r\n\r\n")]),
            ("set k 0 0 11\r\nget x\r\nmn\r\n\r\n", [store(.set, "k", "get x\r\nmn\r\n")]),
        ])
    }

    @Test func storageValueIsBinarySafe() throws {
        let value: [UInt8] = [0, 1, 0x0D, 0x0A, 0x20, 0x7F, 0x80, 0xFF]
        let input = Array("set bin 0 0 8\r\n".utf8) + value + Array("\r\n".utf8)
        try verify(bytes: [
            (input, [.store(StorageCommand(verb: .set, key: bb("bin"), flags: 0, exptime: 0, noreply: false, value: bb(value)))])
        ])
    }

    @Test func deleteCommands() throws {
        try verify([
            ("delete k\r\n", [.delete(key: bb("k"), noreply: false)]),
            ("delete k noreply\r\n", [.delete(key: bb("k"), noreply: true)]),
            // The legacy hold time, accepted only when it is 0.
            ("delete k 0\r\n", [.delete(key: bb("k"), noreply: false)]),
            ("delete k 0 noreply\r\n", [.delete(key: bb("k"), noreply: true)]),
        ])
    }

    @Test func arithmeticCommands() throws {
        try verify([
            ("incr k 1\r\n", [.arithmetic(key: bb("k"), increment: true, delta: 1, noreply: false)]),
            ("incr k 0 noreply\r\n", [.arithmetic(key: bb("k"), increment: true, delta: 0, noreply: true)]),
            ("decr k 5\r\n", [.arithmetic(key: bb("k"), increment: false, delta: 5, noreply: false)]),
            (
                "decr k 18446744073709551615 noreply\r\n",
                [.arithmetic(key: bb("k"), increment: false, delta: .max, noreply: true)]
            ),
        ])
    }

    @Test func touchCommands() throws {
        try verify([
            ("touch k 10\r\n", [.touch(key: bb("k"), exptime: 10, noreply: false)]),
            ("touch k -1 noreply\r\n", [.touch(key: bb("k"), exptime: -1, noreply: true)]),
            ("touch k 0\r\n", [.touch(key: bb("k"), exptime: 0, noreply: false)]),
        ])
    }

    @Test func flushAll() throws {
        try verify([
            ("flush_all\r\n", [.flushAll(delay: 0, noreply: false)]),
            ("flush_all 0\r\n", [.flushAll(delay: 0, noreply: false)]),
            ("flush_all 10\r\n", [.flushAll(delay: 10, noreply: false)]),
            ("flush_all noreply\r\n", [.flushAll(delay: 0, noreply: true)]),
            ("flush_all 10 noreply\r\n", [.flushAll(delay: 10, noreply: true)]),
            // memcached treats a delay that is not positive as "now".
            ("flush_all -1\r\n", [.flushAll(delay: 0, noreply: false)]),
            ("flush_all -5 noreply\r\n", [.flushAll(delay: 0, noreply: true)]),
        ])
    }

    @Test func versionVerbosityQuit() throws {
        try verify([
            ("version\r\n", [.version]),
            ("quit\r\n", [.quit]),
            ("verbosity 1\r\n", [.verbosity(level: 1, noreply: false)]),
            ("verbosity 2 noreply\r\n", [.verbosity(level: 2, noreply: true)]),
            // protocol.txt: verbosity "always succeeds"; like older memcached, a
            // level that is not a number counts as 0.
            ("verbosity noreply\r\n", [.verbosity(level: 0, noreply: true)]),
            ("verbosity x\r\n", [.verbosity(level: 0, noreply: false)]),
            // Extra tokens after a command without arguments are ignored, as in memcached.
            ("version now\r\n", [.version]),
            ("quit now\r\n", [.quit]),
        ])
    }

    @Test func stats() throws {
        try verify([
            ("stats\r\n", [.stats(group: .general)]),
            ("stats settings\r\n", [.stats(group: .settings)]),
            ("stats items\r\n", [.stats(group: .items)]),
            ("stats slabs\r\n", [.stats(group: .slabs)]),
            ("stats sizes\r\n", [.stats(group: .sizes)]),
            ("stats conns\r\n", [.stats(group: .conns)]),
            ("stats reset\r\n", [.stats(group: .reset)]),
            ("stats detail\r\n", [.stats(group: .other("detail"))]),
        ])
    }

    @Test func pipelinedSequences() throws {
        try verify([
            (
                "get a\r\nset b 1 2 3\r\nxyz\r\ndelete c\r\nincr d 4\r\nmn\r\n",
                [
                    retrieve("a"), store(.set, "b", flags: 1, exptime: 2, "xyz"),
                    .delete(key: bb("c"), noreply: false),
                    .arithmetic(key: bb("d"), increment: true, delta: 4, noreply: false), metaNoop,
                ]
            ),
            (
                "set a 0 0 1 noreply\r\n1\r\nset b 0 0 1 noreply\r\n2\r\ngets a b\r\n",
                [store(.set, "a", noreply: true, "1"), store(.set, "b", noreply: true, "2"), retrieve("a b", cas: true)]
            ),
            (
                "ms k 2 T0\r\nhi\r\nmg k v\r\nget k\r\nmd k q\r\nmn\r\n",
                [
                    meta(.set, "k", "T", value: "hi") { $0.ttl = 0 }, meta(.get, "k", "v"), retrieve("k"),
                    meta(.delete, "k", "q"), metaNoop,
                ]
            ),
            ("version\r\nversion\r\nversion\r\n", [.version, .version, .version]),
        ])
    }

    @Test func newlineOnlyLineEndings() throws {
        try verify([
            ("get k\n", [retrieve("k")]),
            ("gets a b\n", [retrieve("a b", cas: true)]),
            // The command line may end in "\n"; the data block must still end in "\r\n".
            ("set k 0 0 3\nabc\r\n", [store(.set, "k", "abc")]),
            ("delete k\n", [.delete(key: bb("k"), noreply: false)]),
            ("incr k 1\n", [.arithmetic(key: bb("k"), increment: true, delta: 1, noreply: false)]),
            ("touch k 1 noreply\n", [.touch(key: bb("k"), exptime: 1, noreply: true)]),
            ("flush_all\n", [.flushAll(delay: 0, noreply: false)]),
            ("version\nquit\n", [.version, .quit]),
            ("stats items\n", [.stats(group: .items)]),
            ("mn\nmg k v\n", [metaNoop, meta(.get, "k", "v")]),
            ("ms k 1\nx\r\n", [meta(.set, "k", value: "x")]),
        ])
    }

    @Test func multipleSpacesBetweenTokens() throws {
        try verify([
            // The key region keeps its inner spaces; iteration skips them.
            ("get   a    b  \r\n", [retrieve("a    b")]),
            ("  get a\r\n", [retrieve("a")]),
            ("   gats  5  a b  \r\n", [retrieve("a b", cas: true, touch: 5)]),
            ("gat  10   a\r\n", [retrieve("a", touch: 10)]),
            ("set  k  1  2  3  \r\nabc\r\n", [store(.set, "k", flags: 1, exptime: 2, "abc")]),
            ("cas k 0 0 1 9   noreply\r\nx\r\n", [store(.cas, "k", cas: 9, noreply: true, "x")]),
            ("delete   k   0   noreply \r\n", [.delete(key: bb("k"), noreply: true)]),
            ("incr  k  2 \r\n", [.arithmetic(key: bb("k"), increment: true, delta: 2, noreply: false)]),
            ("flush_all   7  \r\n", [.flushAll(delay: 7, noreply: false)]),
            ("stats   slabs \r\n", [.stats(group: .slabs)]),
            ("mg  k   v  T5 \r\n", [meta(.get, "k", "vT") { $0.ttl = 5 }]),
            ("ms  k  2   F3 \r\nab\r\n", [meta(.set, "k", "F", value: "ab") { $0.clientFlags = 3 }]),
        ])
    }

    @Test func keyOfExactlyTheMaximumLength() throws {
        let key = String(repeating: "k", count: 250)
        try verify([
            ("get \(key)\r\n", [retrieve(key)]),
            ("set \(key) 0 0 1\r\nx\r\n", [store(.set, key, "x")]),
            ("delete \(key)\r\n", [.delete(key: bb(key), noreply: false)]),
            ("mg \(key) v\r\n", [meta(.get, key, "v")]),
        ])
    }

    @Test func keysAreSlicesOfTheLine() throws {
        // Keys and values come out as the exact bytes, whatever the buffer's indices.
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        buffer.writeString("XXXXset key 0 0 5\r\nvalue\r\n")
        buffer.moveReaderIndex(forwardBy: 4)
        var decoder = MemcacheDecoder()
        let command = try decoder.next(&buffer)
        #expect(command == store(.set, "key", "value"))
        #expect(buffer.readableBytes == 0)
    }
}

/// A long retrieval cut into parts (`RetrievalCommand.parts`), which a server answers one by one.
@Suite("Retrieval parts")
struct RetrievalPartsTests {
    func keys(_ command: RetrievalCommand) -> [String] {
        command.keys.map { String(buffer: $0) }
    }

    @Test("the keys keep their order across the parts, only the last part ends the reply, and the rest is kept")
    func parts() {
        let names = (0..<7).map { "key\($0)" }
        // Extra spaces between keys, as a client may send them.
        var gat = RetrievalCommand(keys: KeyList(bytes: ByteBuffer(string: names.joined(separator: "  "))), returnsCas: true, touchExptime: 30)
        for size in 1...8 {
            let parts = gat.parts(ofAtMost: size)
            #expect(parts.flatMap(keys) == names, "parts of \(size)")
            #expect(parts.count == (names.count + size - 1) / size)
            #expect(parts.dropLast().allSatisfy { !$0.endsReply && keys($0).count == size })
            #expect(parts.last?.endsReply == true)
            #expect(parts.allSatisfy { $0.returnsCas && $0.touchExptime == 30 })
        }
        // A part of a part that does not end the reply ends none of its own.
        gat.endsReply = false
        #expect(gat.parts(ofAtMost: 3).allSatisfy { !$0.endsReply })
        let one = RetrievalCommand(keys: KeyList(bytes: ByteBuffer(string: "k")), returnsCas: false)
        #expect(one.parts(ofAtMost: 32) == [one])
    }
}
