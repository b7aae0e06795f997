import NIOCore
import NIOEmbedded
@testable import Replication
import Testing

/// Waits for a stream position: released when it is reached, failed at
/// their own deadline otherwise, however the deadlines of the waits mix.
@Suite("Offset waiters")
struct OffsetWaitersTests {
    /// How each wait ended so far, by name: "ok", "timedOut", or absent while waiting.
    final class Outcomes: @unchecked Sendable {
        var ended: [String: String] = [:]
    }

    func watch(_ future: EventLoopFuture<Void>, as name: String, into outcomes: Outcomes) {
        future.whenComplete { result in
            switch result {
            case .success: outcomes.ended[name] = "ok"
            case .failure(OffsetWaiters.Failure.timedOut): outcomes.ended[name] = "timedOut"
            case .failure(let error): outcomes.ended[name] = "\(error)"
            }
        }
    }

    @Test("a short wait registered after a long one times out at its own deadline")
    func shortAfterLong() {
        let loop = EmbeddedEventLoop()
        let waiters = OffsetWaiters()
        let outcomes = Outcomes()
        watch(waiters.wait(for: 5, on: loop, timeout: .seconds(3)), as: "long", into: outcomes)
        watch(waiters.wait(for: 6, on: loop, timeout: .milliseconds(200)), as: "short", into: outcomes)
        loop.advanceTime(by: .milliseconds(199))
        #expect(outcomes.ended.isEmpty)
        loop.advanceTime(by: .milliseconds(1))
        #expect(outcomes.ended == ["short": "timedOut"])
        loop.advanceTime(by: .milliseconds(2_799))
        #expect(outcomes.ended["long"] == nil)
        loop.advanceTime(by: .milliseconds(1))
        #expect(outcomes.ended == ["short": "timedOut", "long": "timedOut"])
    }

    @Test("reaching an offset releases the waits at or below it, on time, and later waits still time out")
    func reachAndTimeOut() {
        let loop = EmbeddedEventLoop()
        let waiters = OffsetWaiters()
        let outcomes = Outcomes()
        watch(waiters.wait(for: 3, on: loop, timeout: .milliseconds(100)), as: "three", into: outcomes)
        watch(waiters.wait(for: 7, on: loop, timeout: .milliseconds(100)), as: "seven", into: outcomes)
        waiters.reach(5)
        loop.run()
        #expect(outcomes.ended == ["three": "ok"])
        // A wait for what is already reached succeeds at once.
        watch(waiters.wait(for: 4, on: loop, timeout: .milliseconds(100)), as: "four", into: outcomes)
        loop.advanceTime(by: .milliseconds(50))
        watch(waiters.wait(for: 9, on: loop, timeout: .milliseconds(100)), as: "nine", into: outcomes)
        loop.advanceTime(by: .milliseconds(50))
        #expect(outcomes.ended == ["three": "ok", "four": "ok", "seven": "timedOut"])
        loop.advanceTime(by: .milliseconds(50))
        #expect(outcomes.ended["nine"] == "timedOut")
    }
}
