import SessionStore
import TandemServer
import Testing

/// Expiry, driven by the injected `ManualClock` (no sleeping).
@Suite struct ExpiryTests {
    @Test func zeroExptimeNeverExpires() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set k 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("mg k t\r\n", "HD t-1\r\n")
            clock.advance(seconds: 10 * 365 * 24 * 3600)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
        }
    }

    @Test func relativeExptimeExpiresWhenTheClockPassesIt() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set k 0 10 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("mg k t\r\n", "HD t10\r\n")
            clock.advance(seconds: 9)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            try await client.expectReply("mg k t\r\n", "HD t1\r\n")
            clock.advance(millis: 999)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            clock.advance(millis: 1)
            try await client.expectReply("get k\r\n", "END\r\n")
            try await client.expectReply("mg k v\r\n", "EN\r\n")
            // An expired key is free for add.
            try await client.expectReply("add k 0 0 1\r\ny\r\n", "STORED\r\n")
        }
    }

    @Test func exactlyThirtyDaysIsStillRelative() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set k 0 2592000 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("mg k t\r\n", "HD t2592000\r\n")
            clock.advance(seconds: 2_592_000)
            try await client.expectReply("get k\r\n", "END\r\n")
        }
    }

    @Test func absoluteUnixTimeExptime() async throws {
        try await withClient { client, _, clock async throws in
            let now = clock.nowMillis() / 1000
            try await client.expectReply("set k 0 \(now + 100) 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("mg k t\r\n", "HD t100\r\n")
            clock.advance(seconds: 99)
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n")
            clock.advance(seconds: 1)
            try await client.expectReply("get k\r\n", "END\r\n")

            // An absolute time already in the past (just over 30 days after the epoch).
            try await client.expectReply("set old 0 2592001 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("get old\r\n", "END\r\n")
            // Absolute times also work for touch and gat.
            try await client.expectReply("set t 0 0 1\r\nx\r\n", "STORED\r\n")
            let later = clock.nowMillis() / 1000 + 50
            try await client.expectReply("touch t \(later)\r\n", "TOUCHED\r\n")
            try await client.expectReply("mg t t\r\n", "HD t50\r\n")
            clock.advance(seconds: 50)
            try await client.expectReply("get t\r\n", "END\r\n")
        }
    }

    @Test func negativeExptimeStoresButIsImmediatelyInvisible() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("set k 0 -1 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("get k\r\n", "END\r\n")
            // Setting a live key with a negative exptime removes it.
            try await client.expectReply("set live 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("set live 0 -1000 1\r\ny\r\n", "STORED\r\n")
            try await client.expectReply("get live\r\n", "END\r\n")
            // touch and gat with a negative exptime expire the item.
            try await client.expectReply("set t 0 0 1\r\nx\r\nset g 0 0 1\r\nx\r\n", "STORED\r\nSTORED\r\n")
            try await client.expectReply("touch t -1\r\n", "TOUCHED\r\n")
            try await client.expectReply("gat -1 g\r\n", "VALUE g 0 1\r\nx\r\nEND\r\n")
            try await client.expectReply("get t g\r\n", "END\r\n")
        }
    }

    /// msm checks whether a session exists with `add`; a live session must come
    /// out of it exactly as it went in.
    @Test func addOnALiveKeyLeavesValueCasAndTTLUntouched() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set s 9 60 5\r\nhello\r\n", "STORED\r\n")
            clock.advance(seconds: 5)
            let before = try await client.exchange("mg s t c v f\r\n")
            #expect(before.hasPrefix("VA 5 t55 c"))
            #expect(before.hasSuffix(" f9\r\nhello\r\n"))

            try await client.expectReply("add s 0 0 7\r\nanother\r\n", "NOT_STORED\r\n")
            try await client.expectReply("add s 0 0 7 noreply\r\nanother\r\n", "")
            try await client.expectReply("ms s 7 ME T0\r\nanother\r\n", "NS\r\n")
            let after = try await client.exchange("mg s t c v f\r\n")
            #expect(after == before)

            // And it still expires at its original deadline.
            clock.advance(seconds: 54)
            try await client.expectReply("get s\r\n", "VALUE s 9 5\r\nhello\r\nEND\r\n")
            clock.advance(seconds: 1)
            try await client.expectReply("get s\r\n", "END\r\n")
        }
    }

    @Test func appendKeepsTheDeadline() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("set k 0 10 1\r\na\r\n", "STORED\r\n")
            try await client.expectReply("append k 0 0 1\r\nb\r\n", "STORED\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 2 t10\r\nab\r\n")
            clock.advance(seconds: 10)
            try await client.expectReply("get k\r\n", "END\r\n")
        }
    }

    @Test func expiredItemsAreReclaimedInTheBackground() async throws {
        try await withClient { client, _, clock async throws in
            for index in 0..<50 {
                try await client.expectReply("set k\(index) 0 5 1\r\nx\r\n", "STORED\r\n")
            }
            #expect(try await client.stats()["curr_items"] == "50")
            clock.advance(seconds: 6)
            // Nobody reads them; the reclaimer (every 250 ms) removes them.
            let reclaimed = try await eventually(timeout: .seconds(10), every: .milliseconds(50)) {
                try await client.stats()["curr_items"] == "0"
            }
            #expect(reclaimed)
        }
    }
}
