import NIOCore

extension PrimaryReplication {
    /// How waiting for the backup before a stop ended.
    public enum CatchUp: Sendable, Equatable {
        /// No backup was connected: there was nobody to wait for.
        case noBackup
        /// The backup acknowledged the whole stream, up to `offset`.
        case caughtUp(offset: UInt64)
        /// The time ran out (or the backup left) with the backup at `acknowledged` of `end`.
        case behind(acknowledged: UInt64, end: UInt64)
    }

    /// Before a primary stops: waits, at most `timeout`, until its connected
    /// backup has acknowledged every change released so far.
    ///
    /// Sync writes were answered only once the backup had them, but async
    /// writes, writes answered after a sync timeout, and expiries and
    /// evictions may still be on their way; a backup that takes over once
    /// this node is gone would otherwise start without them. Call it once no
    /// more client writes arrive (after the memcached connections drained),
    /// while the event loops still run.
    public func waitForBackupToCatchUp(timeout: TimeAmount, on eventLoop: any EventLoop) async -> CatchUp {
        // Release what the store recorded; the push subscription hands it to the session.
        feed.pump()
        guard hasBackup else { return .noBackup }
        let end = offset
        let deadline = NIODeadline.now() + timeout
        while acknowledgements.reached < end, hasBackup {
            let remaining = deadline - .now()
            guard remaining > .zero else { break }
            // Waiters are also released when the backup leaves or a sync wait
            // degrades: hence the loop, which checks what was really reached.
            try? await acknowledgements.wait(for: end, on: eventLoop, timeout: remaining).get()
        }
        let reached = acknowledgements.reached
        return reached >= end ? .caughtUp(offset: end) : .behind(acknowledged: reached, end: end)
    }
}
