import SessionStore
import TandemServer
import Testing

/// Requests the client got wrong: each gets its error, and the connection
/// keeps working (every case is followed by a good command).
@Suite struct BadInputTests {
    @Test func unknownCommands() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("bogus\r\n", "ERROR\r\n")
            try await client.expectReply("GET k\r\n", "ERROR\r\n")
            try await client.expectReply("\r\n", "ERROR\r\n")
            try await client.expectReply("get\r\n", "ERROR\r\n")
            try await client.expectReply("set k 0 0\r\n", "ERROR\r\n")
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func malformedNumbers() async throws {
        try await withClient { client, _, _ async throws in
            let bad = "CLIENT_ERROR bad command line format\r\n"
            // Bad flags or exptime: the length is known, so the data block is swallowed.
            try await client.expectReply("set k abc 0 1\r\nx\r\n", bad)
            try await client.expectReply("set k -1 0 1\r\nx\r\n", bad)
            try await client.expectReply("set k 4294967296 0 1\r\nx\r\n", bad)
            try await client.expectReply("set k 0 1x 1\r\nx\r\n", bad)
            try await client.expectReply("cas k 0 0 1 abc\r\nx\r\n", bad)
            try await client.expectReply("set k 0 0 1 yesreply\r\nx\r\n", bad)
            // A bad length cannot be framed: only the line is refused.
            try await client.expectReply("set k 0 0 abc\r\n", bad)
            try await client.expectReply("set k 0 0 -1\r\n", bad)
            try await client.expectReply("touch k abc\r\n", bad)
            try await client.expectReply("gat abc k\r\n", bad)
            try await client.expectReply("flush_all abc\r\n", bad)
            try await client.expectReply("incr k 1x\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n")
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
        }
    }

    @Test func keyLengthLimit() async throws {
        try await withClient { client, _, _ async throws in
            let longest = String(repeating: "k", count: 250)
            let tooLong = String(repeating: "k", count: 251)
            let bad = "CLIENT_ERROR bad command line format\r\n"
            try await client.expectReply("set \(longest) 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("get \(longest)\r\n", "VALUE \(longest) 0 1\r\nx\r\nEND\r\n")
            try await client.expectReply("get \(tooLong)\r\n", bad)
            try await client.expectReply("get a \(tooLong) b\r\n", bad)
            try await client.expectReply("delete \(tooLong)\r\n", bad)
            try await client.expectReply("incr \(tooLong) 1\r\n", bad)
            try await client.expectReply("touch \(tooLong) 1\r\n", bad)
            try await client.expectReply("mg \(tooLong) v\r\n", bad)
            // A storage command with a bad key still swallows its data block:
            // the value is not taken for a command.
            let hidden = "get \(longest)"
            try await client.expectReply("set \(tooLong) 0 0 \(hidden.utf8.count)\r\n\(hidden)\r\n", bad)
            try await client.expectReply("ms \(tooLong) 9\r\nversion\r\n\r\n", bad)
            try await client.expectReply("get \(longest)\r\n", "VALUE \(longest) 0 1\r\nx\r\nEND\r\n")
            // Control characters are not allowed in keys either.
            try await client.expectReply("set a\u{7f}b 0 0 1\r\nx\r\n", bad)
            #expect(try await client.exchange("version\r\n").hasPrefix("VERSION "))
        }
    }

    @Test func valueOverTheItemSizeLimit() async throws {
        try await withClient(configure: { $0.store.maxItemSize = 1024 }) { client, _, _ async throws in
            let tooLarge = "SERVER_ERROR object too large for cache\r\n"
            try await client.expectReply("set k 0 0 1024\r\n\(filler(1024))\r\n", "STORED\r\n")
            // The 1025-byte block is swallowed, even if it looks like commands.
            let sneaky = String(decoding: Array(("flush_all\r\n" + filler(1025)).utf8).prefix(1025), as: UTF8.self)
            #expect(sneaky.utf8.count == 1025)
            try await client.expectReply("set k 0 0 1025\r\n\(sneaky)\r\n", tooLarge)
            try await client.expectReply("set other 0 0 100000\r\n\(filler(100_000))\r\n", tooLarge)
            try await client.expectReply("ms other 2000\r\n\(filler(2000))\r\n", tooLarge)
            // As in memcached, a set refused for its size also removes the old value: no stale reads.
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("set k 0 0 1024\r\n\(filler(1024))\r\n", "STORED\r\n")
            // Growing an item past the limit by appending is refused, and leaves it as it was.
            try await client.expectReply("append k 0 0 1\r\nx\r\n", tooLarge)
            try await client.expectReply("get k\r\n", "VALUE k 0 1024\r\n\(filler(1024))\r\nEND\r\n")
            try await client.expectReply("get other\r\n", "END\r\n")
            #expect(try await client.stats()["store_too_large"].flatMap { Int($0) } ?? 0 >= 3)
        }
    }

    @Test func dataBlockWithoutCRLF() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            // Three bytes announced, five sent before the line break.
            try await client.send("set k 0 0 3\r\nabcXY")
            let reply = try await client.exchange("version\r\n")
            #expect(reply.hasPrefix("CLIENT_ERROR bad data chunk\r\nVERSION "))
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            try await client.expectReply("ms k 3\r\nabcXY", "CLIENT_ERROR bad data chunk\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func overlongLineClosesOnlyThatConnection() async throws {
        try await withServer { server, _ async throws in
            let bystander = try TestClient(port: server.port)
            defer { bystander.close() }
            try await bystander.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")

            let offender = try TestClient(port: server.port)
            defer { offender.close() }
            #expect(try await offender.exchange("version\r\n").hasPrefix("VERSION "))
            try await offender.send(String(repeating: "x", count: 2048))
            let leftovers = try await offender.readUntilClosed()
            #expect(leftovers.isEmpty)

            try await bystander.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            let fresh = try TestClient(port: server.port)
            defer { fresh.close() }
            try await fresh.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func lineJustUnderTheLimitIsServed() async throws {
        try await withClient { client, _, _ async throws in
            // 2046 bytes + \r\n = 2048: an unknown command, but a complete line.
            try await client.expectReply(String(repeating: "x", count: 2046) + "\r\n", "ERROR\r\n")
            #expect(try await client.exchange("version\r\n").hasPrefix("VERSION "))
        }
    }

    @Test func longGetLineWithHundredKeys() async throws {
        try await withClient { client, _, _ async throws in
            let keys = (0..<100).map { index in String(format3(index)) + filler(197, seed: index) }
            #expect(keys.allSatisfy { $0.utf8.count == 200 })
            var expected = ""
            for (index, key) in keys.enumerated() where index % 3 == 0 {
                try await client.expectReply("set \(key) \(index) 0 \(index)\r\n\(filler(index))\r\n", "STORED\r\n")
            }
            for (index, key) in keys.enumerated() where index % 3 == 0 {
                expected += "VALUE \(key) \(index) \(index)\r\n\(filler(index))\r\n"
            }
            expected += "END\r\n"
            let line = "get " + keys.joined(separator: " ") + "\r\n"
            #expect(line.utf8.count > 20_000)
            try await client.expectReply(line, expected)
            // The same line sent in small pieces.
            let pieces = stride(from: 0, to: line.utf8.count, by: 1500).map { start in
                Array(line.utf8)[start..<min(start + 1500, line.utf8.count)]
            }
            for piece in pieces { try await client.send(Array(piece)) }
            try await client.expectReply("", expected)
        }
    }

    @Test func multigetOfEighteenThousandKeys() async throws {
        try await withClient { client, _, _ async throws in
            // A ~190 KB line, as memcached answers: every hit, in order, then END.
            let keys = (0..<18_000).map { "session:\($0)" }
            var expected = ""
            for index in stride(from: 0, to: keys.count, by: 1000) {
                try await client.expectReply("set \(keys[index]) \(index) 0 1\r\nv\r\n", "STORED\r\n")
                expected += "VALUE \(keys[index]) \(index) 1\r\nv\r\n"
            }
            let line = keys.joined(separator: " ")
            #expect(line.utf8.count > 180_000)
            try await client.expectReply("get \(line)\r\n", expected + "END\r\n")
            try await client.expectReply("gat 100 \(line)\r\n", expected + "END\r\n")
            let gets = try await client.exchange("gets \(line)\r\n")
            #expect(gets.hasSuffix("END\r\n") && gets.components(separatedBy: "VALUE ").count == 19)
            try await client.expectReply("mg session:1000 t\r\n", "HD t100\r\n")
        }
    }

    @Test func multigetOverTheBoundIsAnsweredNotCut() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            // Past the bound (MemcacheDecoderLimits.defaultMaxRetrievalLineLength,
            // 4 MiB) Tandem answers CLIENT_ERROR and drops the rest of the line.
            let keys = String(repeating: "k ", count: (4 << 20) / 2 + 1000)
            try await client.expectReply("get \(keys)\r\n", "CLIENT_ERROR line too long\r\n")
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func httpRequestClosesWithoutAReply() async throws {
        try await withServer { server, _ async throws in
            for request in ["GET / HTTP/1.0\r\n", "PUT /a/b HTTP/1.1\r\n", "DELETE HTTP/1.1\r\n", "POST /x HTTP/1.1\r\nHost: x\r\n\r\n"] {
                let client = try TestClient(port: server.port)
                defer { client.close() }
                try await client.send(request)
                let sent = try await client.readUntilClosed()
                #expect(sent.isEmpty, "\(request.debugDescription) got \(String(decoding: sent, as: UTF8.self).debugDescription)")
            }
            // Replies owed before it are still sent.
            let client = try TestClient(port: server.port)
            defer { client.close() }
            try await client.send("version\r\nGET / HTTP/1.1\r\nversion\r\n")
            let sent = String(decoding: try await client.readUntilClosed(), as: UTF8.self)
            #expect(sent.hasPrefix("VERSION ") && sent.components(separatedBy: "VERSION").count == 2, "\(sent.debugDescription)")
            // Lines that memcached answers stay answered.
            let other = try TestClient(port: server.port)
            defer { other.close() }
            try await other.expectReply("get / HTTP/1.1\r\n", "END\r\n")
            try await other.expectReply("GET / http/1.1\r\n", "ERROR\r\n")
            try await other.expectReply("gfoo HTTP/1.1\r\n", "ERROR\r\n")
        }
    }

    /// A zero-padded three-digit prefix, so the 100 keys are distinct.
    private func format3(_ value: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: 3 - digits.count) + digits
    }

    @Test func commandsSplitAtEveryByteBoundary() async throws {
        try await withClient { client, _, _ async throws in
            try await client.sendByteByByte(
                "set k 3 0 5\r\nhe\r\no\r\nget k nope\r\nincr n 1\r\nms m 2 T0\r\nab\r\nmg m v\r\nmn\r\n"
            )
            #expect(
                try await client.read(until: "MN\r\n")
                    == "STORED\r\nVALUE k 3 5\r\nhe\r\no\r\nEND\r\nNOT_FOUND\r\nHD\r\nVA 2\r\nab\r\nMN\r\n"
            )
        }
    }
}
