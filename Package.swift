// swift-tools-version: 6.1
import PackageDescription

/// The pair simulation runs thousands of seeded schedules of the real store,
/// wire and replication code in `swift test`: optimized, even in a debug
/// build, they run several times faster. Preconditions still trap, and
/// `-enable-testing` (which `@testable import` needs) stays on.
let optimizedInTests: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "Tandem",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tandemd", targets: ["tandemd"]),
        .executable(name: "tandemctl", targets: ["tandemctl"]),
        .library(name: "SessionStore", targets: ["SessionStore"]),
        .library(name: "MemcacheProtocol", targets: ["MemcacheProtocol"]),
        .library(name: "SessionPersistence", targets: ["SessionPersistence"]),
        .library(name: "WireProtocol", targets: ["WireProtocol"]),
        .library(name: "TandemServer", targets: ["TandemServer"]),
        .library(name: "TandemClient", targets: ["TandemClient"]),
        .library(name: "SessionInspection", targets: ["SessionInspection"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // /metrics: the Prometheus text format (each node owns its registry; see MetricsServer.swift).
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Optional TLS on the wire and memcached ports (TandemTLS).
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // The in-memory session store: sharded map, expiry, LRU, memory limit.
        // Knows nothing of sockets, protocols or SQLite.
        .target(name: "SessionStore", swiftSettings: optimizedInTests),

        // The system SQLite (Debian: libsqlite3-dev).
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),

        // Write-behind of the store's change stream into SQLite, and recovery at start.
        .target(
            name: "SessionPersistence",
            dependencies: [
                "CSQLite",
                "SessionStore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // memcached text and meta protocol: decoders and reply encoders only.
        .target(
            name: "MemcacheProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),

        // Tandem's own length-prefixed binary protocol: frame codec and typed messages.
        // Shared by the server, replication and TandemClient; also the
        // handshake of a connecting side and its shared-secret
        // authentication (HMAC-SHA256).
        .target(
            name: "WireProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: optimizedInTests
        ),

        // Optional TLS: loads and checks the PEM files tandemd and tandemctl are
        // given and builds the server and client contexts from them (mutual TLS
        // between the nodes), and opens client connections to a wire port with
        // them. The only target that imports NIOSSL directly.
        .target(
            name: "TandemTLS",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),

        // The pair: the primary's backlog and per-backup sessions, the backup's
        // replication client, sync acknowledgements, and the short links on
        // which a node asks its peer where it stands (typed messages, not the
        // status shown to people, so the server needs no TandemClient).
        .target(
            name: "Replication",
            dependencies: [
                "SessionStore",
                "WireProtocol",
                "TandemTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: optimizedInTests
        ),

        // Listeners, the dispatcher that runs commands against the store, stats, lifecycle.
        .target(
            name: "TandemServer",
            dependencies: [
                "SessionStore",
                "SessionPersistence",
                "MemcacheProtocol",
                "WireProtocol",
                "Replication",
                "TandemTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),

        // A Swift client for the wire port, used by tandemctl and applications.
        .target(
            name: "TandemClient",
            dependencies: [
                "WireProtocol",
                "TandemTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // Decodes what memcached-session-manager stores (sessions, validity records,
        // locks) for display; its own Java serialization reader, standard library only.
        .target(name: "SessionInspection"),

        // How tandemd is run: the configuration file format (--config) and the
        // JSON log format (--log-format json). No networking, no store.
        .target(
            name: "TandemConfig",
            dependencies: [.product(name: "Logging", package: "swift-log")]
        ),

        // @main: argument parsing and start-up, nothing else.
        .executableTarget(
            name: "tandemd",
            dependencies: [
                "TandemConfig",
                "TandemServer",
                "TandemTLS",
                "Replication",
                "WireProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The admin CLI: talks to a node over the wire protocol through TandemClient.
        .executableTarget(
            name: "tandemctl",
            dependencies: [
                "TandemClient",
                "TandemTLS",
                "WireProtocol",
                "SessionInspection",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // The data path side by side: TandemClient against the memcached text
        // protocol on one tandemd (Benchmarks/wire-data.sh runs it).
        .executableTarget(
            name: "wire-data-bench",
            dependencies: [
                "TandemClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Benchmarks/wire-data"
        ),

        // Drives a TandemPairClient while the process-level tests kill nodes
        // under it (Tests/integration/test_pair_client.py).
        .executableTarget(
            name: "tandem-pair-client-driver",
            dependencies: ["TandemClient"],
            path: "Tests/integration/pair-client"
        ),

        // What several test targets share: the seeded generator and its draws.
        .target(name: "TandemTestSupport", path: "Tests/TandemTestSupport"),

        .testTarget(name: "SessionStoreTests", dependencies: ["SessionStore", "TandemTestSupport"]),
        .testTarget(
            name: "TandemTLSTests",
            dependencies: [
                "TandemTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "TandemConfigTests", dependencies: ["TandemConfig", .product(name: "Logging", package: "swift-log")]),
        // Decodes the msm fixtures in Tests/fixtures/msm and fuzzes the decoder.
        .testTarget(name: "SessionInspectionTests", dependencies: ["SessionInspection", "TandemTestSupport"]),
        .testTarget(
            name: "SessionPersistenceTests",
            dependencies: ["SessionPersistence", "SessionStore", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "MemcacheProtocolTests",
            dependencies: [
                "MemcacheProtocol",
                "TandemTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "WireProtocolTests",
            dependencies: [
                "WireProtocol",
                "TandemTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        // The pair's rules on their own: transition tables, and a seeded
        // simulation of two nodes, their stores and replication over a faulty
        // network (PairSimulationTests); the primary's backlog.
        .testTarget(
            name: "ReplicationTests",
            dependencies: [
                "Replication",
                "TandemTestSupport",
                "WireProtocol",
                "SessionStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: optimizedInTests
        ),
        .testTarget(
            name: "TandemServerTests",
            dependencies: [
                "TandemServer",
                "TandemClient",
                "Replication",
                "WireProtocol",
                "SessionStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
