import Foundation
import Testing

/// Thousands of seeded schedules of faults against the pair's rules
/// (`PairSimulation`). `TANDEM_SIM_SEED=n` replays one seed and prints its
/// trace; `TANDEM_SIM_SEEDS=n` runs n seeds (a longer soak).
@Suite("Pair simulation")
struct PairSimulationTests {
    static let environment = ProcessInfo.processInfo.environment

    @Test func seededSchedules() {
        if let replay = Self.environment["TANDEM_SIM_SEED"].flatMap({ UInt64($0) }) {
            var simulation = PairSimulation(seed: replay, tracing: true)
            let broken = simulation.run()
            print(simulation.trace.lines.joined(separator: "\n"))
            #expect(broken == nil, "seed \(replay): \(broken ?? "")")
            return
        }
        let count = Self.environment["TANDEM_SIM_SEEDS"].flatMap { UInt64($0) } ?? 2000
        var failures: [String] = []
        for seed in 1...count {
            var simulation = PairSimulation(seed: seed)
            if let broken = simulation.run() {
                failures.append("seed \(seed): \(broken); replay: TANDEM_SIM_SEED=\(seed) swift test --filter PairSimulationTests")
                if failures.count >= 20 { break }
            }
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }
}
