import Benchmark
import Foundation
import Logging
import MemcacheProtocol
import NIOCore
import SessionPersistence
import SessionStore

// The hot paths, one at a time: regressions show here before they show in
// the side-by-side runs against memcached (Benchmarks/side-by-side.sh).

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .cpuTotal],
        maxDuration: .seconds(3)
    )

    // MARK: The memcached decoder

    let value2K = String(repeating: "v", count: 2048)
    let getLines = ByteBuffer(string: (0..<1000).map { "get session-\($0)\r\n" }.joined())
    let setLines = ByteBuffer(string: (0..<1000).map { "set session-\($0) 0 1800 2048\r\n\(value2K)\r\n" }.joined())

    Benchmark("decode 1000 gets", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            var input = getLines
            var decoder = MemcacheDecoder()
            var decoded = 0
            while let command = try decoder.next(&input) {
                blackHole(command)
                decoded += 1
            }
            precondition(decoded == 1000)
        }
    }

    Benchmark("decode 1000 sets of 2 KB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            var input = setLines
            var decoder = MemcacheDecoder()
            var decoded = 0
            while let command = try decoder.next(&input) {
                blackHole(command)
                decoded += 1
            }
            precondition(decoded == 1000)
        }
    }

    // MARK: The store

    let keys = (0..<50_000).map { Array("session-\($0)".utf8) }
    let value = [UInt8](repeating: 0x76, count: 2048)

    Benchmark("store: set 2 KB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 512 << 20))
        var index = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let key = keys[index % keys.count]
            index += 1
            key.withUnsafeBytes { k in
                value.withUnsafeBytes { v in
                    blackHole(store.store(k, value: v, request: StoreRequest(mode: .set, deadline: .never)))
                }
            }
        }
    }

    Benchmark("store: get hit", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 512 << 20))
        for key in keys {
            key.withUnsafeBytes { k in value.withUnsafeBytes { v in _ = store.store(k, value: v, request: StoreRequest(mode: .set)) } }
        }
        var index = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let key = keys[index % keys.count]
            index += 1
            key.withUnsafeBytes { blackHole(store.fetch($0)) }
        }
    }

    Benchmark("store: set with the change stream recorded", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 512 << 20, recordsChanges: true))
        var index = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let key = keys[index % keys.count]
            index += 1
            key.withUnsafeBytes { k in
                value.withUnsafeBytes { v in
                    blackHole(store.store(k, value: v, request: StoreRequest(mode: .set)))
                }
            }
            if index % 1024 == 0 { blackHole(store.takeChanges()) }
        }
    }

    // MARK: The persistence batcher

    Benchmark("persistence: commit 10,000 sets of 2 KB", configuration: .init(maxIterations: 20)) { benchmark in
        // One commit per run: the store is filled outside the measurement.
        let directory = NSTemporaryDirectory() + "tandem-bench-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = SessionStore(configuration: StoreConfiguration(memoryLimit: 512 << 20, recordsChanges: true))
        let persistence = try Persistence.open(
            configuration: PersistenceConfiguration(dataDirectory: directory, flushIntervalMillis: 1000),
            store: store, logger: Logger(label: "bench")
        )
        persistence.start()
        defer { persistence.stop() }
        for key in keys.prefix(10_000) {
            key.withUnsafeBytes { k in value.withUnsafeBytes { v in _ = store.store(k, value: v, request: StoreRequest(mode: .set)) } }
        }
        benchmark.startMeasurement()
        // The measured part: the writer takes the batch, coalesces it and commits it.
        let committed = await persistence.commitNow()
        benchmark.stopMeasurement()
        precondition(committed)
    }
}
