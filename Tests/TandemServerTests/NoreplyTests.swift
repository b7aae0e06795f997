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

    @Test func errorsAreStillReported() async throws {
        try await withClient(configure: { $0.store.maxItemSize = 1024 }) { client, _, _ async throws in
            // Too large and non-numeric are errors, sent even with noreply.
            let big = filler(2000)
            try await client.expectReply("set big 0 0 2000 noreply\r\n\(big)\r\n", "SERVER_ERROR object too large for cache\r\n")
            try await client.expectReply("set s 0 0 1 noreply\r\nx\r\n", "")
            #expect(
                try await client.exchange("incr s 1 noreply\r\n") == "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            )
        }
    }
}
