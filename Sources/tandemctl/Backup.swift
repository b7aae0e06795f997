import ArgumentParser
import Foundation
import TandemClient
import WireProtocol

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a consistent copy of the node's database into a new directory, usable as --data-dir.",
        discussion: """
            The node writes the copy itself, so DIR is created on the node's machine, not \
            on the one tandemctl runs on. A relative DIR is made absolute against tandemctl's \
            working directory before it is sent (the node's working directory is another). \
            DIR must not exist or be empty, and its parent must exist.

            The node keeps serving while it copies. The copy holds everything it had \
            committed to SQLite when the copy began (it first commits the writes waiting \
            for its writer); writes that arrive during the copy are not in it. Start a node \
            on it with tandemd --data-dir DIR.

            Exit code 5 when the node refuses or fails: it runs with --no-persistence, DIR \
            exists and is not empty, its parent does not exist, the disk is full.

            Examples:
              tandemctl backup /var/backups/tandem/2026-11-22 --port 11311
              tandemctl backup /srv/tandem-copy --host 10.0.0.1 --json
              tandemd --data-dir /var/backups/tandem/2026-11-22 -p 11299   # serve the copy
            """
    )

    @OptionGroup var node: NodeOptions

    @Argument(help: ArgumentHelp("The directory to create on the node's machine, for the copy.", valueName: "dir"))
    var directory: String

    func run() async throws {
        try await reporting {
            guard !directory.isEmpty else { throw Failure(code: 1, message: "name the directory to write the copy into") }
            let path = URL(fileURLWithPath: directory).path
            let client = try await node.connect()
            let summary: BackupSummary
            do {
                summary = try await client.backup(to: path)
            } catch {
                try? await client.close()
                throw error
            }
            try? await client.close()
            if node.json {
                let object: [String: Any] = ["path": summary.path, "items": summary.items, "bytes": summary.bytes]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                print(String(decoding: data, as: UTF8.self))
            } else {
                let megabytes = String(format: "%.1f", Double(summary.bytes) / 1_000_000)
                print("backup of \(client.server.nodeName) written to \(summary.path): \(summary.items) items, \(megabytes) MB")
            }
        }
    }
}
