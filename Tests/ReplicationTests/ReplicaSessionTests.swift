import Logging
import NIOCore
import NIOEmbedded
@testable import Replication
import SessionStore
import Testing
import WireProtocol

/// The primary's end of a replication connection, on an embedded channel.
@Suite("ReplicaSession")
struct ReplicaSessionTests {
    /// Calls `closed()` when the channel goes inactive, as `WireConnectionHandler` does.
    final class ClosesSession: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var session: ReplicaSession?
        var closedCalls = 0

        func channelInactive(context: ChannelHandlerContext) {
            closedCalls += 1
            session?.closed()
            context.fireChannelInactive()
        }
    }

    @Test(
        "a write answered because the backup went away may close the connection again from its callback: the session takes the second close without a conflict"
    )
    func closingFromAnAnsweredWrite() throws {
        let store = SessionStore(
            configuration: StoreConfiguration(shardCount: 2, recordsChanges: true), clock: ManualClock()
        )
        let feed = ChangeFeed(store: store)
        let primary = PrimaryReplication(
            store: store, feed: feed, configuration: ReplicationConfiguration(mode: .sync, syncTimeout: .seconds(60)),
            logger: Logger(label: "test")
        )
        let channel = EmbeddedChannel()
        let handler = ClosesSession()
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        // The backup is in step: a partial resync at the primary's offset, which counts as acknowledged.
        let session = ReplicaSession.start(
            on: channel, primary: primary,
            request: Replicate(replicationID: primary.replicationID, offset: primary.offset, epoch: 1),
            backupName: "B", continuingHistories: true
        )
        handler.session = session
        #expect(primary.statistics().contains { $0 == ("replication_state", "sync") })

        // A write now waits for the backup's acknowledgement; its reply closes the connection,
        // as a client connection whose flush fails does.
        Array("k".utf8).withUnsafeBytes { key in
            Array("v".utf8).withUnsafeBytes { value in
                _ = store.applyUpsert(key, value: value, flags: 0, deadline: .never, cas: store.currentStamp())
            }
        }
        let waiting = try #require(primary.afterWrites(on: channel.eventLoop))
        var answered = false
        waiting.whenComplete { _ in
            answered = true
            channel.close(promise: nil)
        }

        // The connection fails (an error, before the channel is closed): the session closes,
        // the primary lets go of the backup and answers the write, whose callback closes the
        // channel, which calls `closed()` again while the first is still running.
        session.closed()

        #expect(answered)
        #expect(handler.closedCalls == 1)
        #expect(primary.statistics().contains { $0 == ("replication_state", "async_no_backup") })
        _ = try? channel.finish()
    }
}
