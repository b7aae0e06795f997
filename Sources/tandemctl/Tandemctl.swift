import ArgumentParser
import Foundation
import TandemClient
import TandemTLS
import WireProtocol

/// `tandemctl`: inspects and operates a Tandem node over its wire port.
@main
struct Tandemctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandemctl",
        abstract: "Inspect and operate a Tandem node over its wire port.",
        discussion: """
            Exit codes: 0 ok, 1 usage error (or an unusable secret or TLS file, or a bad input
            file), 3 node unreachable (or it speaks TLS and this did not, or the other way
            round), 4 authentication required or refused (a TLS certificate too), 5 the node
            answered with an error, 6 the pair is not healthy (status), 7 no such session.

            The connection options (--host, --port, --secret-file, --tls and the other --tls
            options, --json) may come before the subcommand or after it.

            Examples:
              tandemctl status
              tandemctl status --host 10.0.0.2 --port 11311 --secret-file /etc/tandem/secret --json
              tandemctl --host 10.0.0.2 --port 11312 sessions list
              TANDEM_HOST=127.0.0.1 TANDEM_PORT=11312 tandemctl stats
              TANDEM_SECRET_FILE=/etc/tandem/secret tandemctl ping
              tandemctl status --host 10.0.0.1 --tls-ca /etc/tandem/ca.pem \\
                        --tls-cert admin.pem --tls-key admin.key   # a node with mutual TLS
            """,
        subcommands: [Status.self, Stats.self, Ping.self, Sessions.self, Watch.self, Backup.self, Promote.self, Demote.self]
    )
}

/// Where the node is; flags override the environment.
struct NodeOptions: ParsableArguments {
    @Option(help: "The node's wire address (env TANDEM_HOST).")
    var host: String = ProcessInfo.processInfo.environment["TANDEM_HOST"] ?? "127.0.0.1"

    @Option(help: "The node's wire port (env TANDEM_PORT).")
    var port: Int = ProcessInfo.processInfo.environment["TANDEM_PORT"].flatMap(Int.init) ?? 11311

    @Option(
        name: .customLong("secret-file"),
        help: ArgumentHelp("The node's shared secret, as given to tandemd --secret-file (env TANDEM_SECRET_FILE).", valueName: "path")
    )
    var secretFile: String?

    @Flag(help: "Connect with TLS, for a node whose wire port uses it (env TANDEM_TLS=1; implied by the other --tls options).")
    var tls = false

    @Option(
        name: .customLong("tls-ca"),
        help: ArgumentHelp("Verify the node's certificate against this PEM CA bundle (the pair's CA; the node's name is not checked). Without it: the system's trust store, and the certificate must name --host (env TANDEM_TLS_CA).", valueName: "path")
    )
    var tlsCA: String?

    @Option(
        name: .customLong("tls-cert"),
        help: ArgumentHelp("A client certificate (PEM) for a node that requires one (mutual TLS: tandemd --tls-ca); with --tls-key (env TANDEM_TLS_CERT).", valueName: "path")
    )
    var tlsCert: String?

    @Option(
        name: .customLong("tls-key"),
        help: ArgumentHelp("The private key (PEM) of --tls-cert (env TANDEM_TLS_KEY).", valueName: "path")
    )
    var tlsKey: String?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    private static func environment(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// An Optional option cannot default to the environment, so the fallback is here.
    var secretFilePath: String? {
        secretFile ?? Self.environment("TANDEM_SECRET_FILE")
    }

    var tlsCAPath: String? { tlsCA ?? Self.environment("TANDEM_TLS_CA") }
    var tlsCertPath: String? { tlsCert ?? Self.environment("TANDEM_TLS_CERT") }
    var tlsKeyPath: String? { tlsKey ?? Self.environment("TANDEM_TLS_KEY") }

    var usesTLS: Bool {
        tls || ["1", "true", "yes"].contains(Self.environment("TANDEM_TLS")?.lowercased() ?? "")
            || tlsCAPath != nil || tlsCertPath != nil || tlsKeyPath != nil
    }

    /// The TLS to connect with, if any; an unusable file is a usage error (1).
    func loadTLS() throws -> ClientTLS? {
        guard usesTLS else { return nil }
        switch (tlsCertPath, tlsKeyPath) {
        case (.some, nil): throw Failure(code: 1, message: "--tls-cert needs --tls-key, the certificate's private key")
        case (nil, .some): throw Failure(code: 1, message: "--tls-key needs --tls-cert, the certificate it belongs to")
        default: break
        }
        do {
            return try ClientTLS.load(ca: tlsCAPath, certificate: tlsCertPath, key: tlsKeyPath)
        } catch {
            throw Failure(code: 1, message: "\(error)")
        }
    }

    /// Connects to another node of the pair (`status` asks the peer too) the same way.
    func connect(host: String, port: Int, timeoutSeconds: Int64) async throws -> TandemClient {
        try await TandemClient.connect(
            host: host, port: port, name: "tandemctl", secret: try loadSecret(), tls: try loadTLS(), timeout: .seconds(timeoutSeconds)
        )
    }

    /// The shared secret, if one was given (the same for both nodes of a pair).
    func loadSecret() throws -> WireSecret? {
        guard let secretFile = secretFilePath else { return nil }
        do {
            return try WireSecret(contentsOfFile: secretFile)
        } catch {
            throw Failure(code: 1, message: "\(error)")
        }
    }

    func connect() async throws -> TandemClient {
        let secretFile = secretFilePath
        do {
            return try await connect(host: host, port: port, timeoutSeconds: 3)
        } catch TandemClientError.authenticationFailed(let reason) {
            // Name the file: the usual cause is a secret file of another pair, or an old one.
            throw Failure(code: 4, message: "authentication failed with the secret in \(secretFile ?? "?"): \(reason)")
        } catch TandemClientError.tls(let host, let port, let failure, let usingTLS) {
            throw Failure(tls: failure, host: host, port: port, usingTLS: usingTLS, options: self)
        } catch let error as TandemClientError {
            throw Failure(error)
        }
    }
}

/// A failure with its exit code and a one-line message that says what to do.
struct Failure: Error, CustomStringConvertible {
    let code: Int32
    let message: String

    init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    init(_ error: TandemClientError) {
        switch error {
        case .unreachable(let host, let port, _):
            self.init(code: 3, message: "cannot reach a Tandem node at \(host):\(port); is tandemd running, and is that its --wire-port?")
        case .authenticationRequired:
            self.init(code: 4, message: "authentication required: the node has a shared secret; give it with --secret-file PATH (or TANDEM_SECRET_FILE)")
        case .authenticationFailed(let reason):
            self.init(code: 4, message: "authentication failed: \(reason)")
        case .timedOut, .connectionClosed, .notSent:
            self.init(code: 3, message: "the node stopped answering: \(error)")
        case .server, .unexpectedReply, .unsupported:
            self.init(code: 5, message: "\(error)")
        case .tls(let host, let port, let failure, let usingTLS):
            self.init(tls: failure, host: host, port: port, usingTLS: usingTLS, options: nil)
        case .closedBeforeHandshake(let host, let port):
            self.init(code: 3, message: "\(host):\(port) closed the connection before the handshake; if the node's wire port uses TLS, add --tls (and --tls-ca FILE)")
        }
    }

    /// A TLS problem in words that say what to change: certificates that are
    /// not trusted are an authentication failure (4); TLS on one side only
    /// means the node cannot be talked to (3).
    init(tls failure: TLSHandshakeFailure, host: String, port: Int, usingTLS: Bool, options: NodeOptions?) {
        let node = "\(host):\(port)"
        let ca = options?.tlsCAPath.map { "the CA in --tls-ca \($0)" } ?? "a CA of the system's trust store (give the pair's CA with --tls-ca FILE)"
        let certificate = options?.tlsCertPath.map { "--tls-cert \($0)" } ?? "this client's certificate"
        switch failure.cause {
        case .expectsTLS:
            self.init(code: 3, message: "the node at \(node) speaks TLS on its wire port: add --tls (with --tls-ca FILE, the pair's CA, and --tls-cert/--tls-key if it requires client certificates)")
        case .notTLS:
            self.init(code: 3, message: "the node at \(node) does not speak TLS on that port (its wire port is plaintext): leave out --tls and the --tls options")
        case .untrustedPeer:
            var reasons = ["it is not signed by \(ca)", "has expired"]
            // Only the system's trust store comes with a check of the name.
            if options?.tlsCAPath == nil { reasons.append("does not name \(host)") }
            self.init(code: 4, message: "the certificate of the node at \(node) is not trusted: \(reasons.joined(separator: ", or ")) (\(failure.detail))")
        case .certificateRefused:
            self.init(code: 4, message: "the node at \(node) refused \(certificate): it is not signed by the CA of the node's --tls-ca, or has expired (\(failure.detail))")
        case .certificateRequired, .noClientCertificate:
            self.init(code: 4, message: "the node at \(node) requires a client certificate (mutual TLS): give --tls-cert and --tls-key (or TANDEM_TLS_CERT and TANDEM_TLS_KEY), signed by the node's CA")
        case .closed:
            self.init(code: 3, message: "the node at \(node) closed the connection during the TLS handshake; does its wire port use TLS, and does it require a client certificate (--tls-cert/--tls-key)?")
        case .timedOut, .other:
            self.init(code: 3, message: "TLS handshake with \(node) failed: \(failure)")
        }
    }

    var description: String { message }
}

extension AsyncParsableCommand {
    /// Runs `body`, turning failures into a one-line message on stderr and their exit code.
    func reporting(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let failure as Failure {
            FileHandle.standardError.write(Data("tandemctl: \(failure.message)\n".utf8))
            throw ExitCode(failure.code)
        } catch let error as TandemClientError {
            let failure = Failure(error)
            FileHandle.standardError.write(Data("tandemctl: \(failure.message)\n".utf8))
            throw ExitCode(failure.code)
        }
    }
}

/// Prints name/value pairs as an aligned table or a JSON object.
func printProperties(_ properties: [(name: String, value: String)], json: Bool) throws {
    if json {
        var object: [String: String] = [:]
        for property in properties { object[property.name] = property.value }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        print(String(decoding: data, as: UTF8.self))
        return
    }
    let width = properties.map(\.name.count).max() ?? 0
    for property in properties {
        print(property.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + property.value)
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Role, replication position, peer and lag, persistence, items, memory, connections, uptime.",
        discussion: """
            The first line is a verdict: healthy (the pair replicates in sync, or the backup \
            follows the primary), degraded (no backup, async after a timeout, a backup \
            resyncing or down, storage errors). Exit code 6 unless healthy.

            Example: tandemctl status --json | jq .verdict
            """
    )

    @OptionGroup var node: NodeOptions

    /// What `status` shows, in this order.
    static let fields = [
        "role", "epoch", "replication_state", "replication_mode", "link_state", "replication_id", "replication_offset",
        "peer", "peer_name", "peer_offset", "peer_lag_changes", "peer_lag_ms", "peer_last_contact_ms",
        "full_resyncs", "partial_resyncs", "partial_resyncs_after_promotion", "history_previous", "sync_timeouts", "forwarded_writes",
        "peer_address", "failovers", "failover_after_ms", "last_promotion_time", "last_promotion_reason",
        "reconciled_changes", "reconcile_conflicts",
        "persistence", "persistence_pending", "persistence_lag_ms", "persistence_errors", "persistence_last_error",
        "curr_items", "bytes", "limit_maxbytes", "cold_items", "cold_bytes", "cold_reads", "cold_read_mean_us", "warming_up",
        "persistence_log_bytes", "persistence_live_bytes", "persistence_compactions", "disk_limit", "disk_full", "evictions",
        "curr_connections", "uptime", "version", "tls_ports",
    ]

    func run() async throws {
        try await reporting {
            let client = try await node.connect()
            let all = try await client.status()
            try? await client.close()
            let values = Dictionary(all.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
            // The other node too, when this one knows where it is.
            var peer: [String: String]?
            var peerError: String?
            if let address = values["peer_address"], address != "none", let (host, port) = Self.split(address) {
                do {
                    let other = try await node.connect(host: host, port: port, timeoutSeconds: 2)
                    peer = Dictionary(try await other.status().map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
                    try? await other.close()
                } catch {
                    peerError = "\(error)"
                }
            }
            var (verdict, reason) = Self.verdict(values)
            if let peer {
                (verdict, reason) = Self.pairVerdict(values, peer, own: (verdict, reason))
            } else if peerError != nil, verdict == "healthy" {
                (verdict, reason) = ("degraded", "the peer at \(values["peer_address"] ?? "?") does not answer")
            }
            var shown: [(name: String, value: String)] = [("verdict", verdict), ("reason", reason)]
            for field in Self.fields { if let value = values[field] { shown.append((field, value)) } }
            if node.json {
                var object: [String: Any] = Dictionary(shown.map { ($0.name, $0.value as Any) }, uniquingKeysWith: { first, _ in first })
                if let peer {
                    object["peer_status"] = Dictionary(Self.fields.compactMap { field in peer[field].map { (field, $0) } }, uniquingKeysWith: { first, _ in first })
                } else if let peerError {
                    object["peer_status"] = ["error": peerError]
                }
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                try printProperties(shown, json: false)
                if let peer {
                    print("")
                    print("peer \(values["peer_address"] ?? ""):")
                    try printProperties(Self.fields.compactMap { field in peer[field].map { ("  " + field, $0) } }, json: false)
                } else if let peerError {
                    print("")
                    print("peer \(values["peer_address"] ?? ""): \(peerError)")
                }
            }
            if verdict != "healthy" { throw ExitCode(6) }
        }
    }

    static func split(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else { return nil }
        return (String(address[..<colon]), port)
    }

    /// Both nodes' view: two primaries is a split; otherwise the pair is as healthy as its less healthy node.
    static func pairVerdict(_ own: [String: String], _ peer: [String: String], own ownVerdict: (String, String)) -> (String, String) {
        if own["role"] == "primary", peer["role"] == "primary" {
            return ("split", "both nodes are primary (epochs \(own["epoch"] ?? "?") and \(peer["epoch"] ?? "?")); the lower epoch steps down when they reach each other")
        }
        let peerVerdict = verdict(peer)
        if ownVerdict.0 != "healthy" { return ownVerdict }
        if peerVerdict.0 != "healthy" { return ("degraded", "peer: \(peerVerdict.1)") }
        return ownVerdict
    }

    static func verdict(_ values: [String: String]) -> (String, String) {
        if let errors = values["persistence_errors"], errors != "0", values["persistence_pending"] != "0" {
            return ("degraded", "storage is failing; serving from memory (\(values["persistence_last_error"] ?? "?"))")
        }
        switch (values["role"], values["replication_state"], values["link_state"]) {
        case ("primary", "sync", _): return ("healthy", "the backup acknowledges every write")
        case ("primary", "async", "up"): return ("healthy", "the backup follows asynchronously")
        case ("primary", "async_no_backup", _): return ("degraded", "no backup is connected")
        case ("primary", "degraded_async", _): return ("degraded", "the backup fell behind; writes do not wait for it")
        case ("primary", "resyncing", _): return ("degraded", "the backup is resynchronising")
        case ("backup", _, "streaming"): return ("healthy", "following the primary")
        case ("backup", _, let link): return ("degraded", "link to the primary is \(link ?? "unknown")")
        case ("joining", _, _): return ("degraded", "starting: comparing its data with its peer's")
        default: return ("degraded", "a standalone node: nothing replicates it")
        }
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every counter the node keeps.",
        discussion: "Example: tandemctl stats --json | jq '.get_hits'"
    )

    @OptionGroup var node: NodeOptions

    func run() async throws {
        try await reporting {
            let client = try await node.connect()
            let stats = try await client.stats()
            try? await client.close()
            try printProperties(stats, json: node.json)
        }
    }
}

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Round-trip time to the node.",
        discussion: "Example: tandemctl ping --port 11312"
    )

    @OptionGroup var node: NodeOptions

    func run() async throws {
        try await reporting {
            let client = try await node.connect()
            let elapsed = try await client.ping()
            try? await client.close()
            let micros = elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000
            if node.json {
                print("{\"role\": \"\(client.server.nodeRole)\", \"node\": \"\(client.server.nodeName)\", \"rtt_us\": \(micros)}")
            } else {
                print("\(client.server.nodeName) (\(client.server.nodeRole)): \(micros) µs")
            }
        }
    }
}

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make this node the primary, in a new epoch.",
        discussion: """
            The node stops following its primary, raises its epoch, stores it, and takes \
            writes. The old primary steps down when it meets the higher epoch, sends what \
            only it had for merging, and follows. Prints the new epoch.

            Example: tandemctl promote --port 11312 --reason "maintenance of node a"
            """
    )

    @OptionGroup var node: NodeOptions

    @Option(help: "Why, for the logs and status (last_promotion_reason).")
    var reason: String = "tandemctl promote"

    func run() async throws {
        try await reporting {
            let client = try await node.connect()
            let epoch = try await client.promote(reason: reason)
            try? await client.close()
            try printRoleChange(node: client.server.nodeName, role: "primary", epoch: epoch, json: node.json)
        }
    }
}

struct Demote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand over to the peer: it becomes the primary, this node follows it.",
        discussion: """
            Refused (exit 5) when the node has no --peer or the peer cannot take over: a pair \
            is never left without a primary by this command.

            Example: tandemctl demote --port 11311
            """
    )

    @OptionGroup var node: NodeOptions

    @Option(help: "Why, for the logs and status.")
    var reason: String = "tandemctl demote"

    func run() async throws {
        try await reporting {
            let client = try await node.connect()
            let epoch = try await client.demote(reason: reason)
            try? await client.close()
            try printRoleChange(node: client.server.nodeName, role: "backup", epoch: epoch, json: node.json)
        }
    }
}

func printRoleChange(node: String, role: String, epoch: UInt64, json: Bool) throws {
    if json {
        print("{\"node\": \"\(node)\", \"role\": \"\(role)\", \"epoch\": \(epoch)}")
    } else {
        print("\(node) is now \(role == "primary" ? "the primary" : "a backup") in epoch \(epoch)")
    }
}
