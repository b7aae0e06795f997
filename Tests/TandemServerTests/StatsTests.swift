import SessionStore
import TandemServer
import Testing

/// `stats` and its groups: well-formed, complete, and counting.
@Suite struct StatsTests {
    /// Checks that `reply` is `STAT <name> <value>` lines closed by `END`, and returns name → value.
    static func parseStatsBlock(_ reply: String, sourceLocation: SourceLocation = #_sourceLocation) -> [String: String] {
        #expect(reply.hasSuffix("END\r\n"), "stats reply does not end with END: \(reply.debugDescription)", sourceLocation: sourceLocation)
        var lines = reply.components(separatedBy: "\r\n")
        #expect(lines.last == "", sourceLocation: sourceLocation)
        lines.removeLast()
        #expect(lines.last == "END", sourceLocation: sourceLocation)
        lines.removeLast()
        var result: [String: String] = [:]
        for line in lines {
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            #expect(parts.count == 3 && parts[0] == "STAT" && !parts[1].isEmpty && !parts[2].isEmpty,
                    "malformed stats line \(line.debugDescription)", sourceLocation: sourceLocation)
            #expect(!line.contains("\n") && !line.contains("\r"), sourceLocation: sourceLocation)
            guard parts.count == 3 else { continue }
            #expect(result[String(parts[1])] == nil, "duplicate stat \(parts[1])", sourceLocation: sourceLocation)
            result[String(parts[1])] = String(parts[2])
        }
        return result
    }

    @Test func generalStatsHaveMemcachedsFieldsAndCountersMove() async throws {
        try await withClient { client, server, clock async throws in
            let before = Self.parseStatsBlock(try await client.exchange("stats\r\n"))
            let required = [
                "pid", "uptime", "time", "version", "curr_connections", "total_connections", "cmd_get", "cmd_set",
                "cmd_touch", "get_hits", "get_misses", "curr_items", "total_items", "bytes", "limit_maxbytes",
                "evictions", "threads",
            ]
            for name in required {
                #expect(before[name] != nil, "stats lacks \(name)")
            }
            for name in required where name != "version" {
                #expect(before[name].flatMap { Int64($0) } != nil, "stat \(name) is not a number: \(before[name] ?? "nil")")
            }
            #expect(before["version"]?.hasPrefix("1.6.") == true)
            #expect(before["time"] == "\(clock.nowMillis() / 1000)")
            #expect(before["limit_maxbytes"] == "\(64 << 20)")
            #expect(before["threads"] == "2")
            #expect(before["curr_items"] == "0")
            #expect(Int(before["curr_connections"] ?? "") ?? 0 >= 1)

            try await client.expectReply("set a 0 0 3\r\nabc\r\nset b 0 10 3\r\ndef\r\n", "STORED\r\nSTORED\r\n")
            try await client.expectReply("get a b nope\r\n", "VALUE a 0 3\r\nabc\r\nVALUE b 0 3\r\ndef\r\nEND\r\n")
            try await client.expectReply("touch a 100\r\ntouch nope 1\r\n", "TOUCHED\r\nNOT_FOUND\r\n")
            clock.advance(seconds: 7)
            let other = try TestClient(port: server.port)
            defer { other.close() }
            #expect(try await other.exchange("version\r\n").hasPrefix("VERSION "))

            let after = Self.parseStatsBlock(try await client.exchange("stats\r\n"))
            func delta(_ name: String) -> Int64 {
                (Int64(after[name] ?? "") ?? -1_000_000) - (Int64(before[name] ?? "") ?? 0)
            }
            #expect(delta("cmd_get") == 3)
            #expect(delta("get_hits") == 2)
            #expect(delta("get_misses") == 1)
            #expect(delta("cmd_set") == 2)
            #expect(delta("cmd_touch") == 2)
            #expect(delta("curr_items") == 2)
            #expect(delta("total_items") == 2)
            #expect(delta("total_connections") == 1)
            #expect(delta("curr_connections") == 1)
            #expect(delta("uptime") == 7)
            #expect(delta("time") == 7)
            #expect(Int(after["bytes"] ?? "") ?? 0 >= 6)
            #expect(after["evictions"] == "0")
        }
    }

    @Test("a compare-and-set counts its hit, bad value or miss in every protocol: text, meta and binary")
    func casCountersInEveryProtocol() async throws {
        try await withClient { client, server, _ async throws in
            try await client.expectReply("set k 0 0 1\r\nv\r\n", "STORED\r\n")
            let binary = try TestClient(port: server.port)
            defer { binary.close() }
            /// A binary SET of `key` carrying `cas`; returns the response's status.
            func binarySet(_ key: String, cas: UInt64) throws -> UInt16 {
                let key = Array(key.utf8), value = Array("w".utf8)
                var request: [UInt8] = [0x80, 0x01, 0, UInt8(key.count), 8, 0, 0, 0]
                request += withUnsafeBytes(of: UInt32(8 + key.count + value.count).bigEndian, Array.init)
                request += [0, 0, 0, 0] + withUnsafeBytes(of: cas.bigEndian, Array.init)
                request += [UInt8](repeating: 0, count: 8) + key + value
                try binary.send(request)
                let header = try binary.readBytes(count: 24)
                let bodyLength = Int(header[8]) << 24 | Int(header[9]) << 16 | Int(header[10]) << 8 | Int(header[11])
                _ = try binary.readBytes(count: bodyLength)
                return UInt16(header[6]) << 8 | UInt16(header[7])
            }
            let cas = try await client.cas("k")
            #expect(try binarySet("k", cas: cas) == 0)
            #expect(try binarySet("k", cas: cas) == 0x0002)  // key exists: the stamp moved
            #expect(try binarySet("missing", cas: 5) == 0x0001)  // not found
            var stats = try await client.stats()
            #expect(stats["cas_hits"] == "1" && stats["cas_badval"] == "1" && stats["cas_misses"] == "1")
            try await client.expectReply("ms k 1 C\(try await client.cas("k"))\r\nx\r\n", "HD\r\n")
            try await client.expectReply("ms k 1 C1\r\nx\r\n", "EX\r\n")
            try await client.expectReply("ms missing 1 C1\r\nx\r\n", "NF\r\n")
            try await client.expectReply("cas k 0 0 1 1\r\nx\r\n", "EXISTS\r\n")
            stats = try await client.stats()
            #expect(stats["cas_hits"] == "2" && stats["cas_badval"] == "3" && stats["cas_misses"] == "2")
        }
    }

    @Test func statsSettings() async throws {
        try await withClient(configure: { $0.maxConnections = 77 }) { client, server, _ async throws in
            let settings = Self.parseStatsBlock(try await client.exchange("stats settings\r\n"))
            #expect(settings["maxbytes"] == "\(64 << 20)")
            #expect(settings["maxconns"] == "77")
            #expect(settings["tcpport"] == "\(server.port)")
            #expect(settings["num_threads"] == "2")
            #expect(settings["item_size_max"] == "\(1 << 20)")
            #expect(settings["evictions"] == "on")
            #expect(settings["cas_enabled"] == "yes")
        }
    }

    @Test func statsItemsAndSlabs() async throws {
        try await withClient { client, _, _ async throws in
            // Empty store: still well-formed.
            _ = Self.parseStatsBlock(try await client.exchange("stats items\r\n"))
            _ = Self.parseStatsBlock(try await client.exchange("stats slabs\r\n"))

            try await client.expectReply("set a 0 0 3\r\nabc\r\nset b 0 0 3\r\ndef\r\n", "STORED\r\nSTORED\r\n")
            let items = Self.parseStatsBlock(try await client.exchange("stats items\r\n"))
            #expect(items["items:1:number"] == "2")
            for (name, value) in items {
                #expect(name.hasPrefix("items:"), "unexpected stats items line \(name)")
                #expect(Int64(value) != nil, "stats items \(name) is not a number: \(value)")
            }
            let slabs = Self.parseStatsBlock(try await client.exchange("stats slabs\r\n"))
            #expect(slabs["active_slabs"] == "1")
            #expect(slabs["total_malloced"] != nil)
            for (name, value) in slabs {
                #expect(Int64(value) != nil, "stats slabs \(name) is not a number: \(value)")
            }
        }
    }

    @Test func unknownStatsGroupAndReset() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("stats nonsense\r\n", "ERROR\r\n")
            try await client.expectReply("get nope\r\n", "END\r\n")
            #expect(Int(try await client.stats()["get_misses"] ?? "") ?? 0 >= 1)
            try await client.expectReply("stats reset\r\n", "RESET\r\n")
            #expect(try await client.stats()["get_misses"] == "0")
        }
    }
}
