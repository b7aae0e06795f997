import Foundation
import Synchronization
import TandemClient

/// Two tandemd processes replicating in sync, A the primary and B its
/// backup, or one standalone node; stopped (and their directories
/// removed) by `stop()`.
public final class TandemTestNodes: Sendable {
    private let running: Mutex<[TandemdProcess]>
    public let directory: URL
    /// The flags every node of these was started with (a restart keeps them).
    public let flags: [String]

    init(nodes: [TandemdProcess], directory: URL, flags: [String] = []) {
        self.running = Mutex(nodes)
        self.directory = directory
        self.flags = flags
    }

    /// The nodes, as they run now (a restarted node replaces its old process).
    public var nodes: [TandemdProcess] { running.withLock { $0 } }

    /// What the drivers are given: the nodes' wire addresses, `host:port,host:port`.
    public var pairSpec: String { nodes.map(\.wireAddress).joined(separator: ",") }

    /// One node on its own (a primary without a backup: writes do not wait for one).
    public static func standalone() async throws -> TandemTestNodes {
        let directory = try temporaryDirectory("node")
        let node = try await TandemdProcess.start(name: "S", in: directory.appendingPathComponent("S"))
        return TandemTestNodes(nodes: [node], directory: directory)
    }

    /// A primary and its backup, returned once the primary replicates in sync.
    /// - Parameter failoverAfterMillis: The backup promotes itself after this
    ///   long without word from the primary (`--failover-after`).
    public static func pair(failoverAfterMillis: Int = 600, extra: [String] = []) async throws -> TandemTestNodes {
        let directory = try temporaryDirectory("pair")
        let flags = ["--failover-after", String(failoverAfterMillis)] + extra
        let primary = try await TandemdProcess.start(name: "A", in: directory.appendingPathComponent("A"), extra: flags)
        let backup: TandemdProcess
        do {
            backup = try await TandemdProcess.start(
                name: "B", in: directory.appendingPathComponent("B"), extra: flags + ["--role", "backup", "--peer", primary.wireAddress]
            )
        } catch {
            await primary.kill9()
            throw error
        }
        let nodes = TandemTestNodes(nodes: [primary, backup], directory: directory, flags: flags)
        do {
            try await nodes.waitUntil("the primary replicates in sync", on: primary) { $0["replication_state"] == "sync" }
        } catch {
            await nodes.stop()
            throw error
        }
        return nodes
    }

    public struct Timeout: Error, CustomStringConvertible {
        public let description: String
    }

    /// Polls the node's status (over the wire port) until `condition` holds; at most `timeout`.
    public func waitUntil(
        _ what: String, on node: TandemdProcess, timeout: Duration = .seconds(30), _ condition: ([String: String]) -> Bool
    ) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var last: [String: String] = [:]
        while ContinuousClock.now < deadline {
            if let status = try? await Self.status(of: node) {
                last = status
                if condition(status) { return }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw Timeout(description: "timed out waiting until \(what) (\(node.name)'s last status: \(last))\n\(node.log())")
    }

    /// The node's `status` (role, epoch, replication state, …).
    public static func status(of node: TandemdProcess) async throws -> [String: String] {
        let client = try await TandemClient.connect(host: "127.0.0.1", port: node.wirePort)
        defer { Task { try? await client.close() } }
        let status = try await client.status()
        return Dictionary(status.map { ($0.name, $0.value) }, uniquingKeysWith: { _, last in last })
    }

    /// Stops node `index` with `signal`, runs `whileStopped`, and starts it
    /// again on the same ports and data with `flags` and `extra` (its role
    /// now, say); returns the new process.
    @discardableResult
    public func restart(
        _ index: Int, signal: Int32 = SIGTERM, extra: [String], whileStopped: () async throws -> Void = {}
    ) async throws -> TandemdProcess {
        let old = nodes[index]
        await old.stop(signal: signal)
        try await whileStopped()
        let new = try await TandemdProcess.start(
            name: old.name, in: old.directory, extra: flags + extra, ports: (memcached: old.port, wire: old.wirePort)
        )
        running.withLock { $0[index] = new }
        return new
    }

    /// Stops every node still running (SIGTERM) and removes their directories.
    public func stop() async {
        for node in nodes where node.isRunning { await node.stop() }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Runs `body` with started nodes, stopping them however it ends.
public func withTandem<T>(
    _ start: () async throws -> TandemTestNodes, _ body: (TandemTestNodes) async throws -> T
) async throws -> T {
    let nodes = try await start()
    do {
        let result = try await body(nodes)
        await nodes.stop()
        return result
    } catch {
        await nodes.stop()
        throw error
    }
}
