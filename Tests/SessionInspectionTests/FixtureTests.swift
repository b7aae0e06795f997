import SessionInspection
import TandemTestSupport
import Testing

/// The decoding MANIFEST.md states for each fixture, written out by hand and checked
/// field by field. (`ManifestTests` reads the same expectations from MANIFEST.md
/// itself, so a mistake in one of the two shows up.)
@Suite("msm fixtures")
struct FixtureTests {
    struct ExpectedAttribute: Sendable {
        let name: String
        /// The class named in the stream. MANIFEST.md writes `java.util.ArrayList<String>`
        /// for the list; the type argument is not in the stream.
        let type: String
        let value: JavaValue
        /// As MANIFEST.md writes the value.
        let text: String
    }

    struct ExpectedPrincipal: Sendable {
        let name: String
        let roles: [String]
        static let className = "org.apache.catalina.realm.GenericPrincipal$SerializablePrincipal"
    }

    struct ExpectedSession: Sendable, CustomTestStringConvertible {
        let file: String
        let id: String
        let creationTime: Int64
        let lastAccessedTime: Int64
        let maxInactiveInterval: Int32
        let isNew: Bool
        let thisAccessedTime: Int64
        let lastBackupTime: Int64
        var authType: MsmAuthType? = nil
        var principal: ExpectedPrincipal? = nil
        var hasSavedRequest = false
        var savedPrincipal: ExpectedPrincipal? = nil
        let attributes: [ExpectedAttribute]

        var testDescription: String { file }
    }

    static let richAttributes: [ExpectedAttribute] = [
        .init(name: "str", type: "java.lang.String", value: .string("hello msm"), text: "\"hello msm\""),
        .init(
            name: "date", type: "java.util.Date", value: .date(epochMillis: 1_700_000_000_000),
            text: "Date(1700000000000 ms = 2023-11-14T22:13:20.000Z)"
        ),
        .init(name: "bool", type: "java.lang.Boolean", value: .boxed(.boolean(true)), text: "true"),
        .init(name: "double", type: "java.lang.Double", value: .boxed(.double(3.25)), text: "3.25"),
        .init(
            name: "bytes", type: "byte[]", value: .byteArray([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]),
            text: "{0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF}"
        ),
        .init(
            name: "unicode", type: "java.lang.String",
            value: .string("Gr\u{FC}\u{DF}e \u{2713} \u{1F600}"), text: "\"Grüße ✓ 😀\""
        ),
        .init(
            name: "list", type: "java.util.ArrayList",
            value: .collection(className: "java.util.ArrayList", elements: [.string("a"), .string("b"), .string("c")]),
            text: "[\"a\", \"b\", \"c\"]"
        ),
        .init(
            name: "map", type: "java.util.HashMap",
            value: .map(
                className: "java.util.HashMap",
                entries: [
                    JavaMapEntry(key: .string("one"), value: .boxed(.int(1))),
                    JavaMapEntry(key: .string("two"), value: .boxed(.int(2))),
                    JavaMapEntry(key: .string("three"), value: .boxed(.int(3))),
                ]
            ),
            text: "{\"one\"=1, \"two\"=2, \"three\"=3}"
        ),
        .init(
            name: "user", type: "e2e.User",
            value: .object(
                JavaObject(
                    className: "e2e.User",
                    fields: [
                        JavaField(declaringClass: "e2e.User", name: "admin", value: .primitive(.boolean(true))),
                        JavaField(declaringClass: "e2e.User", name: "id", value: .primitive(.int(7))),
                        JavaField(declaringClass: "e2e.User", name: "name", value: .string("alice")),
                        JavaField(
                            declaringClass: "e2e.User", name: "roles",
                            value: .array(className: "[Ljava.lang.String;", elements: [.string("admin"), .string("user")])
                        ),
                    ],
                    customData: []
                )
            ),
            text: "User{admin=true, id=7, name=\"alice\", roles={\"admin\", \"user\"}}"
        ),
        .init(name: "int", type: "java.lang.Integer", value: .boxed(.int(42)), text: "42"),
        .init(name: "long", type: "java.lang.Long", value: .boxed(.long(1_234_567_890_123)), text: "1234567890123L"),
    ]

    static func richSession(file: String) -> ExpectedSession {
        ExpectedSession(
            file: file, id: "FF19EF1C768E388FBA4D7B9FCF64E56A-n2", creationTime: 1_795_319_217_972,
            lastAccessedTime: 1_795_319_218_000, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_218_000, lastBackupTime: 1_795_319_218_002, attributes: richAttributes
        )
    }

    static func string(_ name: String, _ value: String) -> ExpectedAttribute {
        ExpectedAttribute(name: name, type: "java.lang.String", value: .string(value), text: "\"\(value)\"")
    }

    static func integer(_ name: String, _ value: Int32) -> ExpectedAttribute {
        ExpectedAttribute(name: name, type: "java.lang.Integer", value: .boxed(.int(value)), text: "\(value)")
    }

    static let alice = ExpectedPrincipal(name: "alice", roles: ["admin", "user"])

    static let sessions: [ExpectedSession] = [
        richSession(file: "session-rich-attributes.bin"),
        richSession(file: "bak-session-rich-attributes.bin"),
        ExpectedSession(
            file: "session-empty.bin", id: "744B82AFE666E0B0B555328A49C2F328-n2", creationTime: 1_795_319_219_512,
            lastAccessedTime: 1_795_319_219_512, maxInactiveInterval: 1800, isNew: true,
            thisAccessedTime: 1_795_319_219_513, lastBackupTime: 1_795_319_219_514, attributes: []
        ),
        ExpectedSession(
            file: "session-seed-counter.bin", id: "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", creationTime: 1_795_319_222_551,
            lastAccessedTime: 1_795_319_224_782, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_224_782, lastBackupTime: 1_795_319_224_782,
            attributes: [string("magedu.com", "magedu.com"), integer("counter", 3)]
        ),
        ExpectedSession(
            file: "session-no-timeout.bin", id: "41A03ADC0C47957C465E9F091BC819BA-n1", creationTime: 1_795_319_227_391,
            lastAccessedTime: 1_795_319_227_391, maxInactiveInterval: -1, isNew: true,
            thisAccessedTime: 1_795_319_227_392, lastBackupTime: 1_795_319_227_394, attributes: []
        ),
        // Both values are back-references (to the name and to the count).
        ExpectedSession(
            file: "session-sticky-seed-counter.bin", id: "E9B35F20CE79117ED69183A649B14E70-n1.A",
            creationTime: 1_795_319_247_392, lastAccessedTime: 1_795_319_247_411, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_248_519, lastBackupTime: 1_795_319_248_524,
            attributes: [string("magedu.com", "magedu.com"), integer("counter", 2)]
        ),
        ExpectedSession(
            file: "session-auth-basic.bin", id: "28C4917F2AE9D61DC00B5627A5DAD466-n2", creationTime: 1_795_319_234_778,
            lastAccessedTime: 1_795_319_236_010, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_236_010, lastBackupTime: 1_795_319_236_010, authType: .basic, principal: alice,
            attributes: [integer("visits", 2)]
        ),
        ExpectedSession(
            file: "session-form-saved-request.bin", id: "7A2C4884E8C755D1B0EAB63A1D6CF09A-n1",
            creationTime: 1_795_319_252_514, lastAccessedTime: 1_795_319_254_080, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_254_080, lastBackupTime: 1_795_319_254_089, hasSavedRequest: true,
            attributes: [string("loginCsrfToken", "csrf-0123456789")]
        ),
        ExpectedSession(
            file: "session-form-login-pending.bin", id: "27EE33679F01D8BAEAA845FCFE4AFB9B-n2",
            creationTime: 1_795_319_252_514, lastAccessedTime: 1_795_319_255_598, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_255_598, lastBackupTime: 1_795_319_255_594, authType: .form, principal: alice,
            hasSavedRequest: true, attributes: [string("loginCsrfToken", "csrf-0123456789")]
        ),
        ExpectedSession(
            file: "session-auth-form.bin", id: "27EE33679F01D8BAEAA845FCFE4AFB9B-n2", creationTime: 1_795_319_252_514,
            lastAccessedTime: 1_795_319_257_113, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_257_113, lastBackupTime: 1_795_319_257_115, authType: .form, principal: alice,
            attributes: [integer("visits", 1), string("loginCsrfToken", "csrf-0123456789")]
        ),
        ExpectedSession(
            file: "session-saved-principal-note.bin", id: "F64FD2A863D614C7FB2E00C7CDDD0CFD-n2",
            creationTime: 1_795_319_221_028, lastAccessedTime: 1_795_319_221_043, maxInactiveInterval: 1800, isNew: false,
            thisAccessedTime: 1_795_319_221_043, lastBackupTime: 1_795_319_221_042,
            savedPrincipal: ExpectedPrincipal(name: "bob", roles: ["user"]), attributes: [string("step", "login-pending")]
        ),
    ]

    @Test("session fixture decodes as MANIFEST.md states", arguments: sessions)
    func session(_ expected: ExpectedSession) throws {
        let value = try Fixtures.bytes(expected.file)
        let key = try #require(Fixtures.keys[expected.file])
        let decoding = MsmValue.decode(key: key, value: value)
        let session = try #require(decoding.session, "\(expected.file): \(decoding)")

        #expect(session.version == 2)
        #expect(session.id == expected.id)
        #expect(session.creationTime == expected.creationTime)
        #expect(session.lastAccessedTime == expected.lastAccessedTime)
        #expect(session.maxInactiveInterval == expected.maxInactiveInterval)
        #expect(session.isNew == expected.isNew)
        #expect(session.isValid)
        #expect(session.thisAccessedTime == expected.thisAccessedTime)
        #expect(session.lastBackupTime == expected.lastBackupTime)
        #expect(session.authType == expected.authType)
        Self.check(session.principal, expected.principal, what: "principal")
        Self.check(session.savedPrincipal, expected.savedPrincipal, what: "saved principal")
        #expect((session.savedRequest != nil) == expected.hasSavedRequest)
        #expect(session.warnings == [])

        #expect(session.attributes.map(\.name) == expected.attributes.map(\.name))
        for (attribute, want) in zip(session.attributes, expected.attributes) {
            #expect(attribute.javaType == want.type, "\(want.name)")
            #expect(attribute.value == .readable(want.value), "\(want.name)")
            #expect(attribute.renderedValue() == want.text, "\(want.name)")
            #expect(session[attribute: want.name] == attribute)
        }

        // The same bytes without the key are still recognised as this session.
        #expect(MsmValue.decode(key: nil, value: value) == decoding)
    }

    static func check(_ principal: MsmPrincipal?, _ expected: ExpectedPrincipal?, what: String) {
        guard let expected else {
            #expect(principal == nil, "no \(what) expected")
            return
        }
        guard let principal else {
            Issue.record("\(what) missing")
            return
        }
        #expect(principal.className == ExpectedPrincipal.className)
        #expect(principal.name == expected.name)
        #expect(principal.roles == expected.roles)
        guard case .object(let object) = principal.value else {
            Issue.record("\(what) is not an object")
            return
        }
        #expect(object.fields.map(\.name) == ["attributes", "name", "password", "principal", "roles"])
        #expect(object[field: "attributes"] == .null)
        #expect(object[field: "password"] == .null)
        #expect(object[field: "principal"] == .null)
    }

    @Test func savedRequestOfTheFormLogin() throws {
        for file in ["session-form-saved-request.bin", "session-form-login-pending.bin"] {
            let decoding = MsmValue.decode(key: Fixtures.keys[file], value: try Fixtures.bytes(file))
            let request = try #require(decoding.session?.savedRequest, "\(file)")
            #expect(request.body == .null)
            #expect(request.contentType == .null)
            #expect(request.method == .string("GET"))
            #expect(request.queryString == .string("x=1"))
            #expect(request.requestURI == .string("/secure/whoami"))
            #expect(request.decodedRequestURI == .string("/secure/whoami"))
            func list(_ value: String) -> JavaValue {
                .collection(className: "java.util.ArrayList", elements: [.string(value)])
            }
            #expect(
                request.headers
                    == .map(
                        className: "java.util.HashMap",
                        entries: [
                            JavaMapEntry(key: .string("cookie"), value: list("JSESSIONID=EDBC2F4DED37316D55CB35EFAC07BAF3-n1")),
                            JavaMapEntry(key: .string("accept-language"), value: list("de-DE")),
                            JavaMapEntry(key: .string("host"), value: list("127.0.0.1:28184")),
                            JavaMapEntry(key: .string("accept-encoding"), value: list("identity")),
                            JavaMapEntry(key: .string("accept"), value: list("*/*")),
                            JavaMapEntry(key: .string("user-agent"), value: list("msm-fixture-client/1.0")),
                        ]
                    )
            )
            let locale = JavaValue.object(
                JavaObject(
                    className: "java.util.Locale",
                    fields: [
                        JavaField(declaringClass: "java.util.Locale", name: "hashcode", value: .primitive(.int(-1))),
                        JavaField(declaringClass: "java.util.Locale", name: "country", value: .string("DE")),
                        JavaField(declaringClass: "java.util.Locale", name: "extensions", value: .string("")),
                        JavaField(declaringClass: "java.util.Locale", name: "language", value: .string("de")),
                        JavaField(declaringClass: "java.util.Locale", name: "script", value: .string("")),
                        JavaField(declaringClass: "java.util.Locale", name: "variant", value: .string("")),
                    ],
                    customData: []
                )
            )
            #expect(request.locales == .collection(className: "java.util.ArrayList", elements: [locale]))
        }
    }

    struct ExpectedValidity: Sendable, CustomTestStringConvertible {
        let file: String
        let maxInactiveInterval: Int32
        let lastAccessedTime: Int64
        let thisAccessedTime: Int64
        var testDescription: String { file }
    }

    static let validities: [ExpectedValidity] = [
        .init(file: "validity-rich-attributes.bin", maxInactiveInterval: 1800, lastAccessedTime: 1_795_319_217_972, thisAccessedTime: 1_795_319_217_981),
        .init(file: "bak-validity-rich-attributes.bin", maxInactiveInterval: 1800, lastAccessedTime: 1_795_319_217_972, thisAccessedTime: 1_795_319_217_981),
        .init(file: "validity-empty.bin", maxInactiveInterval: 1800, lastAccessedTime: 1_795_319_219_512, thisAccessedTime: 1_795_319_219_513),
        .init(file: "validity-seed-counter.bin", maxInactiveInterval: 1800, lastAccessedTime: 1_795_319_224_780, thisAccessedTime: 1_795_319_224_780),
        .init(file: "validity-no-timeout.bin", maxInactiveInterval: -1, lastAccessedTime: 1_795_319_227_391, thisAccessedTime: 1_795_319_227_392),
    ]

    @Test("validity fixture decodes as MANIFEST.md states", arguments: validities)
    func validity(_ expected: ExpectedValidity) throws {
        let value = try Fixtures.bytes(expected.file)
        let decoding = MsmValue.decode(key: Fixtures.keys[expected.file], value: value)
        let validity = try #require(decoding.validity, "\(expected.file): \(decoding)")
        #expect(validity.maxInactiveInterval == expected.maxInactiveInterval)
        #expect(validity.lastAccessedTime == expected.lastAccessedTime)
        #expect(validity.thisAccessedTime == expected.thisAccessedTime)
        #expect(validity.warnings == [])
        if expected.maxInactiveInterval > 0 {
            #expect(validity.validUntil == expected.thisAccessedTime + Int64(expected.maxInactiveInterval) * 1000)
        } else {
            #expect(validity.validUntil == nil)
        }

        // Without the key, plausible times in order still make it a validity record, with a warning.
        let unkeyed = try #require(MsmValue.decode(key: nil, value: value).validity)
        #expect(unkeyed.maxInactiveInterval == expected.maxInactiveInterval)
        #expect(unkeyed.warnings.count == 1)
    }

    @Test func lockAndPingMarker() throws {
        let lock = try Fixtures.bytes("lock.bin")
        #expect(lock == Array("locked".utf8))
        #expect(MsmValue.decode(key: Fixtures.keys["lock.bin"], value: lock) == .lock)
        #expect(MsmValue.decode(key: nil, value: lock) == .lock)

        let ping = try Fixtures.bytes("ping-marker-session-key.bin")
        #expect(ping == [0x01])
        #expect(MsmValue.decode(key: Fixtures.keys["ping-marker-session-key.bin"], value: ping) == .pingMarker)
        #expect(MsmValue.decode(key: nil, value: ping) == .pingMarker)
        // msm pings `bak:` keys the same way.
        #expect(MsmValue.decode(key: "bak:A00EABA537DDC095C49E5CD98628F417-n2", value: ping) == .pingMarker)
    }

    @Test func backupsAreByteIdenticalToTheirPrimaries() throws {
        #expect(try Fixtures.bytes("bak-session-rich-attributes.bin") == Fixtures.bytes("session-rich-attributes.bin"))
        #expect(try Fixtures.bytes("bak-validity-rich-attributes.bin") == Fixtures.bytes("validity-rich-attributes.bin"))
    }

    /// Every fixture MANIFEST.md lists is covered above, and every `.bin` in the
    /// directory is listed (a new fixture must get expectations).
    @Test func everyFixtureHasExpectations() throws {
        let covered = Set(Self.sessions.map(\.file) + Self.validities.map(\.file) + ["lock.bin", "ping-marker-session-key.bin"])
        #expect(covered == Set(Fixtures.names))
        let onDisk = try Fixtures.binFilesOnDisk()
        #expect(Set(onDisk) == Set(Fixtures.names), "fixtures on disk and in Fixtures.keys differ")
    }
}
