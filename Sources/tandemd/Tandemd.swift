import Foundation
import ArgumentParser
import Logging
import NIOCore
import Replication
import ServiceLifecycle
import SessionPersistence
import SessionStore
import TandemServer
import TandemTLS
import WireProtocol

/// `tandemd`: parses the command line and runs one node until SIGTERM/SIGINT.
@main
struct Tandemd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandemd",
        abstract: "Tandem: a persistent, replicated session server that speaks the memcached protocol.",
        discussion: """
            Flags follow memcached's where memcached has one. Examples:
              tandemd                          # 127.0.0.1:11211, 1024 MB
              tandemd -p 11212 -m 4096 -t 4    # wire port 11312 (--port + 100)
              tandemd -l 0.0.0.0 -c 10000 -I 2m --secret-file /etc/tandem/secret
              tandemd -l 10.0.0.2 --secret-file /etc/tandem/secret \\
                      --role backup --peer 10.0.0.1:11311
              tandemd --config /etc/tandem/tandem.conf   # key = value lines
              tandemd --config /etc/tandem/tandem.conf --check-config

            Listening on an address other than loopback needs --secret-file (the same
            file on both nodes of a pair; make one with: openssl rand -hex 32 > secret;
            chmod 600 secret), or mutual TLS on the wire port (--tls-cert, --tls-key,
            --tls-ca), or --insecure to accept that anyone who reaches the wire port can
            replicate from and administer the node.

            TLS (deploy/README.md makes a CA and certificates for a pair):
              tandemd -l 10.0.0.1 --peer 10.0.0.2:11311 \\
                      --tls-cert a.pem --tls-key a.key --tls-ca ca.pem
            SIGHUP reads the TLS files again (for a renewed certificate).
            """
    )

    @Option(name: .customLong("config"), help: ArgumentHelp("Read settings from FILE (key = value lines, keys named as the long flags); flags given here override it.", valueName: "file"))
    var config: String?

    @Flag(name: .customLong("check-config"), help: "Check the configuration (flags, --config, the secret and SASL files, the data directory) and exit: 0 and \"configuration ok\", or the problems.")
    var checkConfig = false

    @Option(name: [.customShort("p"), .long], help: "TCP port of the memcached listener (0 picks a free port).")
    var port: Int = 11211

    @Option(name: [.customShort("l"), .long], help: "Address the memcached and wire ports listen on. Anything but loopback needs --secret-file or --insecure.")
    var listen: String = "127.0.0.1"

    @Option(name: [.customShort("m"), .customLong("memory-limit")], help: "Memory for items, in megabytes.")
    var memoryLimit: Int = 1024

    @Option(name: [.customShort("c"), .customLong("max-connections")], help: "Maximum simultaneous connections.")
    var maxConnections: Int = 4096

    @Option(name: [.customShort("I"), .customLong("max-item-size")], help: "Largest value accepted, e.g. 1m, 512k, 2048.")
    var maxItemSize: ByteSize = ByteSize(bytes: 1 << 20)

    @Option(name: [.customShort("t"), .long], help: "Event loop threads (default: number of cores).")
    var threads: Int = System.coreCount

    @Flag(name: [.customShort("M"), .customLong("disable-evictions")], help: "Refuse writes when memory is full instead of evicting.")
    var disableEvictions = false

    @Flag(name: [.customShort("v"), .long], help: "Verbose logging (repeat for more).")
    var verbose: Int

    @Option(name: .customLong("log-level"), help: "Least severe level logged: trace, debug, info, notice, warning, error or critical (default: info; -v debug, -vv trace).")
    var logLevel: LogLevelArgument?

    @Option(name: .customLong("log-format"), help: "text: one readable line per event; json: one JSON object per line (time, level, label, message, metadata).")
    var logFormat: LogFormat = .text

    @Option(name: .customLong("data-dir"), help: "Directory for the SQLite database (created if missing).")
    var dataDir: String = "tandem-data"

    @Option(name: .customLong("flush-interval"), help: "Milliseconds between write-behind commits: the most a kill -9 can lose.")
    var flushInterval: Int = 50

    @Flag(name: .customLong("no-persistence"), help: "Keep items in memory only (nothing survives a restart).")
    var noPersistence = false

    @Option(name: .customLong("disk-limit"), help: "Live data the log may hold (k/m/g suffixes), past which the least recently used items are evicted (with -M, new data is refused); auto: half of the data directory's free space at start plus the database; none: no limit. The file stays within about twice this.")
    var diskLimit: DiskLimitArgument = .automatic

    @Option(name: .customLong("wire-port"), help: "Port of Tandem's wire protocol (replication, tandemctl), bound on --listen (default: --port + 100, so 11311; with --port 0, a free port as well).")
    var wirePort: Int?

    /// How far above the memcached port the wire port sits by default: 11211
    /// and 11311, and a second node on `-p 11212` gets 11312, so two nodes
    /// share a machine with no more flags than their memcached ports.
    static let wirePortOffset = 100

    /// `--wire-port`, or the memcached port + 100 (0 with `-p 0`: a free one).
    var effectiveWirePort: Int {
        wirePort ?? (port == 0 ? 0 : port + Self.wirePortOffset)
    }

    @Option(name: .customLong("metrics-port"), help: "Port of an HTTP listener, bound on --listen, serving GET /metrics (Prometheus) and GET /health (0 picks a free port; default: none).")
    var metricsPort: Int?

    @Option(name: .customLong("role"), help: "This node's role in the pair: primary or backup.")
    var role: RoleArgument = .primary

    @Option(name: .customLong("peer"), help: "The other node's wire address, HOST:PORT (a backup replicates from it).")
    var peer: String?

    @Option(name: .customLong("replication"), help: "sync: a write is answered once the backup has it; async: at once.")
    var replication: ReplicationConfiguration.Mode = .sync

    @Option(name: .customLong("sync-timeout"), help: "Milliseconds a sync write waits for the backup before it is answered anyway (and replication degrades to async until the backup catches up).")
    var syncTimeout: Int = 1000

    @Option(name: .customLong("heartbeat-interval"), help: "Milliseconds between heartbeats on an idle replication link.")
    var heartbeatInterval: Int = 100

    @Option(name: .customLong("link-timeout"), help: "Milliseconds of silence after which the replication link is closed and re-established.")
    var linkTimeout: Int = 1000

    @Option(name: .customLong("backlog-size"), help: "Bytes of recent changes the primary keeps so a returning backup resumes without a full copy (k/m/g suffixes).")
    var backlogSize: ByteSize = ByteSize(bytes: 256 << 20)

    @Option(name: .customLong("failover-after"), help: "Milliseconds without word from the primary after which a backup promotes itself (0: never; promote with tandemctl). The default leaves writes parked on the backup time to be answered within msm's 1,000 ms timeout.")
    var failoverAfter: Int = 600

    @Option(name: .customLong("stamp-skew"), help: ArgumentHelp("Testing only: milliseconds added to the clock that stamps writes, to play a machine whose clock is off.", visibility: .hidden))
    var stampSkew: Int64 = 0

    @Option(name: .customLong("node-name"), help: "This node's name in logs and status (default: its wire address).")
    var nodeName: String = ""

    @Option(name: .customLong("sasl-users"), help: "Require SASL PLAIN (binary protocol) with the user:password lines of FILE; text connections are then refused. Keep the file chmod 600.")
    var saslUsers: String?

    @Option(
        name: .customLong("secret-file"),
        help: ArgumentHelp(
            "The pair's shared secret (at least 16 bytes, the same file on both nodes, chmod 600): every wire connection, the other node's and tandemctl's, must prove it knows it.",
            valueName: "path"
        )
    )
    var secretFile: String?

    @Flag(name: .customLong("insecure"), help: "Allow a non-loopback --listen address without --secret-file (or mutual TLS on the wire port).")
    var insecure = false

    @Option(name: .customLong("tls-cert"), help: ArgumentHelp("Turn on TLS with this certificate (PEM, the node's certificate first, then any intermediates), on the ports --tls-ports names; needs --tls-key.", valueName: "file"))
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("The private key of --tls-cert (PEM, not encrypted; chmod 600).", valueName: "file"))
    var tlsKey: String?

    @Option(name: .customLong("tls-ca"), help: ArgumentHelp("Mutual TLS on the wire port: require client certificates signed by this CA (PEM bundle), and check the peer's against it (the chain only: nodes are addressed by IP, names are not checked). Needed with --peer when the wire port uses TLS.", valueName: "file"))
    var tlsCA: String?

    @Option(name: .customLong("tls-ports"), help: ArgumentHelp("The ports that accept TLS only: wire, memcached, or wire,memcached (default with --tls-cert: both). The metrics port stays plaintext.", valueName: "ports"))
    var tlsPorts: TLSPorts?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535, got \(port)") }
        guard memoryLimit > 0 else { throw ValidationError("--memory-limit must be at least 1 (megabytes)") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be at least 1") }
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be between 1 and 1024") }
        guard maxItemSize.bytes >= 1024, maxItemSize.bytes <= 1 << 30 else {
            throw ValidationError("--max-item-size must be between 1k and 1024m")
        }
        guard (1...1000).contains(flushInterval) else {
            throw ValidationError("--flush-interval must be between 1 and 1000 milliseconds, got \(flushInterval)")
        }
        guard !dataDir.isEmpty else { throw ValidationError("--data-dir must not be empty") }
        if let wirePort {
            guard (0...65535).contains(wirePort) else { throw ValidationError("--wire-port must be between 0 and 65535, got \(wirePort)") }
            if wirePort == port, port != 0 {
                throw ValidationError("--wire-port and --port are both \(port): give them different ports")
            }
        } else if effectiveWirePort > 65535 {
            throw ValidationError(
                "--port \(port) leaves no room for the default wire port (--port + \(Self.wirePortOffset)): give --wire-port"
            )
        }
        if let metricsPort, !(0...65535).contains(metricsPort) {
            throw ValidationError("--metrics-port must be between 0 and 65535, got \(metricsPort)")
        }
        try validateTLS()
        if secretFile == nil, !insecure, !wireIsMutualTLS, !Self.isLoopback(listen) {
            throw ValidationError(
                "refusing to listen on \(listen) without --secret-file: anyone who reaches the wire port could take over replication; give --secret-file PATH, or mutual TLS on the wire port (--tls-cert, --tls-key, --tls-ca), or --insecure to accept the risk"
            )
        }
        if role == .backup, peer == nil {
            throw ValidationError("a backup needs --peer HOST:PORT: the primary's wire address")
        }
        if let peer, Self.parsePeer(peer) == nil {
            throw ValidationError("--peer must be HOST:PORT, got \(peer)")
        }
        guard (1...600_000).contains(syncTimeout) else { throw ValidationError("--sync-timeout must be between 1 and 600000 ms") }
        guard (1...60_000).contains(heartbeatInterval) else { throw ValidationError("--heartbeat-interval must be between 1 and 60000 ms") }
        guard linkTimeout > heartbeatInterval else {
            throw ValidationError("--link-timeout (\(linkTimeout) ms) must be longer than --heartbeat-interval (\(heartbeatInterval) ms)")
        }
        guard (0...600_000).contains(failoverAfter) else { throw ValidationError("--failover-after must be between 0 and 600000 ms") }
        if failoverAfter > 0, failoverAfter <= heartbeatInterval * 2 {
            throw ValidationError("--failover-after (\(failoverAfter) ms) must be more than twice --heartbeat-interval (\(heartbeatInterval) ms), or 0")
        }
        guard backlogSize.bytes >= 1 << 20 else { throw ValidationError("--backlog-size must be at least 1m") }
        // A replicated item must fit one wire frame (16 MiB) with room to spare.
        guard maxItemSize.bytes <= WireFrame.largestItemValue else {
            throw ValidationError("--max-item-size must be at most \(WireFrame.largestItemValue >> 20)m")
        }
        guard maxItemSize.bytes <= memoryLimit << 20 else {
            throw ValidationError("--max-item-size (\(maxItemSize.bytes) bytes) cannot exceed --memory-limit (\(memoryLimit) MB)")
        }
    }

    func run() async throws {
        if checkConfig {
            try checkConfiguration()
            return
        }
        Self.bootstrapLogging(format: logFormat, level: effectiveLogLevel)
        let logger = Logger(label: "tandemd")
        var users: SASLUsers?
        if let saslUsers {
            do {
                users = try SASLUsers.load(path: saslUsers)
            } catch {
                logger.critical("cannot start: \(error)")
                throw ExitCode(2)
            }
            if let attributes = try? FileManager.default.attributesOfItem(atPath: saslUsers),
                let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0
            {
                logger.warning("the SASL users file is readable by other users; chmod 600 it", metadata: ["file": "\(saslUsers)"])
            }
        }
        var secret: WireSecret?
        if let secretFile {
            do {
                secret = try WireSecret(contentsOfFile: secretFile)
            } catch {
                logger.critical("cannot start: \(error)")
                throw ExitCode(2)
            }
        }
        if secret == nil, !wireIsMutualTLS, !Self.isLoopback(listen) {
            logger.warning("the wire port takes anyone who reaches it (--insecure, no --secret-file)", metadata: ["listen": "\(listen)"])
        }
        let tls = try loadTLS(logger: logger)
        var configuration = ServerConfiguration(
            host: listen, port: port, threads: threads, maxConnections: maxConnections,
            store: StoreConfiguration(
                memoryLimit: memoryLimit << 20, evictionsEnabled: !disableEvictions, maxItemSize: maxItemSize.bytes
            ).skewed(by: stampSkew),
            verbosity: verbose,
            persistence: noPersistence ? nil : {
                var persistence = PersistenceConfiguration(dataDirectory: dataDir, flushIntervalMillis: flushInterval)
                persistence.diskLimit = diskLimit.limit
                return persistence
            }(),
            pair: PairConfiguration(
                wireHost: listen, wirePort: effectiveWirePort, role: role.nodeRole, peer: peer.flatMap(Self.parsePeer),
                replication: ReplicationConfiguration(
                    mode: replication, syncTimeout: .milliseconds(Int64(syncTimeout)),
                    heartbeatInterval: .milliseconds(Int64(heartbeatInterval)), linkTimeout: .milliseconds(Int64(linkTimeout)),
                    backlogSize: backlogSize.bytes, nodeName: nodeName, secret: secret
                ).failingOver(after: failoverAfter).securing(with: tls),
                secret: secret
            )
        )
        configuration.saslUsers = users
        configuration.metricsPort = metricsPort
        configuration.tls = tls
        let hangup = Self.reloadOnHangup(tls, logger: logger)
        defer { hangup.cancel() }
        do {
            let node = try TandemNode(configuration: configuration, logger: logger)
            // The node recovers its data once the group runs it, so a SIGTERM
            // or SIGINT during recovery is a graceful stop too. Its parts
            // start in order and stop in reverse; systemd hears READY=1 once
            // the memcached port serves and STOPPING=1 before the node drains.
            let group = ServiceGroup(
                services: [node, SystemdAnnouncer(node: node, host: configuration.host, logger: logger)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
            try await group.run()
        } catch let error as PersistenceError {
            // One clear line naming the file, and a non-zero exit.
            logger.critical("cannot start: \(error)")
            throw ExitCode(2)
        } catch let error as BindFailure {
            // One line naming the address, the flag and what to do.
            logger.critical("cannot start: \(error)")
            throw ExitCode(2)
        }
    }
}

extension StoreConfiguration {
    func skewed(by millis: Int64) -> StoreConfiguration {
        var configuration = self
        configuration.stampSkewMillis = millis
        return configuration
    }
}

extension ReplicationConfiguration {
    func failingOver(after millis: Int) -> ReplicationConfiguration {
        var configuration = self
        configuration.failoverAfter = .milliseconds(Int64(millis))
        return configuration
    }

    func securing(with tls: NodeTLS?) -> ReplicationConfiguration {
        var configuration = self
        configuration.tls = tls
        return configuration
    }
}

extension Tandemd {
    /// Whether `host` is a loopback address (127.0.0.0/8, ::1, `localhost`),
    /// which only this machine can reach. Other host names count as not
    /// loopback: what they resolve to can change.
    static func isLoopback(_ host: String) -> Bool {
        var address = host
        if address.hasPrefix("["), address.hasSuffix("]") { address = String(address.dropFirst().dropLast()) }
        if address.lowercased() == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            // s_addr is in network order: its first byte is the first octet.
            return withUnsafeBytes(of: &v4) { $0.first } == 127
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            let loopback: [UInt8] = Array(repeating: 0, count: 15) + [1]
            // ::ffff:127.x.x.x is IPv4 loopback written as IPv6.
            let mappedPrefix: [UInt8] = Array(repeating: 0, count: 10) + [0xFF, 0xFF]
            return bytes == loopback || (Array(bytes.prefix(12)) == mappedPrefix && bytes[12] == 127)
        }
        return false
    }

    /// Splits `HOST:PORT` (`[v6]:PORT` too).
    static func parsePeer(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }
}

/// `--role`.
enum RoleArgument: String, ExpressibleByArgument, CaseIterable {
    case primary
    case backup

    var nodeRole: NodeRole {
        switch self {
        case .primary: return .primary
        case .backup: return .backup
        }
    }
}

extension ReplicationConfiguration.Mode: ExpressibleByArgument {}

/// A size argument with an optional `k`/`m`/`g` suffix, as memcached's `-I` takes.
/// `--disk-limit`: a size, `auto` or `none`.
struct DiskLimitArgument: ExpressibleByArgument, Sendable {
    let limit: PersistenceConfiguration.DiskLimit

    static let automatic = DiskLimitArgument(limit: .automatic)

    init(limit: PersistenceConfiguration.DiskLimit) {
        self.limit = limit
    }

    init?(argument: String) {
        switch argument.lowercased() {
        case "auto": limit = .automatic
        case "none": limit = .unlimited
        default:
            guard let size = ByteSize(argument: argument), size.bytes >= 1 << 20 else { return nil }
            limit = .bytes(size.bytes)
        }
    }

    var defaultValueDescription: String {
        switch limit {
        case .automatic: "auto"
        case .unlimited: "none"
        case .bytes(let bytes): ByteSize(bytes: bytes).defaultValueDescription
        }
    }
}

struct ByteSize: ExpressibleByArgument, Sendable {
    let bytes: Int

    init(bytes: Int) {
        self.bytes = bytes
    }

    init?(argument: String) {
        let lowered = argument.lowercased()
        var digits = Substring(lowered)
        var multiplier = 1
        switch lowered.last {
        case "k": multiplier = 1 << 10
        case "m": multiplier = 1 << 20
        case "g": multiplier = 1 << 30
        default: break
        }
        if multiplier != 1 { digits = digits.dropLast() }
        guard let value = Int(digits), value > 0 else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        self.bytes = bytes
    }

    var defaultValueDescription: String {
        bytes % (1 << 20) == 0 ? "\(bytes >> 20)m" : "\(bytes)"
    }
}
