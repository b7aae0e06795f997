import ArgumentParser
import Foundation
import TandemClient
import WireProtocol

/// `tandemctl sessions …`: find, inspect, delete, export and import sessions.
struct Sessions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Find, inspect, delete, export and import sessions.",
        discussion: """
            Scans run in short steps on the node (a few thousand items each), so they \
            never hold up its clients, however many sessions it holds.

            Examples:
              tandemctl sessions list --prefix validity: --sort ttl --limit 20
              tandemctl sessions count --match '*-n1' --expiring-within 5m
              tandemctl sessions show 5C2B0F4E9A1D3C7B8E6F0A2D4C6B8E0F-n1
              tandemctl sessions delete --prefix lock: --yes
              tandemctl sessions export sessions.jsonl && tandemctl sessions import sessions.jsonl
            """,
        subcommands: [List.self, Count.self, Show.self, Delete.self, Export.self, Import.self]
    )
}

/// The filters `list`, `count`, `delete --prefix` and `export` share.
struct SessionFilter: ParsableArguments {
    @Option(help: "Only keys that start with this.")
    var prefix: String?

    @Option(help: "Only keys matching this glob (* ? [abc] [a-z] [!x]).")
    var match: String?

    @Option(name: .customLong("min-size"), help: "Only values of at least this size (bytes, or with k/m).")
    var minimumSize: String?

    @Option(name: .customLong("expiring-within"), help: "Only sessions that expire within this long (e.g. 90s, 30m, 2h; a number is seconds).")
    var expiringWithin: String?

    func request(options: ScanRequest.Options, limit: UInt32 = 1000) throws -> ScanRequest {
        var request = ScanRequest(limit: limit, options: options)
        if let prefix { request.prefix = Array(prefix.utf8) }
        if let match { request.match = match }
        if let minimumSize {
            guard let bytes = Self.bytes(minimumSize), bytes <= UInt64(UInt32.max) else {
                throw ValidationError("--min-size must be a size like 2048, 2k or 1m, got \(minimumSize)")
            }
            request.minimumSize = UInt32(bytes)
        }
        if let expiringWithin {
            guard let seconds = Self.seconds(expiringWithin) else {
                throw ValidationError("--expiring-within must be a duration like 90s, 30m or 2h, got \(expiringWithin)")
            }
            request.expiringWithinMillis = seconds * 1000
        }
        return request
    }

    static func bytes(_ text: String) -> UInt64? {
        let lower = text.lowercased()
        let (digits, multiplier): (Substring, UInt64) =
            lower.hasSuffix("k") ? (lower.dropLast(), 1024) : lower.hasSuffix("m") ? (lower.dropLast(), 1 << 20) : (Substring(lower), 1)
        guard let value = UInt64(digits) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    static func seconds(_ text: String) -> Int64? {
        let lower = text.lowercased()
        let units: [(String, Int64)] = [("ms", 0), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, factor) in units where lower.hasSuffix(suffix) {
            guard let value = Int64(lower.dropLast(suffix.count)), value >= 0 else { return nil }
            return factor == 0 ? value / 1000 : value * factor
        }
        guard let value = Int64(lower), value >= 0 else { return nil }
        return value
    }
}

/// Walks every page of a scan.
func scanAll(_ client: TandemClient, _ request: ScanRequest, _ body: (ScanPage) throws -> Bool) async throws {
    var request = request
    while true {
        let page = try await client.scan(request)
        guard try body(page), !page.cursor.isEmpty else { return }
        request.cursor = page.cursor
    }
}

// MARK: Rendering

enum Render {
    static func key(_ bytes: [UInt8]) -> String {
        if let text = String(validating: bytes, as: UTF8.self), !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return text
        }
        return bytes.map { $0 >= 0x20 && $0 < 0x7F ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
    }

    static func iso(_ millis: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: Double(millis) / 1000))
    }

    static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// Seconds left, or -1 for "never expires" (as memcached's `mg … t` reports it).
    static func ttl(_ record: SessionRecord, now: Int64) -> Int64 {
        record.deadlineMillis == 0 ? -1 : max(0, (record.deadlineMillis - now + 999) / 1000)
    }

    static func duration(_ seconds: Int64) -> String {
        if seconds < 0 { return "never" }
        if seconds < 120 { return "\(seconds)s" }
        if seconds < 7200 { return "\(seconds / 60)m\(seconds % 60 == 0 ? "" : " \(seconds % 60)s")" }
        if seconds < 172_800 { return "\(seconds / 3600)h \(seconds % 3600 / 60)m" }
        return "\(seconds / 86400)d \(seconds % 86400 / 3600)h"
    }

    static func json(_ object: Any) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    static func table(_ header: [String], _ rows: [[String]]) {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        print(line(header))
        for row in rows { print(line(row)) }
    }

    static func recordJSON(_ record: SessionRecord, now: Int64, writer: String) -> [String: Any] {
        var object: [String: Any] = [
            "key": key(record.key), "size": Int(record.size), "flags": Int(record.flags),
            "deadline": record.deadlineMillis, "ttl": ttl(record, now: now), "cas": NSNumber(value: record.cas),
            "last_access": record.lastAccessMillis, "writer": writer,
        ]
        if String(validating: record.key, as: UTF8.self) == nil { object["key_base64"] = Data(record.key).base64EncodedString() }
        return object
    }
}

// MARK: list

extension Sessions {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List sessions: key, size, TTL, last access, writer.",
            discussion: """
                Without --sort, sessions come in the node's order, --limit at a time; the \
                last line (or "cursor" in --json) is where the next page starts: pass it \
                back with --cursor. With --sort every match is read first, then sorted.

                Examples:
                  tandemctl sessions list --limit 50
                  tandemctl sessions list --cursor 0000000300000a00
                  tandemctl sessions list --prefix validity: --sort ttl --json
                """
        )

        enum SortKey: String, ExpressibleByArgument, CaseIterable {
            case key, size, ttl
            case lastAccess = "last-access"
        }

        @OptionGroup var node: NodeOptions
        @OptionGroup var filter: SessionFilter

        @Option(help: "Sort by key, size, ttl or last-access (newest first).")
        var sort: SortKey?

        @Option(help: "At most this many sessions.")
        var limit: Int = 100

        @Option(help: "Where to go on: the cursor a previous page printed.")
        var cursor: String?

        func validate() throws {
            guard limit >= 1 else { throw ValidationError("--limit must be at least 1") }
            if sort != nil, cursor != nil { throw ValidationError("--cursor pages the node's order; it cannot be combined with --sort") }
        }

        func run() async throws {
            try await reporting {
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                var request = try filter.request(options: [], limit: UInt32(min(limit, 10_000)))
                if let cursor {
                    guard let bytes = Hex.decode(cursor), bytes.count == 8 else {
                        throw Failure(code: 1, message: "--cursor must be the 16 hex digits a previous page printed")
                    }
                    request.cursor = bytes
                }
                var records: [SessionRecord] = []
                var next: [UInt8] = []
                while true {
                    if sort == nil { request.limit = UInt32(min(limit - records.count, 10_000)) }
                    let page = try await client.scan(request)
                    records += page.records
                    next = page.cursor
                    guard !next.isEmpty, sort != nil || records.count < limit else { break }
                    request.cursor = next
                }
                let now = Render.nowMillis()
                switch sort {
                case .key?: records.sort { $0.key.lexicographicallyPrecedes($1.key) }
                case .size?: records.sort { $0.size > $1.size }
                case .ttl?: records.sort { (Render.ttl($0, now: now) < 0 ? .max : Render.ttl($0, now: now)) < (Render.ttl($1, now: now) < 0 ? .max : Render.ttl($1, now: now)) }
                case .lastAccess?: records.sort { $0.lastAccessMillis > $1.lastAccessMillis }
                case nil: break
                }
                if records.count > limit {
                    records = Array(records.prefix(limit))
                }
                if sort != nil { next = [] }
                let names = try await WriterNames(client)
                if node.json {
                    var object: [String: Any] = ["sessions": records.map { Render.recordJSON($0, now: now, writer: names.name($0.writer)) }]
                    object["cursor"] = next.isEmpty ? NSNull() : Hex.encode(next) as Any
                    print(try Render.json(object))
                    return
                }
                Render.table(["KEY", "SIZE", "TTL", "LAST ACCESS", "WRITER"], records.map { record in
                    [Render.key(record.key), "\(record.size)", Render.duration(Render.ttl(record, now: now)),
                     record.lastAccessMillis > 0 ? "\(Render.duration(max(0, (now - record.lastAccessMillis) / 1000))) ago" : "-",
                     names.name(record.writer)]
                })
                if !next.isEmpty { print("more: tandemctl sessions list --cursor \(Hex.encode(next))") }
            }
        }
    }
}

/// Names the writer of a record: this node or its peer.
struct WriterNames {
    let this: String
    let peer: String

    init(_ client: TandemClient) async throws {
        this = client.server.nodeName
        let status = Dictionary(try await client.status().map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
        peer = status["peer_name"].flatMap { $0 == "none" ? nil : $0 } ?? "peer"
    }

    func name(_ writer: SessionRecord.Writer) -> String {
        switch writer {
        case .thisNode: return this
        case .peer: return peer
        }
    }
}

enum Hex {
    static func encode(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func decode(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = 0
        while index < digits.count {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func value(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

// MARK: count

extension Sessions {
    struct Count: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Count the sessions matching the filters.",
            discussion: "Example: tandemctl sessions count --prefix validity: --expiring-within 10m"
        )

        @OptionGroup var node: NodeOptions
        @OptionGroup var filter: SessionFilter

        func run() async throws {
            try await reporting {
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                var total = 0
                try await scanAll(client, try filter.request(options: .countOnly)) { page in
                    total += Int(page.matched)
                    return true
                }
                print(node.json ? try Render.json(["count": total]) : "\(total)")
            }
        }
    }
}

// MARK: show

extension Sessions {
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One session: its metadata and value, decoded when msm stored it.",
            discussion: """
                ID is the item's key. If no item has exactly that key, a session id is \
                looked up as msm stores it (<id>-<node>). The value is shown as text when \
                printable, else as a hexdump; a Tomcat session or a validity record that \
                memcached-session-manager stored is decoded (id, times, attributes…).
                Exit code 7 when there is no such session.

                Examples:
                  tandemctl sessions show 5C2B0F4E9A1D3C7B8E6F0A2D4C6B8E0F-n1
                  tandemctl sessions show validity:5C2B0F4E9A1D3C7B8E6F0A2D4C6B8E0F --json
                """
        )

        @OptionGroup var node: NodeOptions

        @Argument(help: "The key (or msm session id).")
        var id: String

        func run() async throws {
            try await reporting {
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                let record = try await find(client)
                let now = Render.nowMillis()
                let names = try await WriterNames(client)
                let decoded = SessionValueDecoder.describe(key: Render.key(record.key), value: record.value)
                if node.json {
                    var object = Render.recordJSON(record, now: now, writer: names.name(record.writer))
                    if let text = String(validating: record.value, as: UTF8.self), Printable.isText(record.value) {
                        object["value"] = text
                    } else {
                        object["value_base64"] = Data(record.value).base64EncodedString()
                    }
                    object["msm"] = decoded.json
                    print(try Render.json(object))
                    return
                }
                let ttl = Render.ttl(record, now: now)
                try printProperties([
                    ("key", Render.key(record.key)),
                    ("size", "\(record.size) bytes"),
                    ("flags", "\(record.flags)"),
                    ("ttl", ttl < 0 ? "never expires" : "\(Render.duration(ttl)) (expires \(Render.iso(record.deadlineMillis)))"),
                    ("cas", "\(record.cas)"),
                    ("last access", record.lastAccessMillis > 0 ? "\(Render.iso(record.lastAccessMillis)) (\(Render.duration(max(0, (now - record.lastAccessMillis) / 1000))) ago)" : "-"),
                    ("last writer", names.name(record.writer)),
                ], json: false)
                print("")
                if Printable.isText(record.value) {
                    print("value (text):")
                    print(String(decoding: record.value, as: UTF8.self))
                } else {
                    print("value (\(record.value.count) bytes):")
                    print(Printable.hexdump(record.value, limit: 4096))
                }
                print("")
                print(decoded.text)
            }
        }

        private func find(_ client: TandemClient) async throws -> SessionRecord {
            do {
                return try await client.inspect(key: Array(id.utf8))
            } catch TandemClientError.server(let error) where error.code == .notFound {
                // Not a key: perhaps the session id msm keys its session by (<id>-<node>).
                let page = try await client.scan(ScanRequest(limit: 2, prefix: Array("\(id)-".utf8), options: []))
                if page.records.count == 1, page.cursor.isEmpty || page.matched == 1 {
                    return try await client.inspect(key: page.records[0].key)
                }
                throw Failure(code: 7, message: "no session \(id) on \(client.server.nodeName); list keys with: tandemctl sessions list --prefix \(id.prefix(8))")
            }
        }
    }
}

enum Printable {
    /// Valid UTF-8 without control characters other than tab and line breaks.
    static func isText(_ bytes: [UInt8]) -> Bool {
        guard let text = String(validating: bytes, as: UTF8.self) else { return false }
        return !text.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\n" && $0 != "\r" && $0 != "\t") || $0.value == 0x7F }
    }

    static func hexdump(_ bytes: [UInt8], limit: Int) -> String {
        var lines: [String] = []
        var offset = 0
        while offset < min(bytes.count, limit) {
            let row = bytes[offset..<min(offset + 16, bytes.count)]
            let hex = row.map { String(format: "%02x", $0) }.joined(separator: " ")
            let ascii = String(row.map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "." })
            lines.append(String(format: "%08x  ", offset) + hex.padding(toLength: 47, withPad: " ", startingAt: 0) + "  |" + ascii + "|")
            offset += 16
        }
        if bytes.count > limit { lines.append("… \(bytes.count - limit) more bytes") }
        return lines.joined(separator: "\n")
    }
}

// MARK: delete

extension Sessions {
    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete sessions by key, or every session with a prefix.",
            discussion: """
                Asks for confirmation unless --yes (without a terminal, --yes is required). \
                Runs on the primary. Prints how many were removed.

                Examples:
                  tandemctl sessions delete 5C2B…-n1 validity:5C2B…
                  tandemctl sessions delete --prefix lock: --yes
                """
        )

        @OptionGroup var node: NodeOptions

        @Argument(help: "Keys to delete.")
        var keys: [String] = []

        @Option(help: "Delete every session whose key starts with this.")
        var prefix: String?

        @Flag(help: "Do not ask for confirmation.")
        var yes = false

        func validate() throws {
            if keys.isEmpty == (prefix == nil) { throw ValidationError("give either keys or --prefix P") }
            if prefix == "" { throw ValidationError("--prefix must not be empty; to empty a node use flush_all") }
        }

        func run() async throws {
            try await reporting {
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                var targets = keys.map { Array($0.utf8) }
                if let prefix {
                    try await scanAll(client, ScanRequest(limit: 10_000, prefix: Array(prefix.utf8), options: [])) { page in
                        targets += page.records.map(\.key)
                        return true
                    }
                }
                guard !targets.isEmpty else {
                    print(node.json ? try Render.json(["deleted": 0, "missing": 0]) : "no session matches: nothing deleted")
                    return
                }
                if !yes {
                    let what = prefix.map { "\(targets.count) sessions with prefix \($0)" } ?? "\(targets.count) session\(targets.count == 1 ? "" : "s")"
                    guard isatty(STDIN_FILENO) == 1 else {
                        throw Failure(code: 1, message: "refusing to delete \(what) without confirmation: pass --yes")
                    }
                    FileHandle.standardError.write(Data("Delete \(what) on \(client.server.nodeName)? [y/N] ".utf8))
                    guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                        throw Failure(code: 1, message: "nothing deleted")
                    }
                }
                var deleted: UInt64 = 0
                var missing: UInt64 = 0
                var start = 0
                while start < targets.count {
                    let batch = Array(targets[start..<min(start + 1000, targets.count)])
                    let result = try await client.delete(keys: batch)
                    deleted += result.deleted
                    missing += result.missing
                    start += batch.count
                }
                if node.json {
                    print(try Render.json(["deleted": deleted, "missing": missing]))
                } else {
                    print("deleted \(deleted)" + (missing > 0 ? " (\(missing) not found)" : ""))
                }
            }
        }
    }
}

// MARK: export and import

extension Sessions {
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write sessions as JSON lines: key, value (base64), flags, absolute deadline.",
            discussion: """
                One object per line: {"key", "value" (base64), "flags", "deadline" (ms since \
                the epoch, 0 never), "cas"}; a key that is not UTF-8 is in "key_base64". \
                FILE "-" writes to standard output. The filters of list apply.

                Example: tandemctl sessions export backup.jsonl --prefix validity:
                """
        )

        @OptionGroup var node: NodeOptions
        @OptionGroup var filter: SessionFilter

        @Argument(help: "The file to write (\"-\": standard output).")
        var file: String

        func run() async throws {
            try await reporting {
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                let output: FileHandle
                if file == "-" {
                    output = FileHandle.standardOutput
                } else {
                    guard FileManager.default.createFile(atPath: file, contents: nil) else {
                        throw Failure(code: 1, message: "cannot create \(file): check the directory exists and is writable")
                    }
                    output = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
                }
                var count = 0
                try await scanAll(client, try filter.request(options: .values, limit: 1000)) { page in
                    var chunk = ""
                    for record in page.records {
                        var object: [String: Any] = [
                            "value": Data(record.value).base64EncodedString(), "flags": Int(record.flags),
                            "deadline": record.deadlineMillis, "cas": NSNumber(value: record.cas),
                        ]
                        if let key = String(validating: record.key, as: UTF8.self) {
                            object["key"] = key
                        } else {
                            object["key_base64"] = Data(record.key).base64EncodedString()
                        }
                        chunk += try Render.json(object) + "\n"
                        count += 1
                    }
                    output.write(Data(chunk.utf8))
                    return true
                }
                if file != "-" { try output.close() }
                let summary = node.json ? try Render.json(["exported": count, "file": file]) : "exported \(count) sessions to \(file)"
                FileHandle.standardError.write(Data((summary + "\n").utf8))
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store the sessions of a JSON-lines file (as export writes it) on the primary.",
            discussion: """
                Idempotent: a session already held with the same value, flags and deadline is \
                left alone, so importing a file twice changes nothing the second time. \
                Sessions past their deadline are skipped. Each session is judged on its own: \
                one the node rejects (a key memcached clients cannot use: empty, over 250 \
                bytes, with a space or a control byte; a value over the node's -I) is printed \
                on standard error with its line and reason, and the others are stored. \
                Prints how many were stored, unchanged, expired and rejected; exit code 5 \
                when any was rejected. FILE "-" reads standard input.

                Example: tandemctl sessions import backup.jsonl --port 11311
                """
        )

        @OptionGroup var node: NodeOptions

        @Argument(help: "The file to read (\"-\": standard input).")
        var file: String

        /// A request stays well under the 16 MiB frame: about 4 MiB of sessions each.
        static let batchBytes = 4 << 20

        /// A session of the file, and the line it is on.
        struct Line {
            var number: Int
            var record: SessionRecord
        }

        func run() async throws {
            try await reporting {
                let data: Data
                if file == "-" {
                    data = FileHandle.standardInput.readDataToEndOfFile()
                } else {
                    guard let contents = FileManager.default.contents(atPath: file) else {
                        throw Failure(code: 1, message: "cannot read \(file): check the path")
                    }
                    data = contents
                }
                var lines: [Line] = []
                for (index, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated()
                where !line.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) {
                    guard let record = Self.record(Data(line)) else {
                        throw Failure(code: 1, message: "\(file) line \(index + 1): not a session record (expected {\"key\", \"value\" (base64), \"flags\", \"deadline\"}, as export writes)")
                    }
                    lines.append(Line(number: index + 1, record: record))
                }
                let client = try await node.connect()
                defer { Task { try? await client.close() } }
                var total = ImportSummary(stored: 0, unchanged: 0, expired: 0)
                var rejected: [(line: Line, rejection: ImportRejection)] = []
                var start = 0
                while start < lines.count {
                    var batch: [Line] = []
                    var bytes = 0
                    while start + batch.count < lines.count, batch.isEmpty || bytes < Self.batchBytes {
                        let line = lines[start + batch.count]
                        bytes += WireEncodedSize.sessionRecord + line.record.key.count + line.record.value.count
                        batch.append(line)
                    }
                    start += batch.count
                    // One session too large for any frame cannot be sent; the node would refuse it anyway.
                    if batch.count == 1, bytes > WireFrame.maximumBodySize - 4 {
                        rejected.append((batch[0], ImportRejection(.tooLarge, "the value is \(batch[0].record.value.count) bytes, too large for a request")))
                        continue
                    }
                    let report = try await client.importItems(batch.map(\.record))
                    total.stored += report.summary.stored
                    total.unchanged += report.summary.unchanged
                    total.expired += report.summary.expired
                    rejected += report.rejected.map { (batch[$0.index], $0.rejection) }
                }
                for (line, rejection) in rejected {
                    FileHandle.standardError.write(Data("tandemctl: \(file) line \(line.number): \(Render.key(line.record.key)) rejected (\(rejection.reason)): \(rejection.message)\n".utf8))
                }
                if node.json {
                    let rejects: [[String: Any]] = rejected.map { line, rejection in
                        ["line": line.number, "key": Render.key(line.record.key), "reason": "\(rejection.reason)", "message": rejection.message]
                    }
                    print(try Render.json(["stored": total.stored, "unchanged": total.unchanged, "expired": total.expired, "rejected": rejects]))
                } else {
                    print("stored \(total.stored), unchanged \(total.unchanged), expired \(total.expired), rejected \(rejected.count)")
                }
                if !rejected.isEmpty {
                    throw Failure(code: 5, message: "\(rejected.count) session\(rejected.count == 1 ? "" : "s") rejected (listed above); the others were imported")
                }
            }
        }

        /// A line as export writes it. The key is not judged here: the node
        /// says which keys it rejects and why, for every line at once.
        static func record(_ line: Data) -> SessionRecord? {
            guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any],
                let valueText = object["value"] as? String, let value = Data(base64Encoded: valueText)
            else { return nil }
            let key: [UInt8]
            if let text = object["key"] as? String {
                key = Array(text.utf8)
            } else if let encoded = object["key_base64"] as? String, let bytes = Data(base64Encoded: encoded) {
                key = Array(bytes)
            } else {
                return nil
            }
            let flags = (object["flags"] as? NSNumber)?.uint32Value ?? 0
            let deadline = (object["deadline"] as? NSNumber)?.int64Value ?? 0
            return SessionRecord(
                key: key, value: Array(value), flags: flags, deadlineMillis: deadline, cas: 0,
                size: UInt32(clamping: value.count), lastAccessMillis: 0, writer: .thisNode
            )
        }
    }
}
