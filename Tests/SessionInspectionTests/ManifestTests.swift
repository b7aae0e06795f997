import SessionInspection
import TandemTestSupport
import Testing

/// Reads the expected decodings out of MANIFEST.md (its per-file sections: the key
/// line, the field table, the attribute table, the validity line) and compares the
/// decoder's results with them, value by value in MANIFEST.md's own notation.
@Suite("MANIFEST.md")
struct ManifestTests {
    /// One `### \`file.bin\`` section.
    struct Section {
        var file: String
        var bullets: [String] = []
        /// The `| field | value |` rows.
        var fields: [String: String] = [:]
        /// The `| # | attribute name | Java type | value |` rows.
        var attributes: [(name: String, type: String, value: String)] = []
        var paragraphs: [String] = []
    }

    static func sections() throws -> [Section] {
        var sections: [Section] = []
        for line in try Fixtures.text("MANIFEST.md").split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            if line.hasPrefix("### `"), let file = backticked(line) {
                sections.append(Section(file: file))
                continue
            }
            guard !sections.isEmpty else { continue }
            if line.hasPrefix("## ") {
                break
            } else if line.hasPrefix("- ") {
                sections[sections.count - 1].bullets.append(String(line.dropFirst(2)))
            } else if line.hasPrefix("| ") {
                let cells = line.split(separator: "|", omittingEmptySubsequences: false).dropFirst().dropLast()
                    .map { String($0).trimmingSpaces() }
                if cells.count == 2, cells[0] != "field", !cells[0].hasPrefix("---") {
                    sections[sections.count - 1].fields[cells[0]] = cells[1]
                } else if cells.count == 4, Int(cells[0]) != nil, let name = backticked(cells[1]), let type = backticked(cells[2]) {
                    sections[sections.count - 1].attributes.append((name, type, cells[3]))
                }
            } else if !line.isEmpty {
                sections[sections.count - 1].paragraphs.append(line)
            }
        }
        return sections
    }

    /// The text between the first pair of backticks.
    static func backticked(_ text: String) -> String? {
        let parts = text.split(separator: "`", omittingEmptySubsequences: false)
        return parts.count >= 3 ? String(parts[1]) : nil
    }

    /// The integer the text starts with (`1795319217972 (2026-…)`, `1 = BASIC`).
    static func leadingInteger(_ text: String?) -> Int64? {
        guard let text else { return nil }
        return Int64(text.prefix(while: { $0 == "-" || $0.isNumber }))
    }

    static func leadingWord(_ text: String?) -> String? {
        text.map { String($0.prefix(while: { $0.isLetter })) }
    }

    @Test func manifestCoversEveryFixture() throws {
        #expect(Set(try Self.sections().map(\.file)) == Set(Fixtures.names))
    }

    @Test func keysAndLengths() throws {
        for section in try Self.sections() {
            let keyLine = try #require(section.bullets.first, "\(section.file) has no key line")
            #expect(Self.backticked(keyLine) == Fixtures.keys[section.file], "\(section.file)")
            let length = try Fixtures.bytes(section.file).count
            #expect(keyLine.contains(", \(length) bytes."), "\(section.file): \(keyLine)")
            #expect(keyLine.contains("flags 0,"), "\(section.file)")
        }
    }

    /// Includes the validity sections' byte-identity notes (they have no field table).
    @Test func sessionsMatchTheManifest() throws {
        var checked = 0
        var identical = 0
        for section in try Self.sections() {
            let file = section.file
            let value = try Fixtures.bytes(file)
            if let original = section.paragraphs.first(where: { $0.contains("Byte-identical to") }) ?? section.bullets.first(where: { $0.contains("Byte-identical to") }) {
                let other = try #require(original.split(separator: "`").dropFirst().first.map(String.init))
                let otherValue = try Fixtures.bytes(other)
                #expect(value == otherValue, "\(file) should equal \(other)")
                // So the backup decodes like its primary (whose table is checked below), under its own key.
                #expect(MsmValue.decode(key: Fixtures.keys[file], value: value) == MsmValue.decode(key: Fixtures.keys[other], value: otherValue))
                identical += 1
            }
            guard !section.fields.isEmpty else { continue }
            checked += 1
            let decoding = MsmValue.decode(key: Fixtures.keys[file], value: value)
            let session = try #require(decoding.session, "\(file): \(decoding)")
            let fields = section.fields
            #expect(Int64(session.version) == Self.leadingInteger(fields["version"]), "\(file)")
            #expect(session.id == Self.backticked(fields["id"] ?? ""), "\(file)")
            #expect(session.creationTime == Self.leadingInteger(fields["creationTime"]), "\(file)")
            #expect(session.lastAccessedTime == Self.leadingInteger(fields["lastAccessedTime"]), "\(file)")
            #expect(session.thisAccessedTime == Self.leadingInteger(fields["thisAccessedTime"]), "\(file)")
            #expect(session.lastBackupTime == Self.leadingInteger(fields["lastBackupTime"]), "\(file)")
            #expect(Int64(session.maxInactiveInterval) == Self.leadingInteger(fields["maxInactiveInterval"]), "\(file)")
            #expect(String(session.isNew) == Self.leadingWord(fields["isNew"]), "\(file)")
            #expect(String(session.isValid) == Self.leadingWord(fields["isValid"]), "\(file)")
            #expect(Int64(session.authType?.rawValue ?? 0) == Self.leadingInteger(fields["authType"]), "\(file)")
            if let name = session.authType?.name {
                #expect(fields["authType"]?.hasSuffix("= " + name) == true, "\(file)")
            }
            Self.check(session.principal, against: fields["principal"], file: file)
            Self.check(session.savedPrincipal, against: fields["savedPrincipal"], file: file)
            Self.check(session.savedRequest, against: fields["savedRequest"], file: file)

            let block = try #require(fields["attributes block"], "\(file)")
            #expect(block.hasSuffix("count \(session.attributes.count)"), "\(file): \(block)")
            #expect(session.attributes.count == section.attributes.count, "\(file)")
            for (attribute, row) in zip(session.attributes, section.attributes) {
                #expect(attribute.name == row.name, "\(file)")
                // `java.util.ArrayList<String>`: the type argument is MANIFEST.md's annotation, not in the stream.
                let type = String(row.type.prefix(while: { $0 != "<" }))
                #expect(attribute.javaType == type, "\(file): \(row.name)")
                #expect(attribute.renderedValue() == row.value, "\(file): \(row.name)")
            }
        }
        #expect(checked == 10)
        #expect(identical == 2)
    }

    /// `length 0 (none)`, or `296 bytes: \`<class>\` <value as Java-like text>`.
    static func check(_ principal: MsmPrincipal?, against cell: String?, file: String) {
        guard let cell else {
            Issue.record("\(file): no principal row")
            return
        }
        if cell == "length 0 (none)" {
            #expect(principal == nil, "\(file)")
            return
        }
        guard let principal else {
            Issue.record("\(file): principal missing, MANIFEST.md says \(cell)")
            return
        }
        #expect(principal.className == backticked(cell), "\(file)")
        let rendered = cell.split(separator: "` ", maxSplits: 1).last.map(String.init)
        #expect(principal.value.renderedText() == rendered, "\(file)")
    }

    /// `length 0 (none)`, or `643 bytes, 8 objects: body=null; contentType=null; headers={…}; …`.
    static func check(_ request: MsmSavedRequest?, against cell: String?, file: String) {
        guard let cell else {
            Issue.record("\(file): no savedRequest row")
            return
        }
        if cell == "length 0 (none)" {
            #expect(request == nil, "\(file)")
            return
        }
        guard let request else {
            Issue.record("\(file): saved request missing, MANIFEST.md says \(cell)")
            return
        }
        let names = ["body", "contentType", "headers", "locales", "method", "queryString", "requestURI", "decodedRequestURI"]
        let values = [request.body, request.contentType, request.headers, request.locales, request.method,
                      request.queryString, request.requestURI, request.decodedRequestURI]
        for (index, name) in names.enumerated() {
            let start = index == 0 ? "8 objects: \(name)=" : "; \(name)="
            let end = index + 1 < names.count ? "; \(names[index + 1])=" : nil
            guard let startRange = cell.range(of: start) else {
                Issue.record("\(file): no \(name) in \(cell)")
                continue
            }
            let rest = cell[startRange.upperBound...]
            let text = end.flatMap { rest.range(of: $0) }.map { String(rest[..<$0.lowerBound]) } ?? String(rest)
            #expect(values[index].renderedText() == text, "\(file): \(name)")
        }
    }

    @Test func validityRecordsMatchTheManifest() throws {
        var checked = 0
        for section in try Self.sections() {
            guard let line = section.bullets.first(where: { $0.hasPrefix("maxInactiveInterval = ") }) else { continue }
            checked += 1
            var numbers: [String: Int64] = [:]
            for part in line.split(separator: ", ") {
                let pair = part.split(separator: " = ", maxSplits: 1)
                if pair.count == 2 { numbers[String(pair[0])] = Self.leadingInteger(String(pair[1])) }
            }
            let decoding = MsmValue.decode(key: Fixtures.keys[section.file], value: try Fixtures.bytes(section.file))
            let validity = try #require(decoding.validity, "\(section.file): \(decoding)")
            #expect(Int64(validity.maxInactiveInterval) == numbers["maxInactiveInterval"], "\(section.file)")
            #expect(validity.lastAccessedTime == numbers["lastAccessedTime"], "\(section.file)")
            #expect(validity.thisAccessedTime == numbers["thisAccessedTime"], "\(section.file)")
        }
        // The fifth, bak-validity-rich-attributes.bin, is byte-identical to validity-rich-attributes.bin.
        #expect(checked == 4)
    }

    @Test func lockAndPingMatchTheManifest() throws {
        for section in try Self.sections() {
            let decoding = MsmValue.decode(key: Fixtures.keys[section.file], value: try Fixtures.bytes(section.file))
            if section.bullets.contains(where: { $0.hasPrefix("value: ASCII `locked`") }) {
                #expect(decoding == .lock, "\(section.file)")
            }
            if section.bullets.contains(where: { $0.hasPrefix("value: the single byte 0x01") }) {
                #expect(decoding == .pingMarker, "\(section.file)")
            }
        }
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
