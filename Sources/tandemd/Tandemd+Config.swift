import ArgumentParser
import Foundation
import Logging
import Replication
import SessionPersistence
import Synchronization
import TandemConfig
import TandemServer
import WireProtocol

// `--config FILE`, `--check-config`, and how logs are written.

extension Tandemd {
    /// Every setting a configuration file may hold: each is a long flag of
    /// `tandemd`, written without its dashes. Not here: `--config` and
    /// `--check-config` (they are about the file), `--help`, and the hidden
    /// testing flag `--stamp-skew`. A new flag needs its line here
    /// (Tests/integration/test_config.py checks that every flag has one).
    static let configSchema = ConfigSchema(keys: [
        ConfigKey("port", .integer, short: "p"),
        ConfigKey("listen", .string(), short: "l"),
        ConfigKey("memory-limit", .integer, short: "m"),
        ConfigKey("max-connections", .integer, short: "c"),
        ConfigKey("max-item-size", .size(accepts: { ByteSize(argument: $0) != nil }), short: "I"),
        ConfigKey("threads", .integer, short: "t"),
        ConfigKey("disable-evictions", .flag, short: "M"),
        // -v and --log-level both set the level: the command line's replaces the file's.
        ConfigKey("verbose", .count(max: 2), short: "v", group: "log-level"),
        ConfigKey("log-level", .string(choices: LogLevelArgument.allCases.map(\.rawValue)), group: "log-level"),
        ConfigKey("log-format", .string(choices: LogFormat.allCases.map(\.rawValue))),
        ConfigKey("data-dir", .string()),
        ConfigKey("flush-interval", .integer),
        ConfigKey("no-persistence", .flag),
        ConfigKey("disk-limit", .size(accepts: { DiskLimitArgument(argument: $0) != nil })),
        ConfigKey("wire-port", .integer),
        ConfigKey("role", .string(choices: RoleArgument.allCases.map(\.rawValue))),
        ConfigKey("peer", .string()),
        ConfigKey("replication", .string(choices: ReplicationConfiguration.Mode.allCases.map(\.rawValue))),
        ConfigKey("sync-timeout", .integer),
        ConfigKey("heartbeat-interval", .integer),
        ConfigKey("link-timeout", .integer),
        ConfigKey("backlog-size", .size(accepts: { ByteSize(argument: $0) != nil })),
        ConfigKey("failover-after", .integer),
        ConfigKey("node-name", .string()),
        ConfigKey("sasl-users", .string()),
        ConfigKey("secret-file", .string()),
        ConfigKey("insecure", .flag),
        ConfigKey("metrics-port", .integer),
        ConfigKey("tls-cert", .string()),
        ConfigKey("tls-key", .string()),
        ConfigKey("tls-ca", .string()),
        ConfigKey("tls-ports", .string(choices: ["wire,memcached", "wire", "memcached", "memcached,wire"])),
    ])

    /// The configuration file `main` merged into the arguments, for messages
    /// that should name its lines.
    static let loadedConfiguration = Mutex<MergedConfiguration?>(nil)

    /// Reads `--config` before the command line is parsed: the file's
    /// settings become arguments ahead of the real ones, so both are checked
    /// by the same parser and `validate()`, and the command line wins.
    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        var merged: MergedConfiguration?
        if let path = ConfigSchema.configPath(in: arguments) {
            do {
                let file = try ConfigFile.load(path: path)
                let configuration = try configSchema.merge(file, commandLine: arguments)
                arguments = configuration.arguments
                merged = configuration
            } catch {
                printError("Error: \(error)")
                Self.exit(withError: ExitCode.validationFailure)
            }
        }
        loadedConfiguration.withLock { $0 = merged }
        do {
            var command = try await asyncParseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // A value from the file that validate() refuses: name its line
            // instead of printing the usage, which would not help.
            if let merged, exitCode(for: error) == .validationFailure,
                let attributed = merged.attribute(message(for: error), schema: configSchema)
            {
                printError("Error: \(attributed)")
                Self.exit(withError: ExitCode.validationFailure)
            }
            Self.exit(withError: error)
        }
    }

    /// `--check-config`: what `validate()` checked (it ran before this), plus
    /// what `run()` would find only when it starts, without starting: the
    /// secret, SASL and TLS files load, the listen address resolves, the data
    /// directory could be used (without taking its lock, so a running node's
    /// configuration can be checked before it is restarted).
    func checkConfiguration() throws {
        var problems: [String] = []
        var warnings: [String] = []
        if let secretFile {
            do {
                _ = try WireSecret(contentsOfFile: secretFile)
            } catch {
                problems.append("--secret-file: \(error)")
            }
        } else if !Self.isLoopback(listen), !wireIsMutualTLS {
            // validate() let this through only with --insecure.
            warnings.append("--insecure: the wire port takes anyone who reaches \(listen)")
        }
        checkTLS(problems: &problems, warnings: &warnings)
        if let saslUsers {
            do {
                _ = try SASLUsers.load(path: saslUsers)
                if let attributes = try? FileManager.default.attributesOfItem(atPath: saslUsers),
                    let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0
                {
                    warnings.append("--sasl-users: \(saslUsers) is readable by other users; chmod 600 it")
                }
            } catch {
                problems.append("--sasl-users: \(error)")
            }
        }
        if let reason = Self.unresolvable(listen) {
            problems.append("--listen \(listen): \(reason)")
        }
        if let peer, let address = Self.parsePeer(peer), let reason = Self.unresolvable(address.host) {
            // The peer may come later (DNS, a machine still being set up): not fatal.
            warnings.append("--peer \(peer): \(reason)")
        }
        if noPersistence {
            warnings.append("--no-persistence: sessions do not survive a restart")
        } else {
            do {
                _ = try DataDirectory.check(path: dataDir)
            } catch {
                problems.append("--data-dir: \(error)")
            }
        }
        let merged = Self.loadedConfiguration.withLock { $0 }
        func located(_ message: String) -> String {
            merged?.attribute(message, schema: Self.configSchema).map { "\($0)" } ?? message
        }
        for warning in warnings { Self.printError("warning: \(located(warning))") }
        guard problems.isEmpty else {
            for problem in problems { Self.printError("Error: \(located(problem))") }
            throw ExitCode(2)
        }
        print("configuration ok")
    }

    /// Why `host` cannot be resolved to an address to bind or connect to; nil when it can.
    static func unresolvable(_ host: String) -> String? {
        var name = host
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, nil, &hints, &result)
        if let result { freeaddrinfo(result) }
        return status == 0 ? nil : "cannot resolve: \(String(cString: gai_strerror(status)))"
    }

    static func printError(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    // MARK: Logging

    /// `--log-level` when given, else by `-v`.
    var effectiveLogLevel: Logger.Level {
        if let logLevel { return logLevel.level }
        return verbose >= 2 ? .trace : (verbose == 1 ? .debug : .info)
    }

    /// Installs the process's log handler (once, before the first logger is made).
    static func bootstrapLogging(format: LogFormat, level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                return JSONLogHandler(label: label, level: level)
            }
        }
    }
}

/// `--log-format`.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text
    case json
}

/// `--log-level`: swift-log's levels by their names.
enum LogLevelArgument: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level {
        switch self {
        case .trace: return .trace
        case .debug: return .debug
        case .info: return .info
        case .notice: return .notice
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }
}
