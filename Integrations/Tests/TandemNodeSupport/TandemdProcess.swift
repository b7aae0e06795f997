import Foundation
import Synchronization

/// A tandemd process on 127.0.0.1, with ports the kernel picked, its data
/// in a directory of its own and its output in a log file there.
public final class TandemdProcess: Sendable {
    public let name: String
    /// The memcached port.
    public let port: Int
    /// The wire port (what TandemPairClient is given).
    public let wirePort: Int
    public let directory: URL
    public let arguments: [String]
    private let process: ProcessBox
    private let exit: ExitWatch

    /// `host:port` of the wire port.
    public var wireAddress: String { "127.0.0.1:\(wirePort)" }

    public enum StartError: Error, CustomStringConvertible {
        case noBinary([String])
        case didNotStart(String, log: String)

        public var description: String {
            switch self {
            case .noBinary(let looked):
                return "no tandemd binary: set TANDEMD_BIN, or build it (Integrations/test does: swift build --product tandemd); looked at \(looked)"
            case .didNotStart(let command, let log): return "tandemd did not start: \(command)\n\(log)"
            }
        }
    }

    /// The tandemd to run: `TANDEMD_BIN`, else the one this package built,
    /// else the root package's.
    public static func binary() throws -> URL {
        if let configured = ProcessInfo.processInfo.environment["TANDEMD_BIN"], !configured.isEmpty {
            return URL(fileURLWithPath: configured)
        }
        // This file is Integrations/Tests/TandemNodeSupport/TandemdProcess.swift.
        let integrations = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [
            integrations.appendingPathComponent(".build/debug/tandemd"),
            integrations.deletingLastPathComponent().appendingPathComponent(".build/debug/tandemd"),
        ]
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) { return found }
        throw StartError.noBinary(candidates.map(\.path))
    }

    /// Starts tandemd with `-l 127.0.0.1 -p 0 --wire-port 0 --data-dir <directory> -t 1`
    /// and `extra`, and returns once both ports listen (at most 30 s).
    /// - Parameter ports: The memcached and wire ports to bind again (a restart), instead of free ones.
    public static func start(
        name: String, in directory: URL, extra: [String] = [], ports: (memcached: Int, wire: Int)? = nil
    ) async throws -> TandemdProcess {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let log = directory.appendingPathComponent("tandemd.log")
        if !FileManager.default.fileExists(atPath: log.path) { FileManager.default.createFile(atPath: log.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: log)
        try handle.seekToEnd()
        let startOffset = try handle.offset()
        let arguments = [
            "-l", "127.0.0.1", "-p", String(ports?.memcached ?? 0), "--wire-port", String(ports?.wire ?? 0),
            "--data-dir", directory.appendingPathComponent("data").path, "--node-name", name,
            // One event loop: many tests run at once, each with its own nodes.
            "-t", "1",
        ] + extra
        let process = Process()
        process.executableURL = try binary()
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        let box = ProcessBox(process)
        let exit = ExitWatch()
        process.terminationHandler = { finished in exit.finished(finished.terminationStatus) }
        try process.run()
        try? handle.close()
        let command = ([process.executableURL!.path] + arguments).joined(separator: " ")
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while true {
            let text = Self.read(log, from: startOffset)
            if let port = Self.port(after: "listening on 127.0.0.1:", in: text),
                let wirePort = Self.port(after: "wire protocol ready on 127.0.0.1:", in: text)
            {
                return TandemdProcess(
                    name: name, port: port, wirePort: wirePort, directory: directory, arguments: arguments, process: box, exit: exit
                )
            }
            if !process.isRunning || ContinuousClock.now >= deadline {
                if process.isRunning { process.terminate() }
                throw StartError.didNotStart(command, log: String(text.suffix(4000)))
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private init(name: String, port: Int, wirePort: Int, directory: URL, arguments: [String], process: ProcessBox, exit: ExitWatch) {
        self.name = name
        self.port = port
        self.wirePort = wirePort
        self.directory = directory
        self.arguments = arguments
        self.process = process
        self.exit = exit
    }

    public var pid: Int32 { process.process.processIdentifier }
    public var isRunning: Bool { process.process.isRunning }

    /// Sends `signal` and waits for the process to exit; its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM) async -> Int32 {
        if isRunning { kill(pid, signal) }
        return await exit.wait()
    }

    /// `kill -9`, and waits until the process is gone.
    public func kill9() async {
        await stop(signal: SIGKILL)
    }

    /// The end of the node's log.
    public func log() -> String {
        String(Self.read(directory.appendingPathComponent("tandemd.log"), from: 0).suffix(6000))
    }

    private static func read(_ url: URL, from offset: UInt64) -> String {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return "" }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }

    private static func port(after marker: String, in text: String) -> Int? {
        guard let range = text.range(of: marker) else { return nil }
        return Int(text[range.upperBound...].prefix { $0.isNumber })
    }
}

/// `Process` is not `Sendable`; the node only reads its pid and state and
/// signals it, which are safe from any thread.
final class ProcessBox: @unchecked Sendable {
    let process: Process
    init(_ process: Process) { self.process = process }
}

/// The exit status of a process, once it exited, for any number of waiters.
final class ExitWatch: Sendable {
    private struct State {
        var status: Int32?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    private let state = Mutex(State())

    func finished(_ status: Int32) {
        let waiters = state.withLock { state -> [CheckedContinuation<Int32, Never>] in
            state.status = status
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }

    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            let status = state.withLock { state -> Int32? in
                if let status = state.status { return status }
                state.waiters.append(continuation)
                return nil
            }
            if let status { continuation.resume(returning: status) }
        }
    }
}

/// A fresh directory under the temporary directory.
public func temporaryDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-\(label)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
