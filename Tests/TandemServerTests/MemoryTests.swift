import SessionStore
import TandemServer
import Testing

/// The memory limit: LRU eviction by default, refusal with evictions off.
@Suite struct MemoryTests {
    static func key(_ index: Int) -> String {
        let digits = String(index)
        return "key" + String(repeating: "0", count: 5 - digits.count) + digits
    }

    @Test func fullStoreEvictsLeastRecentlyUsed() async throws {
        let configure: (inout ServerConfiguration) -> Void = {
            $0.store = StoreConfiguration(memoryLimit: 1 << 20, evictionsEnabled: true, shardCount: 1)
        }
        try await withClient(configure: configure) { client, _, _ async throws in
            let value = filler(1000)
            try await client.expectReply("set hot 0 0 3\r\nhot\r\n", "STORED\r\n")
            // About three times what fits; the hot key is read every 50 writes.
            let total = 3000
            var request = ""
            var expected = ""
            for index in 0..<total {
                request += "set \(Self.key(index)) 0 0 1000\r\n\(value)\r\n"
                expected += "STORED\r\n"
                if index % 50 == 49 {
                    request += "get hot\r\n"
                    expected += "VALUE hot 0 3\r\nhot\r\nEND\r\n"
                }
            }
            try await client.expectReply(request, expected)

            let stats = try await client.stats()
            let evictions = Int(stats["evictions"] ?? "") ?? 0
            let items = Int(stats["curr_items"] ?? "") ?? 0
            #expect(evictions > 0)
            #expect(items > 100 && items < total)
            #expect(evictions + items == total + 1)
            #expect(Int(stats["bytes"] ?? "") ?? .max <= 1 << 20)

            // The earliest keys are gone, the latest are there, and the key read
            // all along survived although it was written first.
            try await client.expectReply("get \(Self.key(0)) \(Self.key(1)) \(Self.key(100))\r\n", "END\r\n")
            try await client.expectReply("get \(Self.key(total - 1))\r\n", "VALUE \(Self.key(total - 1)) 0 1000\r\n\(value)\r\nEND\r\n")
            try await client.expectReply("get \(Self.key(total - 50))\r\n", "VALUE \(Self.key(total - 50)) 0 1000\r\n\(value)\r\nEND\r\n")
            try await client.expectReply("get hot\r\n", "VALUE hot 0 3\r\nhot\r\nEND\r\n")
        }
    }

    @Test func readingAnOldKeyProtectsItFromEviction() async throws {
        let configure: (inout ServerConfiguration) -> Void = {
            $0.store = StoreConfiguration(memoryLimit: 1 << 20, evictionsEnabled: true, shardCount: 1)
        }
        try await withClient(configure: configure) { client, _, _ async throws in
            let value = filler(1000)
            // Fill the store exactly up to the point where evictions begin.
            var index = 0
            while try await client.stats()["evictions"] == "0" {
                var batch = ""
                for _ in 0..<100 {
                    batch += "set \(Self.key(index)) 0 0 1000 noreply\r\n\(value)\r\n"
                    index += 1
                }
                try await client.expectReply(batch, "")
            }
            let firstLive = index - (Int(try await client.stats()["curr_items"] ?? "") ?? 0)
            // The oldest live key is read (with mg, which bumps like get), then
            // more keys push out everything older than the read.
            try await client.expectReply("mg \(Self.key(firstLive)) v\r\n", "VA 1000\r\n\(value)\r\n")
            var batch = ""
            for _ in 0..<200 {
                batch += "set \(Self.key(index)) 0 0 1000 noreply\r\n\(value)\r\n"
                index += 1
            }
            try await client.expectReply(batch, "")
            try await client.expectReply("mg \(Self.key(firstLive + 1)) v\r\n", "EN\r\n")
            try await client.expectReply("mg \(Self.key(firstLive)) s\r\n", "HD s1000\r\n")
        }
    }

    @Test func fullStoreWithoutEvictionsRefusesWrites() async throws {
        let configure: (inout ServerConfiguration) -> Void = {
            $0.store = StoreConfiguration(memoryLimit: 1 << 20, evictionsEnabled: false, shardCount: 1)
        }
        try await withClient(configure: configure) { client, _, _ async throws in
            let value = filler(1000)
            var request = ""
            for index in 0..<1500 {
                request += "set \(Self.key(index)) 0 0 1000\r\n\(value)\r\n"
            }
            let replies = try await client.exchange(request).components(separatedBy: "\r\n").dropLast()
            #expect(replies.count == 1500)
            let stored = replies.prefix { $0 == "STORED" }.count
            #expect(stored > 100 && stored < 1500)
            // Once full, every further write is refused: nothing was evicted to make room.
            #expect(replies.dropFirst(stored).allSatisfy { $0 == "SERVER_ERROR out of memory storing object" })
            let stats = try await client.stats()
            #expect(stats["evictions"] == "0")
            #expect(stats["curr_items"] == "\(stored)")
            try await client.expectReply("get \(Self.key(0))\r\n", "VALUE \(Self.key(0)) 0 1000\r\n\(value)\r\nEND\r\n")
            try await client.expectReply("get \(Self.key(stored))\r\n", "END\r\n")
            // With noreply the error is not sent either (memcached 1.6.18 -M does the same); ms reports it.
            try await client.expectReply("set extra 0 0 1000 noreply\r\n\(value)\r\n", "")
            try await client.expectReply("ms extra 1000\r\n\(value)\r\n", "SERVER_ERROR out of memory storing object\r\n")
            // Freeing room makes writes possible again.
            try await client.expectReply("delete \(Self.key(0))\r\n", "DELETED\r\n")
            try await client.expectReply("set extra 0 0 1000\r\n\(value)\r\n", "STORED\r\n")
        }
    }
}
