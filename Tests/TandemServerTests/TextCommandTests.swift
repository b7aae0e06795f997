import SessionStore
import TandemServer
import Testing

/// Every classic text command, with the exact bytes memcached answers.
@Suite struct TextCommandTests {
    @Test func getAndGetsWithManyKeysHitsAndMisses() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set a 5 0 3\r\nabc\r\n", "STORED\r\n")
            try await client.expectReply("set b 4294967295 0 0\r\n\r\n", "STORED\r\n")
            try await client.expectReply("set c 0 0 5\r\nx y z\r\n", "STORED\r\n")

            try await client.expectReply("get a\r\n", "VALUE a 5 3\r\nabc\r\nEND\r\n")
            try await client.expectReply("get missing\r\n", "END\r\n")
            #expect(
                try await client.exchange("get a missing b c a\r\n")
                    == "VALUE a 5 3\r\nabc\r\nVALUE b 4294967295 0\r\n\r\nVALUE c 0 5\r\nx y z\r\nVALUE a 5 3\r\nabc\r\nEND\r\n"
            )
            // Extra spaces between keys are tolerated.
            try await client.expectReply("get  a   c\r\n", "VALUE a 5 3\r\nabc\r\nVALUE c 0 5\r\nx y z\r\nEND\r\n")
            // A bare \n terminates a line too.
            try await client.expectReply("get a\n", "VALUE a 5 3\r\nabc\r\nEND\r\n")

            let casA = try await client.cas("a")
            let casB = try await client.cas("b")
            #expect(casA != casB)
            #expect(
                try await client.exchange("gets a nope b\r\n")
                    == "VALUE a 5 3 \(casA)\r\nabc\r\nVALUE b 4294967295 0 \(casB)\r\n\r\nEND\r\n"
            )
            try await client.expectReply("gets nope1 nope2\r\n", "END\r\n")
        }
    }

    @Test func gatAndGatsTouchEveryHit() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set a 1 0 1\r\nA\r\n", "STORED\r\n")
            try await client.expectReply("set b 2 5 1\r\nB\r\n", "STORED\r\n")

            try await client.expectReply("gat 100 a nope b\r\n", "VALUE a 1 1\r\nA\r\nVALUE b 2 1\r\nB\r\nEND\r\n")
            try await client.expectReply("mg a t\r\nmg b t\r\n", "HD t100\r\nHD t100\r\n")
            try await client.expectReply("gat 10 nope\r\n", "END\r\n")

            let cas = try await client.cas("a")
            try await client.expectReply("gats 0 a\r\n", "VALUE a 1 1 \(cas)\r\nA\r\nEND\r\n")
            try await client.expectReply("mg a t\r\n", "HD t-1\r\n")

            // b now lives 100 s from the gat, not 5 s from the set.
            clock.advance(seconds: 50)
            try await client.expectReply("get b\r\n", "VALUE b 2 1\r\nB\r\nEND\r\n")
            clock.advance(seconds: 50)
            try await client.expectReply("get b\r\n", "END\r\n")
            try await client.expectReply("get a\r\n", "VALUE a 1 1\r\nA\r\nEND\r\n")
        }
    }

    @Test func setAddReplace() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("add k 1 0 3\r\none\r\n", "STORED\r\n")
            try await client.expectReply("add k 2 0 3\r\ntwo\r\n", "NOT_STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 1 3\r\none\r\nEND\r\n")

            try await client.expectReply("replace nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n")
            try await client.expectReply("get nope\r\n", "END\r\n")
            try await client.expectReply("replace k 3 0 5\r\nthree\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 3 5\r\nthree\r\nEND\r\n")

            try await client.expectReply("set k 4 0 4\r\nfour\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 4 4\r\nfour\r\nEND\r\n")
            // A value may contain \r\n: the length frames it, not the terminator.
            try await client.expectReply("set k 0 0 6\r\na\r\nb\r\n\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 0 6\r\na\r\nb\r\n\r\nEND\r\n")
        }
    }

    @Test func appendAndPrependKeepFlags() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("append k 0 0 1\r\nx\r\n", "NOT_STORED\r\n")
            try await client.expectReply("prepend k 0 0 1\r\nx\r\n", "NOT_STORED\r\n")
            try await client.expectReply("get k\r\n", "END\r\n")

            try await client.expectReply("set k 7 0 3\r\nmid\r\n", "STORED\r\n")
            try await client.expectReply("append k 99 0 4\r\n-end\r\n", "STORED\r\n")
            try await client.expectReply("prepend k 98 0 6\r\nstart-\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 7 13\r\nstart-mid-end\r\nEND\r\n")
        }
    }

    @Test func casStoredExistsNotFound() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("cas nope 0 0 1 1\r\nx\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("set k 0 0 2\r\nv1\r\n", "STORED\r\n")
            let first = try await client.cas("k")
            try await client.expectReply("cas k 5 0 2 \(first)\r\nv2\r\n", "STORED\r\n")
            let second = try await client.cas("k")
            #expect(second != first)
            // The old token no longer matches.
            try await client.expectReply("cas k 0 0 2 \(first)\r\nv3\r\n", "EXISTS\r\n")
            try await client.expectReply("gets k\r\n", "VALUE k 5 2 \(second)\r\nv2\r\nEND\r\n")
            try await client.expectReply("delete k\r\n", "DELETED\r\n")
            try await client.expectReply("cas k 0 0 2 \(second)\r\nv4\r\n", "NOT_FOUND\r\n")
        }
    }

    @Test func delete() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("delete k\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("delete k\r\n", "DELETED\r\n")
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("delete k\r\n", "NOT_FOUND\r\n")
            // The legacy zero hold time is accepted; any other is refused.
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("delete k 0\r\n", "DELETED\r\n")
            #expect(
                try await client.exchange("delete k 10\r\n")
                    == "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            )
        }
    }

    @Test func incrementAndDecrement() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("incr nope 1\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("decr nope 1\r\n", "NOT_FOUND\r\n")

            try await client.expectReply("set n 3 0 2\r\n10\r\n", "STORED\r\n")
            try await client.expectReply("incr n 5\r\n", "15\r\n")
            try await client.expectReply("incr n 0\r\n", "15\r\n")
            try await client.expectReply("decr n 4\r\n", "11\r\n")
            // decr floors at zero.
            try await client.expectReply("decr n 100\r\n", "0\r\n")
            try await client.expectReply("decr n 1\r\n", "0\r\n")
            try await client.expectReply("incr n 99\r\n", "99\r\n")
            // Growing past the stored length works, flags are kept.
            try await client.expectReply("incr n 1\r\n", "100\r\n")
            try await client.expectReply("get n\r\n", "VALUE n 3 3\r\n100\r\nEND\r\n")

            // incr wraps at 2^64.
            try await client.expectReply("set n 0 0 20\r\n18446744073709551615\r\n", "STORED\r\n")
            try await client.expectReply("incr n 1\r\n", "0\r\n")
            try await client.expectReply("set n 0 0 20\r\n18446744073709551610\r\n", "STORED\r\n")
            try await client.expectReply("incr n 18446744073709551615\r\n", "18446744073709551609\r\n")

            try await client.expectReply("set s 0 0 3\r\nabc\r\n", "STORED\r\n")
            try await client.expectReply("incr s 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            try await client.expectReply("decr s 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            try await client.expectReply("get s\r\n", "VALUE s 0 3\r\nabc\r\nEND\r\n")

            // Deltas must be unsigned 64-bit numbers.
            try await client.expectReply("incr n abc\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n")
            try await client.expectReply("incr n -1\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n")
            try await client.expectReply("incr n 18446744073709551616\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n")
        }
    }

    @Test func touch() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("touch nope 10\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("set k 0 10 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("touch k 100\r\n", "TOUCHED\r\n")
            try await client.expectReply("mg k t\r\n", "HD t100\r\n")
            clock.advance(seconds: 50)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            try await client.expectReply("touch k 0\r\n", "TOUCHED\r\n")
            clock.advance(seconds: 1000)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func flushAllNow() async throws {
        try await withClient { client, _, _ async throws in
            for index in 0..<20 {
                try await client.expectReply("set k\(index) 0 0 1\r\nx\r\n", "STORED\r\n")
            }
            try await client.expectReply("flush_all\r\n", "OK\r\n")
            try await client.expectReply("get k0 k7 k19\r\n", "END\r\n")
            #expect(try await client.stats()["curr_items"] == "0")
            // The store is usable afterwards.
            try await client.expectReply("set k0 0 0 1\r\ny\r\n", "STORED\r\n")
            try await client.expectReply("flush_all 0\r\n", "OK\r\n")
            try await client.expectReply("get k0\r\n", "END\r\n")
        }
    }

    @Test func delayedFlushAllTakesEffectWhenItsTimeComes() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set early 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("set other 0 0 1\r\ny\r\n", "STORED\r\n")
            try await client.expectReply("flush_all 1\r\n", "OK\r\n")
            // The delay is real time (the flush is scheduled on an event loop).
            let gone = try await eventually(timeout: .seconds(10), every: .milliseconds(50)) {
                try await client.exchange("get early other\r\n") == "END\r\n"
            }
            #expect(gone, "a 1 s delayed flush_all had not emptied the store after 10 s")
            try await client.expectReply("set after 0 0 1\r\nz\r\n", "STORED\r\n")
            try await client.expectReply("get after\r\n", "VALUE after 0 1\r\nz\r\nEND\r\n")
        }
    }

    @Test func delayedFlushAllHasNotHappenedYet() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("flush_all 30\r\n", "OK\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            // A newer immediate flush replaces the pending one.
            try await client.expectReply("flush_all\r\n", "OK\r\n")
            try await client.expectReply("get k\r\n", "END\r\n")
        }
    }

    @Test func versionAndVerbosity() async throws {
        try await withClient { client, _, _ async throws in
            let version = try await client.exchange("version\r\n")
            #expect(version.hasPrefix("VERSION 1.6."))
            #expect(version.hasSuffix("\r\n"))
            #expect(version.split(separator: "\r\n").count == 1)

            try await client.expectReply("verbosity 1\r\n", "OK\r\n")
            #expect(try await client.stats("settings")["verbosity"] == "1")
            try await client.expectReply("verbosity 0\r\n", "OK\r\n")
            #expect(try await client.stats("settings")["verbosity"] == "0")
        }
    }

    @Test func quitClosesAfterEarlierReplies() async throws {
        try await withServer { server, _ async throws in
            let client = try TestClient(port: server.port)
            defer { client.close() }
            try await client.send("set k 0 0 1\r\nx\r\nget k\r\nquit\r\nget k\r\n")
            let received = String(decoding: try await client.readUntilClosed(), as: UTF8.self)
            #expect(received == "STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\n")

            // The server is fine; the item is there.
            let other = try TestClient(port: server.port)
            defer { other.close() }
            try await other.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }
}
