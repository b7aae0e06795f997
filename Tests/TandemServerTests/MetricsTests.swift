import Foundation
import NIOCore
import Replication
import SessionPersistence
import TandemServer
import Testing
import WireProtocol

/// `--metrics-port`: /metrics in the Prometheus text format, /health, and an
/// HTTP listener that refuses what it does not serve without harm to the node.
@Suite("metrics and health over HTTP", .serialized)
struct MetricsTests {
    // MARK: /metrics

    @Test("every line of /metrics parses as the text format, and counters move with memcached commands")
    func scrapeAfterTraffic() async throws {
        try await withClient(configure: { $0.metricsPort = 0 }) { client, server, _ in
            let port = try #require(server.metricsPort)
            let before = try await Exposition.scrape(port: port)
            #expect(before.value("tandem_commands_total", ["command": "get", "result": "hit"]) == 0)
            #expect(before.value("tandem_role", ["role": "standalone"]) == 1)
            #expect(before.value("tandem_healthy") == 1)
            #expect(before.value("tandem_persistence_enabled") == 0)

            try await client.expectReply("set a 0 0 1\r\n1\r\n", "STORED\r\n")
            try await client.expectReply("set b 0 0 1\r\n2\r\n", "STORED\r\n")
            try await client.expectReply("add a 0 0 1\r\n3\r\n", "NOT_STORED\r\n")
            try await client.expectReply("get a b missing\r\n", "VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n")
            try await client.expectReply("delete b\r\n", "DELETED\r\n")
            try await client.expectReply("delete b\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("incr a 5\r\n", "6\r\n")
            try await client.expectReply("decr nope 1\r\n", "NOT_FOUND\r\n")
            try await client.expectReply("touch a 100\r\n", "TOUCHED\r\n")
            try await client.expectReply("cas a 0 0 1 1\r\nx\r\n", "EXISTS\r\n")
            try await client.expectReply("ms m 1 T0\r\nz\r\n", "HD\r\n")
            try await client.expectReply("bogus\r\n", "ERROR\r\n")

            let after = try await Exposition.scrape(port: port)
            func command(_ command: String, _ result: String) -> Double? {
                after.value("tandem_commands_total", ["command": command, "result": result])
            }
            #expect(command("get", "hit") == 2)
            #expect(command("get", "miss") == 1)
            // set a, set b, ms m; the failed cas is "exists".
            #expect(command("store", "stored") == 3)
            #expect(command("store", "not_stored") == 1)
            #expect(command("store", "exists") == 1)
            #expect(command("delete", "hit") == 1)
            #expect(command("delete", "miss") == 1)
            #expect(command("incr", "hit") == 1)
            #expect(command("decr", "miss") == 1)
            #expect(command("touch", "hit") == 1)
            #expect(after.value("tandem_cas_total", ["result": "badval"]) == 1)
            // ms, and the mn that ends each of the 12 exchanges.
            #expect(after.value("tandem_meta_commands_total") == 13)
            #expect(after.value("tandem_protocol_errors_total") == 1)
            #expect(after.value("tandem_items") == 2)
            #expect((after.value("tandem_item_bytes") ?? 0) > 0)
            #expect(after.value("tandem_memory_limit_bytes") == Double(64 << 20))
            #expect(after.value("tandem_open_connections") == 1)
            #expect((after.value("tandem_received_bytes_total") ?? 0) > (before.value("tandem_received_bytes_total") ?? 0))
            // Every exchange was answered and flushed, so each was timed.
            let reads = after.value("tandem_request_duration_seconds_count", ["kind": "read"]) ?? 0
            let writes = after.value("tandem_request_duration_seconds_count", ["kind": "write"]) ?? 0
            #expect(writes >= 8, "write requests timed: \(writes)")
            #expect(reads >= 2, "read requests timed: \(reads)")
            #expect((after.value("tandem_request_duration_seconds_sum", ["kind": "write"]) ?? 0) > 0)
            #expect(after.families["tandem_request_duration_seconds"] == "histogram")
            #expect(after.families["tandem_commands_total"] == "counter")
            #expect(after.families["tandem_items"] == "gauge")
        }
    }

    @Test("a node with persistence reports its writer: flushes, the flush duration histogram, nothing pending")
    func persistenceFigures() async throws {
        let base = NSTemporaryDirectory() + "tandem-metrics-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: base) }
        try await withClient(configure: {
            $0.metricsPort = 0
            $0.persistence = PersistenceConfiguration(dataDirectory: base + "/data", flushIntervalMillis: 10)
        }) { client, server, _ in
            let port = try #require(server.metricsPort)
            for index in 0..<20 { try await client.expectReply("set k\(index) 0 0 1\r\nv\r\n", "STORED\r\n") }
            var scraped = try await Exposition.scrape(port: port)
            let flushed = try await eventually {
                scraped = try await Exposition.scrape(port: port)
                return (scraped.value("tandem_persistence_flush_duration_seconds_count") ?? 0) >= 1
                    && scraped.value("tandem_persistence_pending_changes") == 0
            }
            #expect(flushed, "no commit showed up in the flush duration histogram")
            #expect(scraped.value("tandem_persistence_enabled") == 1)
            #expect(scraped.value("tandem_persistence_failing") == 0)
            #expect(scraped.value("tandem_persistence_errors_total") == 0)
            #expect((scraped.value("tandem_persistence_flushes_total") ?? 0) >= 1)
        }
    }

    // MARK: /health

    @Test("/health is 200 on a standalone node; unknown paths are 404, other methods 405, bodies 413")
    func healthAndRefusals() async throws {
        try await withClient(configure: { $0.metricsPort = 0 }) { client, server, _ in
            let port = try #require(server.metricsPort)
            let health = try await HTTPExchange.send(port: port, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(health.status == 200)
            #expect(health.body == "ok standalone\n")
            let metrics = try await HTTPExchange.send(port: port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            #expect(metrics.status == 200)
            #expect(metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
            let head = try await HTTPExchange.send(port: port, "HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(head.status == 200 && head.body.isEmpty)

            #expect(try await HTTPExchange.send(port: port, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").status == 404)
            let post = try await HTTPExchange.send(port: port, "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            #expect(post.status == 405)
            #expect(post.headers["allow"] == "GET, HEAD")
            #expect(try await HTTPExchange.send(port: port, "DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n").status == 405)
            let body = try await HTTPExchange.send(port: port, "PUT /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            #expect(body.status == 413)
            let chunked = try await HTTPExchange.send(
                port: port, "GET /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            #expect(chunked.status == 413)

            // Nonsense, oversized headers, a huge request line: refused, and the node serves on.
            #expect(try await HTTPExchange.send(port: port, "\u{1}\u{2} nonsense\r\n\r\n").status == 400)
            let oversized = try await HTTPExchange.send(port: port, "GET /metrics HTTP/1.1\r\nX-Big: \(filler(12_000))\r\n\r\n")
            #expect(oversized.status == 400 || oversized.status == 431)
            let huge = try await HTTPExchange.send(port: port, "GET /\(filler(40_000)) HTTP/1.1\r\n\r\n")
            #expect(huge.status == 431 || huge.status == 400)
            // Half a request, then silence: the connection is the only casualty.
            let silent = try TestClient(port: port)
            try await silent.send("GET /metr")
            #expect(try await HTTPExchange.send(port: port, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").status == 200)
            silent.close()
            try await client.expectReply("set after 0 0 1\r\nv\r\n", "STORED\r\n")
        }
    }

    @Test("/health is 503 on a backup whose primary is unreachable when it may not fail over, and /metrics says why")
    func backupWithoutPrimary() async throws {
        let gone = try await TandemNode.start(configuration: pairConfiguration(role: .primary), logger: quietLogger)
        let deadPort = try #require(gone.wirePort)
        await gone.shutdown()
        var configuration = pairConfiguration(role: .backup, peerPort: deadPort, failoverAfter: .zero)
        configuration.metricsPort = 0
        let backup = try await TandemNode.start(configuration: configuration, logger: quietLogger)
        do {
            let port = try #require(backup.metricsPort)
            let health = try await HTTPExchange.send(port: port, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(health.status == 503)
            #expect(health.body.contains("failover is off"), "\(health.body)")
            let scraped = try await Exposition.scrape(port: port)
            #expect(scraped.value("tandem_role", ["role": "backup"]) == 1)
            #expect(scraped.value("tandem_role", ["role": "primary"]) == 0)
            #expect(scraped.value("tandem_healthy") == 0)
            #expect(scraped.value("tandem_replication_link_up") == 0)
            #expect(scraped.value("tandem_failover_after_seconds") == 0)
            #expect(scraped.value("tandem_replication_link_state", ["state": "streaming"]) == 0)
        } catch {
            await backup.shutdown()
            throw error
        }
        await backup.shutdown()
    }

    @Test("a pair: the primary reports its backup in sync, the backup is healthy while it follows")
    func pair() async throws {
        var primaryConfiguration = pairConfiguration(role: .primary)
        primaryConfiguration.metricsPort = 0
        let primary = try await TandemNode.start(configuration: primaryConfiguration, logger: quietLogger)
        var backupConfiguration = pairConfiguration(role: .backup, peerPort: primary.wirePort)
        backupConfiguration.metricsPort = 0
        let backup: TandemNode
        do {
            backup = try await TandemNode.start(configuration: backupConfiguration, logger: quietLogger)
        } catch {
            await primary.shutdown()
            throw error
        }
        do {
            let primaryPort = try #require(primary.metricsPort)
            let backupPort = try #require(backup.metricsPort)
            let synced = try await eventually {
                try await Exposition.scrape(port: primaryPort).value("tandem_replication_state", ["state": "sync"]) == 1
            }
            #expect(synced, "the primary never reported sync")
            let client = try TestClient(port: primary.port)
            defer { client.close() }
            try await client.expectReply("set k 0 0 1\r\nv\r\n", "STORED\r\n")
            let scraped = try await Exposition.scrape(port: primaryPort)
            #expect(scraped.value("tandem_role", ["role": "primary"]) == 1)
            #expect(scraped.value("tandem_replication_link_up") == 1)
            #expect((scraped.value("tandem_replication_offset") ?? 0) >= 1)
            #expect(scraped.value("tandem_epoch") != nil)
            #expect(scraped.value("tandem_peer_lag_changes") == 0)
            #expect(scraped.families["tandem_sync_timeouts_total"] == "counter")
            let primaryHealth = try await HTTPExchange.send(port: primaryPort, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(primaryHealth.status == 200 && primaryHealth.body.hasPrefix("ok primary epoch "), "\(primaryHealth.body)")
            let backupHealth = try await HTTPExchange.send(port: backupPort, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(backupHealth.status == 200 && backupHealth.body.hasPrefix("ok backup following 127.0.0.1:"), "\(backupHealth.body)")
            let backupScraped = try await Exposition.scrape(port: backupPort)
            #expect(backupScraped.value("tandem_replication_link_state", ["state": "streaming"]) == 1)
            #expect(backupScraped.value("tandem_tombstones") != nil)
        } catch {
            await backup.shutdown()
            await primary.shutdown()
            throw error
        }
        await backup.shutdown()
        await primary.shutdown()
    }

    @Test("the scrape parser rejects what the format forbids")
    func parserIsStrict() throws {
        #expect(throws: ExpositionError.self) { try Exposition(parsing: "tandem_x 1\n") }  // no TYPE
        #expect(throws: ExpositionError.self) { try Exposition(parsing: "# TYPE tandem_x gauge\ntandem_x{a=\"1} 1\n") }
        #expect(throws: ExpositionError.self) { try Exposition(parsing: "# TYPE tandem_x gauge\ntandem_x one\n") }
        #expect(throws: ExpositionError.self) {
            try Exposition(parsing: "# TYPE tandem_x gauge\ntandem_x 1\n# TYPE tandem_x_total counter\ntandem_x_total 1\n")
        }
        let good = try Exposition(parsing: "# HELP tandem_x An \\\\ x.\n# TYPE tandem_x gauge\ntandem_x{a=\"q\\\"\"} 1.5e3\n")
        #expect(good.value("tandem_x", ["a": "q\""]) == 1500)
    }

    // MARK: Helpers

    func pairConfiguration(role: NodeRole, peerPort: Int? = nil, failoverAfter: TimeAmount = .milliseconds(600)) -> ServerConfiguration {
        var configuration = testConfiguration()
        var replication = ReplicationConfiguration(mode: .sync, nodeName: role == .primary ? "P" : "B")
        replication.failoverAfter = failoverAfter
        configuration.pair = PairConfiguration(
            wireHost: "127.0.0.1", wirePort: 0, role: role, peer: peerPort.map { ("127.0.0.1", $0) }, replication: replication
        )
        return configuration
    }
}

// MARK: - A hand-written HTTP/1.1 exchange

/// One request over a fresh connection, read until the server closes it
/// (the metrics listener answers once per connection).
struct HTTPExchange {
    var status: Int
    /// Lowercased names.
    var headers: [String: String]
    var body: String

    static func send(port: Int, _ request: String) async throws -> HTTPExchange {
        let client = try TestClient(port: port)
        defer { client.close() }
        try await client.send(request)
        let raw = String(decoding: try await client.readUntilClosed(), as: UTF8.self)
        guard let split = raw.range(of: "\r\n\r\n") else { throw ExpositionError.malformed("no end of headers in \(raw.debugDescription)") }
        let lines = raw[..<split.lowerBound].components(separatedBy: "\r\n")
        let statusLine = lines[0].split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else {
            throw ExpositionError.malformed("status line \(lines[0].debugDescription)")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { throw ExpositionError.malformed("header \(line.debugDescription)") }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let body = String(raw[split.upperBound...])
        if let length = headers["content-length"].flatMap(Int.init), !request.hasPrefix("HEAD ") {
            #expect(body.utf8.count == length, "Content-Length \(length), body \(body.utf8.count) bytes")
        }
        return HTTPExchange(status: status, headers: headers, body: body)
    }
}

// MARK: - A strict reader of the Prometheus text format (0.0.4)

enum ExpositionError: Error, CustomStringConvertible {
    case malformed(String)

    var description: String {
        switch self {
        case .malformed(let what): return "malformed exposition: \(what)"
        }
    }
}

/// Every sample of a scrape, checked line by line: `# HELP` and `# TYPE` lines,
/// samples `name{label="value",…} value`, every sample belonging to a family
/// whose TYPE came first, every tandem_ family documented, one TYPE per family,
/// families not interleaved, histograms cumulative with `+Inf` equal to `_count`.
struct Exposition {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    /// Family name to type.
    private(set) var families: [String: String] = [:]
    private(set) var samples: [Sample] = []

    static func scrape(port: Int) async throws -> Exposition {
        let response = try await HTTPExchange.send(port: port, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        guard response.status == 200 else { throw ExpositionError.malformed("status \(response.status): \(response.body)") }
        return try Exposition(parsing: response.body)
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    init(parsing text: String) throws {
        guard text.isEmpty || text.hasSuffix("\n") else { throw ExpositionError.malformed("no final newline") }
        var helped: Set<String> = []
        var finished: Set<String> = []
        var current: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard parts.count >= 3, parts[0] == "#" else { continue }  // a plain comment
                let name = String(parts[2])
                guard Self.isMetricName(name) else { throw ExpositionError.malformed("name in \(line.debugDescription)") }
                switch parts[1] {
                case "HELP":
                    guard helped.insert(name).inserted else { throw ExpositionError.malformed("second HELP for \(name)") }
                case "TYPE":
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        throw ExpositionError.malformed("type in \(line.debugDescription)")
                    }
                    guard families[name] == nil else { throw ExpositionError.malformed("second TYPE for \(name)") }
                    families[name] = String(parts[3])
                    if let current { finished.insert(current) }
                    current = name
                default:
                    continue
                }
                continue
            }
            let sample = try Self.sample(line)
            guard let family = family(of: sample.name) else { throw ExpositionError.malformed("no TYPE before \(line.debugDescription)") }
            guard !finished.contains(family), family == current else { throw ExpositionError.malformed("\(family) is interleaved with another family") }
            samples.append(sample)
        }
        for (name, _) in families where name.hasPrefix("tandem_") && !helped.contains(name) {
            throw ExpositionError.malformed("\(name) has no HELP")
        }
        // OpenMetrics names a counter without its _total: `x_total` and a family `x` would clash.
        for (name, type) in families where type == "counter" && name.hasSuffix("_total") {
            if families[String(name.dropLast("_total".count))] != nil { throw ExpositionError.malformed("\(name) clashes with a family without _total") }
        }
        try checkHistograms()
    }

    private func family(of sample: String) -> String? {
        if families[sample] != nil { return sample }
        for suffix in ["_bucket", "_sum", "_count"] where sample.hasSuffix(suffix) {
            let base = String(sample.dropLast(suffix.count))
            if families[base] == "histogram" || families[base] == "summary" { return base }
        }
        return nil
    }

    private func checkHistograms() throws {
        for (name, type) in families where type == "histogram" {
            var series: [[String: String]: [(le: Double, count: Double)]] = [:]
            for sample in samples where sample.name == name + "_bucket" {
                guard let le = sample.labels["le"], let bound = le == "+Inf" ? Double.infinity : Double(le) else {
                    throw ExpositionError.malformed("\(name) bucket without le")
                }
                var labels = sample.labels
                labels["le"] = nil
                series[labels, default: []].append((bound, sample.value))
            }
            guard !series.isEmpty else { throw ExpositionError.malformed("\(name) has no buckets") }
            for (labels, buckets) in series {
                guard buckets.map(\.le) == buckets.map(\.le).sorted(), buckets.last?.le == .infinity else {
                    throw ExpositionError.malformed("\(name) buckets out of order or without +Inf")
                }
                guard buckets.map(\.count) == buckets.map(\.count).sorted() else { throw ExpositionError.malformed("\(name) buckets not cumulative") }
                guard value(name + "_count", labels) == buckets.last?.count, value(name + "_sum", labels) != nil else {
                    throw ExpositionError.malformed("\(name)\(labels): _count differs from the +Inf bucket, or no _sum")
                }
            }
        }
    }

    private static func isMetricName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == ":" }
    }

    private static func sample(_ line: Substring) throws -> Sample {
        var rest = line[...]
        let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
        let name = String(rest[..<nameEnd])
        guard isMetricName(name) else { throw ExpositionError.malformed("sample name in \(line.debugDescription)") }
        rest = rest[nameEnd...]
        var labels: [String: String] = [:]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                guard let equals = rest.firstIndex(of: "=") else { throw ExpositionError.malformed("label in \(line.debugDescription)") }
                let label = String(rest[..<equals])
                guard isMetricName(label), !label.contains(":") else { throw ExpositionError.malformed("label name in \(line.debugDescription)") }
                rest = rest[rest.index(after: equals)...]
                guard rest.first == "\"" else { throw ExpositionError.malformed("unquoted label value in \(line.debugDescription)") }
                rest = rest.dropFirst()
                var value = ""
                var closed = false
                while let character = rest.first {
                    rest = rest.dropFirst()
                    if character == "\\" {
                        guard let escaped = rest.first else { break }
                        rest = rest.dropFirst()
                        switch escaped {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw ExpositionError.malformed("escape \\\(escaped) in \(line.debugDescription)")
                        }
                    } else if character == "\"" {
                        closed = true
                        break
                    } else {
                        value.append(character)
                    }
                }
                guard closed, labels.updateValue(value, forKey: label) == nil else {
                    throw ExpositionError.malformed("label value in \(line.debugDescription)")
                }
                if rest.first == "," { rest = rest.dropFirst() } else if rest.first != "}" {
                    throw ExpositionError.malformed("labels in \(line.debugDescription)")
                }
            }
            rest = rest.dropFirst()
        }
        guard rest.first == " " else { throw ExpositionError.malformed("no value in \(line.debugDescription)") }
        let fields = rest.dropFirst().split(separator: " ", omittingEmptySubsequences: false)
        guard (1...2).contains(fields.count), let value = parseValue(fields[0]) else {
            throw ExpositionError.malformed("value in \(line.debugDescription)")
        }
        if fields.count == 2, Int64(fields[1]) == nil { throw ExpositionError.malformed("timestamp in \(line.debugDescription)") }
        return Sample(name: name, labels: labels, value: value)
    }

    private static func parseValue(_ text: Substring) -> Double? {
        switch text {
        case "+Inf": return .infinity
        case "-Inf": return -.infinity
        case "NaN": return .nan
        default:
            // Go's ParseFloat forms: digits, a point, an exponent; no hex, no "inf" spelled otherwise.
            guard text.allSatisfy({ $0.isASCII && ($0.isNumber || "+-.eE".contains($0)) }) else { return nil }
            return Double(text)
        }
    }
}
