import SessionStore
import TandemServer
import Testing

/// `noreply` suppresses the reply of every storage, delete, arithmetic, touch,
/// flush and verbosity command, while the command still takes effect. Each
/// exchange ends with `mn`, so an empty result means exactly "no reply".
@Suite struct NoreplyTests {
    @Test func storageCommands() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 1 0 1 noreply\r\na\r\n", "")
            try await client.expectReply("get k\r\n", "VALUE k 1 1\r\na\r\nEND\r\n")
            // Both the success and the failure of add are silent.
            try await client.expectReply("add k 0 0 1 noreply\r\nb\r\n", "")
            try await client.expectReply("add fresh 0 0 1 noreply\r\nf\r\n", "")
            try await client.expectReply("get k fresh\r\n", "VALUE k 1 1\r\na\r\nVALUE fresh 0 1\r\nf\r\nEND\r\n")
            try await client.expectReply("replace k 2 0 1 noreply\r\nc\r\n", "")
            try await client.expectReply("replace nope 2 0 1 noreply\r\nc\r\n", "")
            try await client.expectReply("append k 0 0 1 noreply\r\nd\r\n", "")
            try await client.expectReply("prepend k 0 0 1 noreply\r\ne\r\n", "")
            try await client.expectReply("append nope 0 0 1 noreply\r\nd\r\n", "")
            try await client.expectReply("get k nope\r\n", "VALUE k 2 3\r\necd\r\nEND\r\n")

            let cas = try await client.cas("k")
            try await client.expectReply("cas k 3 0 1 \(cas) noreply\r\nf\r\n", "")
            try await client.expectReply("cas k 4 0 1 \(cas) noreply\r\ng\r\n", "")
            try await client.expectReply("cas nope 4 0 1 \(cas) noreply\r\ng\r\n", "")
            try await client.expectReply("get k\r\n", "VALUE k 3 1\r\nf\r\nEND\r\n")
        }
    }

    @Test func deleteArithmeticTouch() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set n 0 0 1\r\n5\r\n", "STORED\r\n")
            try await client.expectReply("incr n 10 noreply\r\n", "")
            try await client.expectReply("decr n 3 noreply\r\n", "")
            try await client.expectReply("incr nope 1 noreply\r\ndecr nope 1 noreply\r\n", "")
            try await client.expectReply("get n\r\n", "VALUE n 0 2\r\n12\r\nEND\r\n")

            try await client.expectReply("touch n 100 noreply\r\ntouch nope 100 noreply\r\n", "")
            try await client.expectReply("mg n t\r\n", "HD t100\r\n")

            try await client.expectReply("delete n noreply\r\ndelete n noreply\r\n", "")
            try await client.expectReply("set m 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("delete m 0 noreply\r\n", "")
            try await client.expectReply("get n m\r\n", "END\r\n")
        }
    }

    @Test func flushAllAndVerbosity() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("flush_all noreply\r\n", "")
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("flush_all 0 noreply\r\n", "")
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("verbosity 1 noreply\r\n", "")
            #expect(try await client.stats("settings")["verbosity"] == "1")
        }
    }

    @Test func followedByVersionOnlyThatReplyArrives() async throws {
        try await withClient { client, _, _ async throws in
            try await client.send("set k 0 0 1 noreply\r\n1\r\nincr k 1 noreply\r\ntouch k 0 noreply\r\ndelete k noreply\r\nversion\r\n")
            let line = try await client.readLine()
            #expect(line.hasPrefix("VERSION "))
            try await client.expectReply("", "")
        }
    }

    /// memcached answers nothing to a noreply command, errors included: a
    /// client that pipelines such commands would take an error for the
    /// answer to its next request. Each case is followed by `mn` (through
    /// `expectReply`), so an empty reply means nothing at all was sent.
    @Test func errorsAreSilentToo() async throws {
        try await withClient(configure: { $0.store.maxItemSize = 1024 }) { client, _, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            // Bad format: a delete hold time, a bad number, a bad key, a bad length.
            try await client.expectReply("delete k 10 noreply\r\n", "")
            try await client.expectReply("delete k x noreply\r\n", "")
            try await client.expectReply("touch k x noreply\r\n", "")
            try await client.expectReply("incr k x noreply\r\n", "")
            try await client.expectReply("flush_all x noreply\r\n", "")
            try await client.expectReply("delete \(String(repeating: "k", count: 251)) noreply\r\n", "")
            try await client.expectReply("set k 0 0 x noreply\r\n", "")
            // A refused storage line with a known length: silent, and its data block is dropped.
            try await client.expectReply("set k x 0 3 noreply\r\nabc\r\n", "")
            try await client.expectReply("cas k 0 0 3 noreply\r\nabc\r\n", "")
            // Too large (set and the other verbs), and growing past the limit by appending.
            let big = filler(2000)
            try await client.expectReply("set big 0 0 2000 noreply\r\n\(big)\r\n", "")
            try await client.expectReply("add big 0 0 2000 noreply\r\n\(big)\r\n", "")
            try await client.expectReply("set k 0 0 1024\r\n\(filler(1024))\r\n", "STORED\r\n")
            try await client.expectReply("append k 0 0 1 noreply\r\nx\r\n", "")
            // A data block not followed by CRLF: the error is silent; what
            // follows the misplaced CRLF is read as a line, as in memcached.
            try await client.expectReply("set d 0 0 1 noreply\r\naX\r\n", "ERROR\r\n")
            // Not numeric.
            try await client.expectReply("set s 0 0 1 noreply\r\nx\r\n", "")
            try await client.expectReply("incr s 1 noreply\r\n", "")
            // Every one of them still counts as an error (or a refused store).
            let stats = try await client.stats()
            #expect(Int(stats["protocol_errors"] ?? "0") ?? 0 >= 10)
            #expect(Int(stats["store_too_large"] ?? "0") ?? 0 >= 3)
            // Nothing was stored or removed by the refused commands.
            try await client.expectReply("get k big d s\r\n", "VALUE k 0 1024\r\n\(filler(1024))\r\nVALUE s 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func errorsThatAreNoCommandAreAnswered() async throws {
        try await withClient { client, _, _ async throws in
            // A wrong token count is no command to memcached: ERROR, whatever the last token says.
            try await client.expectReply("delete k 0 x noreply\r\n", "ERROR\r\n")
            try await client.expectReply("bogus noreply\r\n", "ERROR\r\n")
            try await client.expectReply("verbosity x y noreply\r\n", "ERROR\r\n")
            // noreply has to be the last token.
            try await client.expectReply("delete k noreply 0\r\n", "CLIENT_ERROR bad command line format\r\n")
            // And with the error silent, the next command is answered normally.
            try await client.send("delete k 10 noreply\r\n")
            #expect(try await client.exchange("version\r\n").hasPrefix("VERSION "))
        }
    }
}
