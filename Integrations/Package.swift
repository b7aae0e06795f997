// swift-tools-version: 6.1
//
// Tandem's web framework integrations: a package of their own, so that
// building tandemd (the root package) never builds Hummingbird or Vapor.
// It depends on the root package by path and uses its TandemClient.
//
//   swift build                 # the libraries and the example apps
//   ./test                      # build and test, with the time it took
import PackageDescription

let package = Package(
    name: "TandemIntegrations",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "HummingbirdTandem", targets: ["HummingbirdTandem"]),
        .library(name: "VaporTandem", targets: ["VaporTandem"]),
        .executable(name: "hummingbird-sessions", targets: ["HummingbirdSessions"]),
        .executable(name: "vapor-sessions", targets: ["VaporSessions"]),
    ],
    dependencies: [
        .package(name: "Tandem", path: ".."),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", exact: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", exact: "2.5.0"),
        .package(url: "https://github.com/vapor/vapor.git", exact: "4.122.3"),
    ],
    targets: [
        // What both frameworks' drivers share: one TandemPairClient facade
        // (JSON values, keys made valid for memcached, a set that keeps the
        // item's expiry) and the parsing of node lists. Not a product.
        .target(
            name: "TandemSessionSupport",
            dependencies: [
                .product(name: "TandemClient", package: "Tandem"),
                .product(name: "WireProtocol", package: "Tandem"),
            ]
        ),

        // Hummingbird 2: a PersistDriver (sessions via hummingbird-auth's
        // SessionMiddleware, or any other use of `persist`).
        .target(
            name: "HummingbirdTandem",
            dependencies: [
                "TandemSessionSupport",
                .product(name: "TandemClient", package: "Tandem"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),

        // Vapor 4: an AsyncSessionDriver, `app.sessions.use(.tandem(...))`.
        .target(
            name: "VaporTandem",
            dependencies: [
                "TandemSessionSupport",
                .product(name: "TandemClient", package: "Tandem"),
                .product(name: "Vapor", package: "vapor"),
            ]
        ),

        // The example apps (Examples/README.md).
        .executableTarget(
            name: "HummingbirdSessions",
            dependencies: [
                "HummingbirdTandem",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
            ],
            path: "Examples/HummingbirdSessions"
        ),
        .executableTarget(
            name: "VaporSessions",
            dependencies: [
                "VaporTandem",
                .product(name: "Vapor", package: "vapor"),
            ],
            path: "Examples/VaporSessions"
        ),

        // Starts real tandemd processes (a standalone node, a pair) on
        // 127.0.0.1 with ports the kernel picks, for the tests below.
        .target(
            name: "TandemNodeSupport",
            dependencies: [.product(name: "TandemClient", package: "Tandem")],
            path: "Tests/TandemNodeSupport"
        ),

        .testTarget(
            name: "HummingbirdTandemTests",
            dependencies: [
                "HummingbirdTandem",
                "HummingbirdSessions",
                "TandemNodeSupport",
                .product(name: "TandemClient", package: "Tandem"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
            ]
        ),
        .testTarget(
            name: "VaporTandemTests",
            dependencies: [
                "VaporTandem",
                "VaporSessions",
                "TandemNodeSupport",
                .product(name: "TandemClient", package: "Tandem"),
                .product(name: "Vapor", package: "vapor"),
                .product(name: "VaporTesting", package: "vapor"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
