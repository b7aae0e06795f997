import NIOCore
import WireProtocol

extension TandemClient {
    /// How long `backup(to:)` waits by default: copying a database of several
    /// gigabytes takes minutes.
    public static let backupTimeout = TimeAmount.minutes(10)

    /// Asks the node to write a consistent copy of its database into `path`,
    /// a directory **on the node's machine** that must not exist or be empty
    /// (its parent must exist). A relative path is relative to the node's
    /// working directory, not this process's: give an absolute one. The copy
    /// holds everything the node had committed when it began (the node first
    /// commits what waits for its writer) and is usable as `tandemd --data-dir`.
    ///
    /// Throws `TandemClientError.server` with code `unavailable` for a node
    /// run with `--no-persistence`, and `internalError` when the directory
    /// cannot be used or the copy fails; the connection stays usable.
    public func backup(to path: String, timeout: TimeAmount = TandemClient.backupTimeout) async throws -> BackupSummary {
        let reply = try await request(.backup(path: path), timeout: timeout)
        guard case .backupDone(let summary) = reply else {
            throw TandemClientError.unexpectedReply("\(reply.type) to backup")
        }
        return summary
    }
}
