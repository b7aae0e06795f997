import Foundation
import Vapor

/// Runs the example: `vapor-sessions --tandem 127.0.0.1:11311,127.0.0.1:11312 serve --port 8080`.
@main
struct VaporSessionsMain {
    static func main() async throws {
        var environment = try Environment.detect()
        let settings: ExampleSettings
        do {
            (settings, environment.arguments) = try ExampleSettings.from(
                environment: ProcessInfo.processInfo.environment, arguments: environment.arguments
            )
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            exit(64)
        }
        try LoggingSystem.bootstrap(from: &environment)
        let app = try await Application.make(environment)
        do {
            try configure(app, settings: settings)
            try await app.execute()
        } catch {
            app.logger.report(error: error)
            try? await app.asyncShutdown()
            throw error
        }
        try await app.asyncShutdown()
    }
}
