import TandemConfig
import Testing

@Suite("configuration file: parsing")
struct ConfigFileParsingTests {
    @Test func everyValueKindCommentsAndBlankLines() throws {
        let text = """
            # Tandem primary
            port = 11211
            data-dir = "/var/lib/tandem"   # trailing comment
            secret-file = '/etc/tandem/C:\\secret'
            \t
            insecure = false
            verbose = true
            memory-limit = 4_096
            sync-timeout = +1000
            stamp = -5
            node-name = "a \\"quoted\\" \\u00e9 name # not a comment"
            """
        let file = try ConfigFile.parse(text, path: "t.conf")
        #expect(file.entries == [
            .init(key: "port", value: .integer(11211), line: 2),
            .init(key: "data-dir", value: .string("/var/lib/tandem"), line: 3),
            .init(key: "secret-file", value: .string("/etc/tandem/C:\\secret"), line: 4),
            .init(key: "insecure", value: .boolean(false), line: 6),
            .init(key: "verbose", value: .boolean(true), line: 7),
            .init(key: "memory-limit", value: .integer(4096), line: 8),
            .init(key: "sync-timeout", value: .integer(1000), line: 9),
            .init(key: "stamp", value: .integer(-5), line: 10),
            .init(key: "node-name", value: .string("a \"quoted\" é name # not a comment"), line: 11),
        ])
    }

    @Test func crlfLineEnds() throws {
        let file = try ConfigFile.parse("port = 1\r\nlisten = \"::1\"\r\n", path: "t.conf")
        #expect(file.entries.map(\.line) == [1, 2])
        #expect(file.entries.last?.value == .string("::1"))
    }

    @Test func emptyFileHasNoEntries() throws {
        #expect(try ConfigFile.parse("", path: "t.conf").entries.isEmpty)
        #expect(try ConfigFile.parse("# only a comment\n\n", path: "t.conf").entries.isEmpty)
    }

    /// Each refused line names the file and the line, and says what is wrong.
    @Test(arguments: [
        ("port 11211", "expected \"=\" after \"port\""),
        ("port =", "\"port\" has no value"),
        ("port = # nothing", "\"port\" has no value"),
        ("data-dir = /var/lib/tandem", "not a value (strings are quoted"),
        ("data-dir = \"/var/lib", "unterminated string"),
        ("data-dir = '/var/lib", "unterminated string"),
        ("node-name = \"a\\qb\"", "bad escape \\q"),
        ("port = 11211 11212", "unexpected text after the value of \"port\""),
        ("[server]", "tables ([section]) are not supported"),
        ("server.port = 1", "dotted keys are not supported"),
        ("\"port\" = 1", "quoted keys are not supported"),
        ("peers = [\"a\", \"b\"]", "arrays are not supported"),
        ("flush-interval = 0.5", "only whole numbers"),
        ("flush-interval = 5e3", "only whole numbers"),
        ("listen = 127.0.0.1", "not a value (strings are quoted: listen = \"127.0.0.1\")"),
        ("insecure = True", "booleans are written in lower case"),
        ("port = 011211", "not a valid integer"),
        ("port = 1__0", "not a valid integer"),
        ("port = 99999999999999999999999", "not a valid integer"),
        ("= 5", "expected a setting"),
        ("node-name = \"\"\"x\"\"\"", "multi-line strings are not supported"),
    ])
    func refusedLines(line: String, expected: String) throws {
        let error = #expect(throws: ConfigFileError.self) {
            try ConfigFile.parse("# first line\n\(line)\n", path: "/etc/tandem/tandem.conf")
        }
        #expect(error?.line == 2)
        #expect(error?.description.hasPrefix("/etc/tandem/tandem.conf:2: ") == true)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "no error")")
    }

    @Test func aKeySetTwiceIsRefused() {
        let error = #expect(throws: ConfigFileError.self) {
            try ConfigFile.parse("port = 1\n\nport = 2\n", path: "t.conf")
        }
        #expect(error?.description == "t.conf:3: \"port\" is set twice (first on line 1)")
    }

    @Test func aMissingFileIsNamed() {
        let error = #expect(throws: ConfigFileError.self) {
            try ConfigFile.load(path: "/nonexistent/tandem.conf")
        }
        #expect(error?.line == nil)
        #expect(error?.description == "/nonexistent/tandem.conf: cannot read the configuration file: No such file or directory")
    }

    @Test func aDirectoryIsNotAFile() {
        let error = #expect(throws: ConfigFileError.self) { try ConfigFile.load(path: "/") }
        #expect(error?.description.contains("not a regular file") == true)
    }
}

@Suite("configuration file: keys and arguments")
struct ConfigSchemaTests {
    let schema = ConfigSchema(keys: [
        ConfigKey("port", .integer, short: "p"),
        ConfigKey("listen", .string(), short: "l"),
        ConfigKey("max-item-size", .size(accepts: { ["1m", "512k"].contains($0) }), short: "I"),
        ConfigKey("disable-evictions", .flag, short: "M"),
        ConfigKey("verbose", .count(max: 2), short: "v", group: "log-level"),
        ConfigKey("log-level", .string(choices: ["info", "debug"]), group: "log-level"),
        ConfigKey("role", .string(choices: ["primary", "backup"])),
        ConfigKey("data-dir", .string()),
        ConfigKey("insecure", .flag),
    ])

    func merge(_ text: String, _ commandLine: [String] = []) throws(ConfigFileError) -> MergedConfiguration {
        try schema.merge(try ConfigFile.parse(text, path: "tandem.conf"), commandLine: commandLine)
    }

    @Test func entriesBecomeArgumentsAheadOfTheCommandLine() throws {
        let merged = try merge("""
            port = 11211
            listen = "-weird"
            max-item-size = 2048
            disable-evictions = true
            insecure = false
            verbose = 2
            role = "backup"
            """, ["--data-dir", "x"])
        #expect(merged.arguments == [
            "--port=11211", "--listen=-weird", "--max-item-size=2048", "--disable-evictions",
            "--verbose", "--verbose", "--role=backup", "--data-dir", "x",
        ])
    }

    @Test func theCommandLineOverridesWhatItSets() throws {
        let text = "port = 1\nlisten = \"0.0.0.0\"\ndisable-evictions = true\nlog-level = \"debug\"\ndata-dir = \"d\"\n"
        // Long, long with =, short, and combined short flags.
        #expect(try merge(text, ["--port", "2"]).arguments.filter { $0.contains("port") } == ["--port"])
        #expect(try merge(text, ["--port=2"]).applied.map(\.key) == ["listen", "disable-evictions", "log-level", "data-dir"])
        #expect(try merge(text, ["-l", "::1"]).applied.map(\.key) == ["port", "disable-evictions", "log-level", "data-dir"])
        // -Mv sets disable-evictions and verbose; verbose replaces the file's log-level (one group).
        #expect(try merge(text, ["-Mv"]).applied.map(\.key) == ["port", "listen", "data-dir"])
        // After "--" nothing is a flag.
        #expect(try merge(text, ["--", "--port"]).applied.count == 5)
    }

    @Test func unknownKeysSuggestTheClosest() {
        func message(_ text: String) -> String? {
            do {
                _ = try merge(text)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(message("\n\n\n\n\n\nprot = 11211") == "tandem.conf:7: unknown key \"prot\" (did you mean \"port\"?)")
        #expect(message("data_dir = \"x\"") == "tandem.conf:1: unknown key \"data_dir\" (did you mean \"data-dir\"?)")
        #expect(message("--listen = \"x\"") == "tandem.conf:1: unknown key \"--listen\" (did you mean \"listen\"?)")
        #expect(message("p = 1") == "tandem.conf:1: unknown key \"p\" (did you mean \"port\"?)")
        #expect(message("max-item = 1") == "tandem.conf:1: unknown key \"max-item\" (did you mean \"max-item-size\"?)")
        #expect(message("colour = \"blue\"") == "tandem.conf:1: unknown key \"colour\"")
    }

    @Test(arguments: [
        ("port = \"11211\"", "tandem.conf:1: \"port\" must be an integer, without quotes, got \"11211\""),
        ("port = true", "tandem.conf:1: \"port\" must be an integer, got true"),
        ("listen = 5", "tandem.conf:1: \"listen\" must be a string in double quotes, got 5"),
        ("role = \"leader\"", "tandem.conf:1: \"role\" must be one of \"primary\", \"backup\", got \"leader\""),
        ("max-item-size = \"1x\"", "tandem.conf:1: \"max-item-size\" must be a size: bytes (1048576) or a string with a k, m or g suffix (\"1m\"), got \"1x\""),
        ("insecure = 1", "tandem.conf:1: \"insecure\" must be true or false, got 1"),
        ("verbose = 3", "tandem.conf:1: \"verbose\" must be between 0 and 2 (or true/false), got 3"),
    ])
    func badValuesNameTheLineAndKey(text: String, expected: String) {
        let error = #expect(throws: ConfigFileError.self) { try merge(text) }
        #expect(error?.description == expected)
    }

    @Test func validationMessagesArePinnedToTheLineTheyConcern() throws {
        let merged = try merge("listen = \"127.0.0.1\"\nport = 70000\ndata-dir = \"x\"\n")
        #expect(merged.attribute("--port must be between 0 and 65535, got 70000", schema: schema)?.description
            == "tandem.conf:2: port = 70000: --port must be between 0 and 65535, got 70000")
        // A longer flag that starts the same is not this one.
        #expect(merged.attribute("--port-range is odd", schema: schema) == nil)
        #expect(merged.attribute("--threads must be between 1 and 1024", schema: schema) == nil)
        // Overridden on the command line: the file is not at fault.
        let overridden = try merge("port = 70000\n", ["--port", "70000"])
        #expect(overridden.attribute("--port must be between 0 and 65535, got 70000", schema: schema) == nil)
    }

    @Test func configPathOnTheCommandLine() {
        #expect(ConfigSchema.configPath(in: ["-p", "1", "--config", "a.conf"]) == "a.conf")
        #expect(ConfigSchema.configPath(in: ["--config=b.conf"]) == "b.conf")
        #expect(ConfigSchema.configPath(in: ["--config", "a", "--config=b"]) == "b")
        #expect(ConfigSchema.configPath(in: ["--config"]) == nil)
        #expect(ConfigSchema.configPath(in: ["--", "--config", "a"]) == nil)
        #expect(ConfigSchema.configPath(in: []) == nil)
    }
}
