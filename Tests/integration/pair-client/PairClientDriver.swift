// Drives a TandemPairClient for the process-level tests
// (Tests/integration/test_pair_client.py), which kill nodes under it.
//
//     tandem-pair-client-driver <host:wire port> <host:wire port> <writes> [workers]
//
// `workers` tasks (default 4) share `writes` numbered writes: each worker
// sets `drv-<n>` to `value-<n>`, then reads back a key it wrote before and
// checks its value. Every acknowledged write is printed as `ack <key>
// <value>` the moment it is acknowledged; every failed request as `error
// <op> <key> <error>`; a read that returned something other than the
// acknowledged value as `stale <key> ...`. At the end, `add`s a fresh key
// twice (stored, then refused) and prints `done <acks> <errors> <stale>`.

import Foundation
import TandemClient

/// One line to stdout at once, unbuffered: the test reads acknowledgements as they happen.
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let arguments = CommandLine.arguments
guard arguments.count >= 4, let writes = Int(arguments[3]) else {
    print("usage: tandem-pair-client-driver <host:port> <host:port> <writes> [workers]")
    exit(1)
}
func node(_ text: String) -> TandemNodeAddress {
    let parts = text.split(separator: ":")
    return TandemNodeAddress(host: String(parts[0]), port: Int(parts[1])!)
}
let workers = arguments.count > 4 ? Int(arguments[4]) ?? 4 : 4
var configuration = TandemPairClient.Configuration()
configuration.failoverTimeout = .seconds(10)
let client = TandemPairClient(pairs: [TandemPair(node(arguments[1]), node(arguments[2]))], configuration: configuration)

actor Tally {
    var acks = 0
    var errors = 0
    var stale = 0
    func ack() { acks += 1 }
    func error() { errors += 1 }
    func staleRead() { stale += 1 }
}
let tally = Tally()

await withTaskGroup(of: Void.self) { group in
    for worker in 0..<workers {
        group.addTask {
            var mine: [Int] = []
            for n in stride(from: worker, to: writes, by: workers) {
                let key = "drv-\(n)"
                let value = "value-\(n)"
                do {
                    try await client.set(key, value: Array(value.utf8), expiry: .after(.seconds(3600)))
                    emit("ack \(key) \(value)")
                    await tally.ack()
                    mine.append(n)
                } catch {
                    emit("error set \(key) \(error)")
                    await tally.error()
                }
                guard let earlier = mine.randomElement() else { continue }
                do {
                    let read = try await client.get("drv-\(earlier)")
                    if read?.value != Array("value-\(earlier)".utf8) {
                        emit("stale drv-\(earlier) \(read.map { String(decoding: $0.value, as: UTF8.self) } ?? "missing")")
                        await tally.staleRead()
                    }
                } catch {
                    emit("error get drv-\(earlier) \(error)")
                    await tally.error()
                }
            }
        }
    }
}
let lock = "drv-lock-\(UUID().uuidString)"
let first = (try? await client.add(lock, value: [1])) ?? false
let second = (try? await client.add(lock, value: [2])) ?? true
if !first || second { emit("error add \(lock) first=\(first) second=\(second)"); await tally.error() }
emit("done \(await tally.acks) \(await tally.errors) \(await tally.stale)")
await client.close()
