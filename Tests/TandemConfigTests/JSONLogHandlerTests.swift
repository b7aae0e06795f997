import Foundation
import Logging
import Synchronization
import TandemConfig
import Testing

@Suite("JSON log lines")
struct JSONLogHandlerTests {
    /// Collects what the handler writes.
    final class Collector: Sendable {
        let lines = Mutex<[String]>([])
        var output: JSONLogOutput { JSONLogOutput { line in self.lines.withLock { $0.append(line) } } }
    }

    func parse(_ line: String) throws -> [String: Any] {
        #expect(line.hasSuffix("\n"))
        #expect(line.dropLast().contains("\n") == false, "one object per line")
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(object as? [String: Any])
    }

    @Test func oneObjectPerLineWithEveryField() throws {
        let collector = Collector()
        var logger = Logger(label: "tandemd") { label in JSONLogHandler(label: label, level: .info, output: collector.output) }
        logger[metadataKey: "node"] = "a"
        logger.info("listening on 127.0.0.1:11211", metadata: ["threads": "2", "nested": ["x": "1"], "list": ["p", "q"]])
        logger.debug("not at info")
        let plain = Logger(label: "tandemd") { label in JSONLogHandler(label: label, level: .info, output: collector.output) }
        plain.warning("line\nbreak \"quoted\" \\ tab\t bell\u{07} é")
        let lines = collector.lines.withLock { $0 }
        #expect(lines.count == 2)
        let first = try parse(lines[0])
        #expect(first["level"] as? String == "info")
        #expect(first["label"] as? String == "tandemd")
        #expect(first["message"] as? String == "listening on 127.0.0.1:11211")
        let metadata = try #require(first["metadata"] as? [String: Any])
        #expect(metadata["threads"] as? String == "2")
        #expect(metadata["node"] as? String == "a")
        #expect((metadata["nested"] as? [String: String]) == ["x": "1"])
        #expect((metadata["list"] as? [String]) == ["p", "q"])
        let time = try #require(first["time"] as? String)
        #expect(time.count == 24 && time.hasSuffix("Z") && time.contains("T"), "\(time)")
        let second = try parse(lines[1])
        #expect(second["message"] as? String == "line\nbreak \"quoted\" \\ tab\t bell\u{07} é")
        #expect(second["metadata"] == nil, "no metadata: no field")
    }

    @Test func fieldOrderIsStable() {
        let line = JSONLogHandler.line(time: "T", level: .notice, label: "l", message: "m", metadata: ["b": "2", "a": "1"])
        #expect(line == #"{"time":"T","level":"notice","label":"l","message":"m","metadata":{"a":"1","b":"2"}}"# + "\n")
    }
}
