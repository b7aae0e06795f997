import ArgumentParser

// `tandemctl --host 10.0.0.2 --port 11311 status`: connection options before
// the subcommand, the way etcdctl, redis-cli and kubectl take them.
//
// ArgumentParser gives a subcommand's options to the subcommand only, so the
// options `NodeOptions` defines are moved from before the subcommand to just
// after it (`tandemctl status --host 10.0.0.2 --port 11311`) before parsing.
// Both orders then parse the same way, through the same options, defaults and
// environment variables, and mistakes get the same messages.

extension Tandemctl {
    static func main() async {
        do {
            let arguments = try LeadingOptions.moved(Array(CommandLine.arguments.dropFirst()), root: Tandemctl.self)
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

enum LeadingOptions {
    /// `NodeOptions`' options that take a value (`--host X` or `--host=X`).
    static let withValue: Set<String> = ["--host", "--port", "--secret-file", "--tls-ca", "--tls-cert", "--tls-key"]
    /// `NodeOptions`' flags.
    static let flags: Set<String> = ["--tls", "--json"]

    /// `arguments` with every node option that comes before the innermost
    /// subcommand moved to right after it. Anything else before a subcommand
    /// (a typo, `--help`) stops the move and is left for the parser to answer.
    /// Throws when node options come with no subcommand to take them.
    static func moved(_ arguments: [String], root: any ParsableCommand.Type) throws -> [String] {
        var moved: [String] = []
        var path: [String] = []
        var command = root
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            if withValue.contains(name) {
                if argument.contains("=") {
                    moved.append(argument)
                    index += 1
                } else {
                    // A missing value is left for the parser to report, after the subcommand.
                    moved.append(contentsOf: arguments[index..<min(index + 2, arguments.count)])
                    index += 2
                }
            } else if flags.contains(argument) {
                moved.append(argument)
                index += 1
            } else if let subcommand = command.configuration.subcommands.first(where: { $0._commandName == argument }) {
                path.append(argument)
                command = subcommand
                index += 1
            } else {
                break
            }
        }
        guard !moved.isEmpty else { return arguments }
        // Options and then nothing a subcommand: say what is missing rather than
        // leave the root command to call the options unknown. (A typo after the
        // options is left alone: the parser names it.)
        if path.isEmpty, index >= arguments.count {
            throw ValidationError("\(moved.joined(separator: " ")) needs a subcommand, e.g. tandemctl \(moved.joined(separator: " ")) status")
        }
        guard !path.isEmpty else { return arguments }
        return path + moved + arguments[min(index, arguments.count)...]
    }
}
