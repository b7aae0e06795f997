import Foundation
import Logging
import NIOCore
import SessionPersistence
import WireProtocol

extension WireConnectionHandler {
    /// Serves `backup`: commits what waits for the writer, copies the database
    /// into `path` on this node's machine (relative to the node's working
    /// directory), and calls `answer` on the event loop with `backupDone` or an
    /// `error`. The copy runs on a thread of its own: it can take minutes, and
    /// neither the event loop nor Swift's cooperative pool may block that long.
    /// Errors are answered, never a close: the request was valid, the copy was
    /// not possible.
    static func backUp(
        to path: String, persistence: Persistence?, eventLoop: any EventLoop, logger: Logger, answer: @escaping (WireMessage) -> Void
    ) {
        guard let persistence else {
            answer(.error(WireError(.unavailable, "this node runs without persistence (--no-persistence): there is no database to copy")))
            return
        }
        // The answer touches the connection: only on its event loop.
        let reply = NIOLoopBound(answer, eventLoop: eventLoop)
        Task {
            // Writes already acknowledged are in the copy unless storage is failing;
            // then the copy still holds everything committed so far.
            let committed = await persistence.commitNow()
            let message: WireMessage
            do {
                let report = try await persistence.copyDatabaseInBackground(to: path)
                logger.info("backup written", metadata: [
                    "directory": "\(report.directory)", "items": "\(report.items)", "bytes": "\(report.bytes)",
                    "seconds": "\(String(format: "%.3f", report.seconds))", "committed_first": "\(committed)",
                ])
                message = .backupDone(BackupSummary(path: report.directory, bytes: report.bytes, items: report.items))
            } catch {
                logger.warning("backup failed", metadata: ["error": "\(error)"])
                message = .error(WireError(.internalError, "\(error)"))
            }
            eventLoop.execute { reply.value(message) }
        }
    }
}
