import SessionStore
import TandemServer
import Testing

/// The meta protocol (`mg`, `ms`, `md`, `ma`, `mn`, `me`), byte for byte as
/// memcached 1.6 answers.
@Suite struct MetaCommandTests {
    // MARK: mg

    @Test func metaGetFlags() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 2 F7\r\nhi\r\n", "HD\r\n")
            let cas = try await client.cas("k")
            try await client.expectReply("mg k\r\n", "HD\r\n")
            try await client.expectReply("mg k v\r\n", "VA 2\r\nhi\r\n")
            try await client.expectReply("mg k s v f t\r\n", "VA 2 s2 f7 t-1\r\nhi\r\n")
            try await client.expectReply("mg k c\r\n", "HD c\(cas)\r\n")
            try await client.expectReply("mg k k O123 v\r\n", "VA 2 kk O123\r\nhi\r\n")
            // Return flags come back in request order.
            try await client.expectReply("mg k O9 f k c s\r\n", "HD O9 f7 kk c\(cas) s2\r\n")
            // q only silences a miss.
            try await client.expectReply("mg k q v\r\n", "VA 2\r\nhi\r\n")
            // T sets a new TTL (like gat); t reports it.
            try await client.expectReply("mg k T30 t\r\n", "HD t30\r\n")
            try await client.expectReply("mg k t\r\n", "HD t30\r\n")
            // Proxy hints P and L are accepted and ignored.
            try await client.expectReply("mg k v Pfoo L\r\n", "VA 2\r\nhi\r\n")
        }
    }

    @Test func metaGetMisses() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("mg nope v\r\n", "EN\r\n")
            try await client.expectReply("mg nope\r\n", "EN\r\n")
            // A miss still echoes the opaque and the key, so pipelines can match it.
            try await client.expectReply("mg nope v O5 k\r\n", "EN O5 knope\r\n")
            // Quiet misses say nothing at all.
            try await client.expectReply("mg nope v q\r\n", "")
            try await client.expectReply("mg nope q k O7\r\nmg nope2 q\r\n", "")
            try await client.expectReply("ms hit 1\r\nx\r\n", "HD\r\n")
            try await client.expectReply("mg a q v\r\nmg hit q v k\r\nmg b q v\r\n", "VA 1 khit\r\nx\r\n")
        }
    }

    @Test func metaGetHitBeforeAndLastAccess() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("ms k 1\r\nx\r\n", "HD\r\n")
            // h and l report the state before this request.
            try await client.expectReply("mg k h l\r\n", "HD h0 l0\r\n")
            clock.advance(seconds: 3)
            try await client.expectReply("mg k h l\r\n", "HD h1 l3\r\n")
            try await client.expectReply("mg k h l\r\n", "HD h1 l0\r\n")
            // u reads without bumping: the access time stays where it was.
            clock.advance(seconds: 2)
            try await client.expectReply("mg k u h l\r\n", "HD h1 l2\r\n")
            try await client.expectReply("mg k u h l\r\n", "HD h1 l2\r\n")
            try await client.expectReply("mg k l\r\n", "HD l2\r\n")
            try await client.expectReply("mg k l\r\n", "HD l0\r\n")
            // A fresh set resets "hit before".
            try await client.expectReply("ms k 1\r\ny\r\n", "HD\r\n")
            try await client.expectReply("mg k h\r\n", "HD h0\r\n")
        }
    }

    @Test func metaGetVivifyAndRecache() async throws {
        try await withClient { client, _, clock async throws in
            // N on a miss creates an empty item and hands out the win token once.
            try await client.expectReply("mg v N30 v t s\r\n", "VA 0 t30 s0 W\r\n\r\n")
            try await client.expectReply("mg v N30 v\r\n", "VA 0 Z\r\n\r\n")
            try await client.expectReply("mg v v\r\n", "VA 0 Z\r\n\r\n")
            // The winner fills it in; the token is reset.
            try await client.expectReply("ms v 4 T30\r\ndata\r\n", "HD\r\n")
            try await client.expectReply("mg v v\r\n", "VA 4\r\ndata\r\n")
            // R: win when fewer seconds than asked remain.
            try await client.expectReply("mg v R10 t\r\n", "HD t30\r\n")
            clock.advance(seconds: 25)
            try await client.expectReply("mg v R10 t\r\n", "HD t5 W\r\n")
            try await client.expectReply("mg v R10 t\r\n", "HD t5 Z\r\n")
        }
    }

    @Test func metaGetCasCheckOmitsAnUnchangedValue() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 3\r\nabc\r\n", "HD\r\n")
            let cas = try await client.cas("k")
            // C with the current CAS: the client's copy is fresh, no value is sent.
            try await client.expectReply("mg k C\(cas) v\r\n", "HD\r\n")
            try await client.expectReply("mg k C\(cas &+ 1000) v\r\n", "VA 3\r\nabc\r\n")
        }
    }

    // MARK: ms

    @Test func metaSetModes() async throws {
        try await withClient { client, _, _ async throws in
            // E: add.
            try await client.expectReply("ms e 1 ME\r\nA\r\n", "HD\r\n")
            try await client.expectReply("ms e 1 ME\r\nB\r\n", "NS\r\n")
            try await client.expectReply("mg e v\r\n", "VA 1\r\nA\r\n")
            // R: replace.
            try await client.expectReply("ms r 1 MR\r\nA\r\n", "NS\r\n")
            try await client.expectReply("mg r v\r\n", "EN\r\n")
            try await client.expectReply("ms r 1 MS\r\nA\r\n", "HD\r\n")
            try await client.expectReply("ms r 1 MR\r\nB\r\n", "HD\r\n")
            try await client.expectReply("mg r v\r\n", "VA 1\r\nB\r\n")
            // A and P: append and prepend, NS on a miss unless N vivifies.
            try await client.expectReply("ms a 1 MA\r\nZ\r\n", "NS\r\n")
            try await client.expectReply("ms a 1 MP\r\nZ\r\n", "NS\r\n")
            try await client.expectReply("ms a 1 F3\r\nm\r\n", "HD\r\n")
            try await client.expectReply("ms a 2 MA s\r\nyz\r\n", "HD s3\r\n")
            try await client.expectReply("ms a 2 MP\r\nkl\r\n", "HD\r\n")
            try await client.expectReply("mg a v f\r\n", "VA 5 f3\r\nklmyz\r\n")
            try await client.expectReply("ms viv 1 MA N30\r\nQ\r\n", "HD\r\n")
            try await client.expectReply("mg viv v t\r\n", "VA 1 t30\r\nQ\r\n")
            // S: set, the default.
            try await client.expectReply("ms s 1 MS\r\nS\r\n", "HD\r\n")
            try await client.expectReply("ms s 1\r\nT\r\n", "HD\r\n")
            try await client.expectReply("mg s v\r\n", "VA 1\r\nT\r\n")
            // An unknown mode is an error, and the data block is not taken for a command.
            try await client.expectReply("ms s 1 MX\r\nV\r\n", "CLIENT_ERROR invalid mode for ms M token\r\n")
            try await client.expectReply("mg s v\r\n", "VA 1\r\nT\r\n")
        }
    }

    @Test func metaSetFlagsTtlAndReturnValues() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("ms f 1 F42 T60\r\nx\r\n", "HD\r\n")
            try await client.expectReply("get f\r\n", "VALUE f 42 1\r\nx\r\nEND\r\n")
            try await client.expectReply("mg f t f\r\n", "HD t60 f42\r\n")
            clock.advance(seconds: 60)
            try await client.expectReply("mg f v\r\n", "EN\r\n")

            let reply = try await client.exchange("ms kk 3 k O1 s c\r\nabc\r\n")
            let cas = try await client.cas("kk")
            #expect(reply == "HD kkk O1 s3 c\(cas)\r\n")
            // Without F the flags are 0.
            try await client.expectReply("ms kk 1\r\nx\r\n", "HD\r\n")
            try await client.expectReply("get kk\r\n", "VALUE kk 0 1\r\nx\r\nEND\r\n")
            // A zero-length value.
            try await client.expectReply("ms z 0\r\n\r\n", "HD\r\n")
            try await client.expectReply("mg z v s\r\n", "VA 0 s0\r\n\r\n")
        }
    }

    @Test func metaSetQuietOnlyHidesSuccess() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms q 1 q\r\nx\r\n", "")
            try await client.expectReply("ms q 1 q ME\r\ny\r\n", "NS\r\n")
            let cas = try await client.cas("q")
            try await client.expectReply("ms q 1 q C\(cas &+ 1000) O4\r\ny\r\n", "EX O4\r\n")
            try await client.expectReply("ms nope 1 q C1\r\ny\r\n", "NF\r\n")
            try await client.expectReply("mg q v\r\n", "VA 1\r\nx\r\n")
        }
    }

    @Test func metaSetCompareAndSwap() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 2 C123\r\nv0\r\n", "NF\r\n")
            try await client.expectReply("ms k 2\r\nv1\r\n", "HD\r\n")
            let cas = try await client.cas("k")
            try await client.expectReply("ms k 2 C\(cas &+ 1)\r\nv2\r\n", "EX\r\n")
            try await client.expectReply("mg k v\r\n", "VA 2\r\nv1\r\n")
            let stored = try await client.exchange("ms k 2 C\(cas) c\r\nv3\r\n")
            let newCas = try await client.cas("k")
            #expect(stored == "HD c\(newCas)\r\n")
            #expect(newCas != cas)
            try await client.expectReply("mg k v\r\n", "VA 2\r\nv3\r\n")
            // E sets an explicit CAS.
            try await client.expectReply("ms k 2 E987654321 c\r\nv4\r\n", "HD c987654321\r\n")
            try await client.expectReply("gets k\r\n", "VALUE k 0 2 987654321\r\nv4\r\nEND\r\n")
            // The text protocol's cas sees it.
            try await client.expectReply("cas k 0 0 2 987654321\r\nv5\r\n", "STORED\r\n")
        }
    }

    @Test func metaSetInvalidateWithAnOlderCasMarksStale() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 2 E100\r\nv1\r\n", "HD\r\n")
            // A newer CAS than the item's is plainly EX, with or without I.
            try await client.expectReply("ms k 2 C200 I\r\nv2\r\n", "EX\r\n")
            // An older CAS with I is accepted, but the item is stale.
            try await client.expectReply("ms k 2 C50 I\r\nv2\r\n", "HD\r\n")
            try await client.expectReply("mg k v\r\n", "VA 2 X W\r\nv2\r\n")
            try await client.expectReply("mg k v\r\n", "VA 2 Z X\r\nv2\r\n")
        }
    }

    /// memcached 1.6.18: `c` returns the CAS of a value it stored; when `ms`
    /// stores nothing it answers `c0`, among the flags in request order.
    @Test func metaSetFailureReturnsCasZero() async throws {
        try await withClient { client, _, _ async throws in
            let stored = try await client.exchange("ms k 1 c T100\r\na\r\n")
            let cas = try await client.cas("k")
            #expect(stored == "HD c\(cas)\r\n")
            try await client.expectReply("ms k 1 c C\(cas &+ 1)\r\nb\r\n", "EX c0\r\n")
            try await client.expectReply("ms k 1 c C\(cas &+ 1) q\r\nb\r\n", "EX c0\r\n")
            try await client.expectReply("ms k 1 c k O123 C\(cas &+ 1)\r\nb\r\n", "EX c0 kk O123\r\n")
            // Return flags that need a stored item (s) are left out.
            try await client.expectReply("ms k 1 c s k C\(cas &+ 1)\r\nb\r\n", "EX c0 kk\r\n")
            try await client.expectReply("ms nokey 1 c C1\r\nb\r\n", "NF c0\r\n")
            try await client.expectReply("ms k 1 ME k c O1\r\nb\r\n", "NS kk c0 O1\r\n")
            try await client.expectReply("ms nokey 1 MR c\r\nb\r\n", "NS c0\r\n")
            // The other meta commands return no CAS on failure.
            try await client.expectReply("md nokey k\r\n", "NF knokey\r\n")
            try await client.expectReply("mg nokey c k\r\n", "EN knokey\r\n")
            try await client.expectReply("mg k v\r\n", "VA 1\r\na\r\n")
        }
    }

    /// memcached 1.6.18: `ms … I` with a CAS older than the item's stores the
    /// value but keeps the item stale, its TTL, and who holds the win token.
    @Test func metaSetInvalidateKeepsTtlAndToken() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 1 T100\r\na\r\n", "HD\r\n")
            let old = try await client.cas("k")
            try await client.expectReply("md k I T30\r\n", "HD\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 1 t30 X W\r\na\r\n")
            // A late fill with the pre-invalidation CAS: stored, still stale, TTL unchanged, token not handed out again.
            try await client.expectReply("ms k 2 I C\(old) T999 F5\r\nbb\r\n", "HD\r\n")
            try await client.expectReply("mg k t f v\r\n", "VA 2 t30 f5 Z X\r\nbb\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 2 t30 Z X\r\nbb\r\n")
            // A plain set makes it fresh: no marks, the new TTL.
            try await client.expectReply("ms k 2 T50\r\ndd\r\n", "HD\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 2 t50\r\ndd\r\n")
            // On an item that was fresh, such a store makes it stale, and its token is handed out once.
            let before = try await client.cas("k")
            try await client.expectReply("ms k 2\r\nee\r\n", "HD\r\n")
            try await client.expectReply("ms k 2 I C\(before) T999\r\nff\r\n", "HD\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 2 t-1 X W\r\nff\r\n")
            try await client.expectReply("mg k t v\r\n", "VA 2 t-1 Z X\r\nff\r\n")
        }
    }

    /// The win token of a stale item goes to the first `mg`; reads that
    /// cannot tell a client it won (`get`, `gets`, `me`) leave it alone.
    @Test func staleItemHandsOutItsWinTokenOnce() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms k 1 T100\r\na\r\n", "HD\r\n")
            try await client.expectReply("md k I\r\n", "HD\r\n")
            #expect(try await client.exchange("gets k\r\n").hasPrefix("VALUE k 0 1 "))
            try await client.expectReply("get k\r\n", "VALUE k 0 1\r\na\r\nEND\r\n")
            #expect(try await client.exchange("me k\r\n").hasPrefix("ME k "))
            try await client.expectReply("mg k\r\n", "HD X W\r\n")
            try await client.expectReply("mg k\r\n", "HD Z X\r\n")
            try await client.expectReply("mg k v q k O1\r\n", "VA 1 kk O1 Z X\r\na\r\n")
            // Invalidating again hands out a new token (memcached does the same).
            try await client.expectReply("md k I\r\n", "HD\r\n")
            try await client.expectReply("mg k\r\n", "HD X W\r\n")
            try await client.expectReply("mg k\r\n", "HD Z X\r\n")
            // Until the item is set again.
            try await client.expectReply("set k 0 0 1\r\nb\r\n", "STORED\r\n")
            try await client.expectReply("mg k\r\n", "HD\r\n")
        }
    }

    @Test func metaSetBase64Keys() async throws {
        try await withClient { client, _, _ async throws in
            // "Zm9v" is "foo".
            try await client.expectReply("ms Zm9v 3 b\r\nbar\r\n", "HD\r\n")
            try await client.expectReply("get foo\r\n", "VALUE foo 0 3\r\nbar\r\nEND\r\n")
            try await client.expectReply("mg Zm9v b v\r\n", "VA 3\r\nbar\r\n")
            // The key comes back in base64, followed by b.
            try await client.expectReply("mg Zm9v b k v\r\n", "VA 3 kZm9v b\r\nbar\r\n")
            try await client.expectReply("mg Zm9v k b\r\n", "HD kZm9v b\r\n")
            try await client.expectReply("mg bm9wZQ== b k O1\r\n", "EN kbm9wZQ== b O1\r\n")
            // A binary key with bytes the text protocol cannot carry.
            try await client.expectReply("ms AAEC/w== 1 b\r\nx\r\n", "HD\r\n")
            try await client.expectReply("mg AAEC/w== b v\r\n", "VA 1\r\nx\r\n")
            try await client.expectReply("md AAEC/w== b k\r\n", "HD kAAEC/w== b\r\n")
            try await client.expectReply("mg AAEC/w== b v\r\n", "EN\r\n")
            try await client.expectReply("mg !!!! b v\r\n", "CLIENT_ERROR error decoding key\r\n")
            try await client.expectReply("ms !!!! 1 b\r\nx\r\n", "CLIENT_ERROR error decoding key\r\n")
            #expect(try await client.exchange("me Zm9v b\r\n").hasPrefix("ME Zm9v exp=-1 la=0 cas="))
        }
    }

    // MARK: md

    @Test func metaDelete() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("md d\r\n", "NF\r\n")
            try await client.expectReply("md d k O3\r\n", "NF kd O3\r\n")
            try await client.expectReply("ms d 1\r\nx\r\n", "HD\r\n")
            try await client.expectReply("md d k O3\r\n", "HD kd O3\r\n")
            try await client.expectReply("mg d v\r\n", "EN\r\n")

            // q hides HD only.
            try await client.expectReply("ms d 1\r\nx\r\n", "HD\r\n")
            try await client.expectReply("md d q\r\n", "")
            try await client.expectReply("md d q\r\n", "NF\r\n")

            // C compares the CAS first.
            try await client.expectReply("ms d 1\r\nx\r\n", "HD\r\n")
            let cas = try await client.cas("d")
            try await client.expectReply("md d C\(cas &+ 1)\r\n", "EX\r\n")
            try await client.expectReply("mg d v\r\n", "VA 1\r\nx\r\n")
            try await client.expectReply("md d C\(cas)\r\n", "HD\r\n")
            try await client.expectReply("mg d v\r\n", "EN\r\n")
        }
    }

    @Test func metaDeleteInvalidate() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms d 5 T100\r\nhello\r\n", "HD\r\n")
            let cas = try await client.cas("d")
            try await client.expectReply("md d I T30\r\n", "HD\r\n")
            // Stale: the first reader wins the right to recache, the next sees Z.
            let first = try await client.exchange("mg d v c t\r\n")
            let newCas = try await client.cas("d")
            #expect(newCas != cas)
            #expect(first == "VA 5 c\(newCas) t30 X W\r\nhello\r\n")
            try await client.expectReply("mg d v\r\n", "VA 5 Z X\r\nhello\r\n")
            try await client.expectReply("mg d\r\n", "HD Z X\r\n")
            // A successful recache clears both marks.
            try await client.expectReply("ms d 5 C\(newCas)\r\nfresh\r\n", "HD\r\n")
            try await client.expectReply("mg d v\r\n", "VA 5\r\nfresh\r\n")
        }
    }

    @Test func metaDeleteRemoveValueOnly() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ms d 5\r\nhello\r\n", "HD\r\n")
            try await client.expectReply("md d x\r\n", "HD\r\n")
            try await client.expectReply("mg d v s\r\n", "VA 0 s0\r\n\r\n")
            try await client.expectReply("get d\r\n", "VALUE d 0 0\r\n\r\nEND\r\n")
        }
    }

    // MARK: ma

    @Test func metaArithmetic() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("ma n\r\n", "NF\r\n")
            try await client.expectReply("ma n O2 k\r\n", "NF O2 kn\r\n")
            try await client.expectReply("set n 0 0 1\r\n5\r\n", "STORED\r\n")
            try await client.expectReply("ma n\r\n", "HD\r\n")
            try await client.expectReply("ma n v\r\n", "VA 1\r\n7\r\n")
            try await client.expectReply("ma n D10 v\r\n", "VA 2\r\n17\r\n")
            try await client.expectReply("ma n MD D3 v\r\n", "VA 2\r\n14\r\n")
            try await client.expectReply("ma n M- D100 v\r\n", "VA 1\r\n0\r\n")
            try await client.expectReply("ma n M+ D18446744073709551615 v\r\n", "VA 20\r\n18446744073709551615\r\n")
            try await client.expectReply("ma n MI v\r\n", "VA 1\r\n0\r\n")
            try await client.expectReply("ma n q\r\n", "")
            try await client.expectReply("ma n q v MD\r\n", "")
            try await client.expectReply("ma n q v MI\r\n", "")
            try await client.expectReply("ma nope q v\r\n", "NF\r\n")
            try await client.expectReply("get n\r\n", "VALUE n 0 1\r\n1\r\nEND\r\n")

            let cas = try await client.cas("n")
            try await client.expectReply("ma n C\(cas &+ 1)\r\n", "EX\r\n")
            let reply = try await client.exchange("ma n C\(cas) c T60 t\r\n")
            let newCas = try await client.cas("n")
            #expect(reply == "HD c\(newCas) t60\r\n")

            try await client.expectReply("set s 0 0 1\r\nx\r\n", "STORED\r\n")
            try await client.expectReply("ma s\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            try await client.expectReply("ma n MZ\r\n", "CLIENT_ERROR invalid mode for ma M token\r\n")
        }
    }

    @Test func metaArithmeticVivify() async throws {
        try await withClient { client, _, clock async throws in
            try await client.expectReply("ma v N0 J13 v\r\n", "VA 2\r\n13\r\n")
            try await client.expectReply("ma v N0 J13 v\r\n", "VA 2\r\n14\r\n")
            try await client.expectReply("get v\r\n", "VALUE v 0 2\r\n14\r\nEND\r\n")
            // Default initial value is 0; the N TTL applies to the new item.
            try await client.expectReply("ma w N20 v t\r\n", "VA 1 t20\r\n0\r\n")
            try await client.expectReply("ma w N20 MD v\r\n", "VA 1\r\n0\r\n")
            clock.advance(seconds: 20)
            try await client.expectReply("ma w\r\n", "NF\r\n")
        }
    }

    // MARK: mn, me

    @Test func metaNoopAndDebug() async throws {
        try await withClient { client, _, clock async throws in
            try await client.send("mn\r\n")
            #expect(try await client.readLine() == "MN\r\n")
            try await client.expectReply("me nope\r\n", "EN\r\n")
            // The CAS comes from ms itself: reading it with mg would count as a fetch.
            let stored = try await client.exchange("ms k 5 T100 c\r\nhello\r\n")
            #expect(stored.hasPrefix("HD c"))
            let cas = stored.dropFirst(4).prefix(while: \.isNumber)
            clock.advance(seconds: 4)
            let debug = try await client.exchange("me k\r\n")
            #expect(debug.hasPrefix("ME k exp=96 la=4 cas=\(cas) fetch=no cls="))
            #expect(debug.contains(" size="))
            #expect(debug.hasSuffix("\r\n") && debug.split(separator: "\r\n").count == 1)
            // me only looks: it does not count as a fetch.
            try await client.expectReply("mg k h\r\n", "HD h0\r\n")
            #expect(try await client.exchange("me k\r\n").contains(" fetch=yes "))
        }
    }

    @Test func metaFlagErrors() async throws {
        try await withClient { client, _, _ async throws in
            try await client.expectReply("mg k v v\r\n", "CLIENT_ERROR duplicate flag\r\n")
            try await client.expectReply("mg k !\r\n", "CLIENT_ERROR invalid flag\r\n")
            try await client.expectReply("mg k Tabc\r\n", "CLIENT_ERROR bad token in command line format\r\n")
            try await client.expectReply("mg k O\(String(repeating: "o", count: 33))\r\n", "CLIENT_ERROR opaque token too long\r\n")
            // memcached's bound is on the whole token: 32 bytes with the O, so 31 of opaque.
            try await client.expectReply("mg k O\(String(repeating: "o", count: 32))\r\n", "CLIENT_ERROR opaque token too long\r\n")
            try await client.expectReply("ms k 1 O\(String(repeating: "o", count: 32))\r\nx\r\n", "CLIENT_ERROR opaque token too long\r\n")
            try await client.expectReply("mg k O\(String(repeating: "o", count: 31))\r\n", "EN O\(String(repeating: "o", count: 31))\r\n")
            // Keys: 250 bytes; base64 keys are bounded as a 250-byte token too.
            try await client.expectReply("mg \(String(repeating: "k", count: 250)) v\r\n", "EN\r\n")
            try await client.expectReply("mg \(String(repeating: "k", count: 251)) v\r\n", "CLIENT_ERROR bad command line format\r\n")
            try await client.expectReply("md \(String(repeating: "k", count: 251))\r\n", "CLIENT_ERROR bad command line format\r\n")
            try await client.expectReply("mg \(String(repeating: "enp6", count: 63)) b v\r\n", "CLIENT_ERROR bad command line format\r\n")
            try await client.expectReply("mg \(String(repeating: "enp6", count: 62)) b v\r\n", "EN\r\n")
            try await client.expectReply("mg\r\n", "CLIENT_ERROR bad command line format\r\n")
            try await client.expectReply("ms k\r\n", "CLIENT_ERROR bad command line format\r\n")
            try await client.expectReply("ms k abc\r\n", "CLIENT_ERROR bad command line format\r\n")
            // An ms with a bad flag still has its data block swallowed.
            try await client.expectReply("ms k 3 Fxyz\r\nabc\r\n", "CLIENT_ERROR bad token in command line format\r\n")
            try await client.expectReply("mx k\r\n", "ERROR\r\n")
            try await client.expectReply("mg k v\r\n", "EN\r\n")
        }
    }
}
