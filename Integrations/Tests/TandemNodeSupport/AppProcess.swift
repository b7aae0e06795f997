import Foundation

/// A process of one of this package's executables (an example app), with
/// its output in a log file, once it printed `listening on HOST:PORT`.
public final class AppProcess: Sendable {
    public let port: Int
    public let logFile: URL
    private let process: ProcessBox
    private let exit: ExitWatch

    public enum StartError: Error, CustomStringConvertible {
        case noBinary(String)
        case didNotStart(String, log: String)

        public var description: String {
            switch self {
            case .noBinary(let path): return "no executable at \(path): build this package first (Integrations/test does)"
            case .didNotStart(let command, let log): return "\(command) did not start\n\(log)"
            }
        }
    }

    /// The directory this package's executables are built in:
    /// `INTEGRATIONS_BIN_PATH` (Integrations/test sets it), else `.build/debug`.
    public static func binDirectory() -> URL {
        if let path = ProcessInfo.processInfo.environment["INTEGRATIONS_BIN_PATH"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        let integrations = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return integrations.appendingPathComponent(".build/debug")
    }

    /// Starts `executable` (from `binDirectory()`) with `arguments` and
    /// `environment` added to this process's, and returns once it printed
    /// `listening on 127.0.0.1:PORT` (at most 30 s).
    public static func start(_ executable: String, arguments: [String], environment: [String: String] = [:], logFile: URL) async throws -> AppProcess {
        let binary = binDirectory().appendingPathComponent(executable)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else { throw StartError.noBinary(binary.path) }
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logFile)
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        let exit = ExitWatch()
        process.terminationHandler = { finished in exit.finished(finished.terminationStatus) }
        try process.run()
        try? handle.close()
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while true {
            let text = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
            if let range = text.range(of: "listening on 127.0.0.1:"), let port = Int(text[range.upperBound...].prefix { $0.isNumber }) {
                return AppProcess(port: port, logFile: logFile, process: ProcessBox(process), exit: exit)
            }
            if !process.isRunning || ContinuousClock.now >= deadline {
                if process.isRunning { process.terminate() }
                throw StartError.didNotStart(([binary.path] + arguments).joined(separator: " "), log: String(text.suffix(4000)))
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private init(port: Int, logFile: URL, process: ProcessBox, exit: ExitWatch) {
        self.port = port
        self.logFile = logFile
        self.process = process
        self.exit = exit
    }

    public var isRunning: Bool { process.process.isRunning }

    /// Sends `signal` and waits for the process to exit; its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM) async -> Int32 {
        if isRunning { kill(process.process.processIdentifier, signal) }
        return await exit.wait()
    }

    /// The end of the process's output.
    public func log() -> String {
        String(((try? String(contentsOf: logFile, encoding: .utf8)) ?? "").suffix(6000))
    }
}
