import Foundation
import Hummingbird

/// Runs the example: `hummingbird-sessions --tandem 127.0.0.1:11311,127.0.0.1:11312`.
/// Prints `listening on HOST:PORT` once it serves.
@main
struct HummingbirdSessionsMain {
    static func main() async throws {
        let settings: ExampleSettings
        do {
            settings = try ExampleSettings.from(environment: ProcessInfo.processInfo.environment, arguments: Array(CommandLine.arguments.dropFirst()))
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            exit(64)
        }
        let app = try buildApplication(settings: settings) { port in
            FileHandle.standardOutput.write(Data("listening on \(settings.host):\(port)\n".utf8))
        }
        try await app.runService()
    }
}
