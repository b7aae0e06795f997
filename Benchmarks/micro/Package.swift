// swift-tools-version: 6.1
// Micro-benchmarks of Tandem's hot paths, with ordo-one/benchmark: the
// memcached decoder, the store, and the persistence batcher. A package of
// its own so that the main build and CI do not carry the benchmark
// framework. Run from this directory: `swift package benchmark`.
import PackageDescription

let package = Package(
    name: "TandemMicroBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named: a path dependency is otherwise known by its directory name.
        .package(name: "Tandem", path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "TandemBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "SessionStore", package: "Tandem"),
                .product(name: "MemcacheProtocol", package: "Tandem"),
                .product(name: "SessionPersistence", package: "Tandem"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/TandemBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
