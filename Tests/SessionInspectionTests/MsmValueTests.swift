import SessionInspection
import Testing

/// The msm layer on values built by hand: the format's rules (FORMAT.md 2, 4, 7) and
/// how the key is used as a hint and checked against the value.
@Suite("msm values")
struct MsmValueTests {
    static let id = "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1"

    static func reason(_ decoding: MsmDecoding) -> String {
        decoding.notMsmReason ?? "decoded: \(decoding)"
    }

    @Test func versionOneHasNoSavedSections() throws {
        var builder = SessionValueBuilder()
        builder.version = 1
        builder.attributes = SessionValueBuilder.attributesBlock(count: 1) { $0.string("k").string("v") }
        let session = try #require(MsmValue.decode(key: Self.id, value: builder.bytes).session)
        #expect(session.version == 1)
        #expect(session.savedRequest == nil)
        #expect(session.savedPrincipal == nil)
        #expect(session.attributes == [MsmAttribute(name: "k", value: .readable(.string("v")))])
    }

    @Test func fieldsThatBreakTheFormatAreNotMsm() {
        func decoded(_ change: (inout SessionValueBuilder) -> Void) -> String {
            var builder = SessionValueBuilder()
            change(&builder)
            return Self.reason(MsmValue.decode(key: Self.id, value: builder.bytes))
        }
        #expect(decoded { $0.version = 3 }.contains("format version 3"))
        #expect(decoded { $0.fieldsLengthError = 1 }.contains("fieldsLength"))
        #expect(decoded { $0.fieldsLengthError = -1 }.contains("fieldsLength"))
        #expect(decoded { $0.isNew = 0x01 }.contains("isNew is byte 0x01"))
        #expect(decoded { $0.isValid = UInt8(ascii: "t") }.contains("isValid"))
        #expect(decoded { $0.authType = 5 }.contains("auth type 5"))
        #expect(decoded { $0.id = "" }.contains("session id"))
        #expect(decoded { $0.principal = [0xAC, 0xED, 0x00, 0x05, 0x42] }.hasPrefix("not an msm session: principal: malformed"))
        #expect(decoded { $0.savedRequest = [0xAC, 0xED, 0x00, 0x05, 0x70] }.hasPrefix("not an msm session: saved request: input ends"))
        #expect(decoded { $0.attributes = [] }.hasPrefix("not an msm session: attributes:"))
        #expect(decoded { $0.attributes = StreamBuilder().string("not a count").bytes }.contains("attribute count"))
        #expect(decoded { $0.attributes = SessionValueBuilder.attributesBlock(count: -1) }.contains("attribute count"))
        #expect(decoded { $0.attributes = SessionValueBuilder.attributesBlock(count: 1) { $0.code(.null).code(.null) } }.contains("name is not a string"))
        #expect(decoded { $0.attributes = SessionValueBuilder.attributesBlock(count: 1_000_000) }.contains("input ends"))
    }

    @Test func oddButReadableValuesGetWarnings() throws {
        var builder = SessionValueBuilder()
        builder.attributes += [0x70]  // a stray byte after the attributes
        builder.creationTime = -5
        builder.id = "no-dashes.here.x"
        let session = try #require(MsmValue.decode(key: nil, value: builder.bytes).session)
        #expect(
            session.warnings == [
                "creationTime -5 is not a plausible time",
                "session id no-dashes.here.x is not of the form msm stores (<id>-<node>[.<route>])",
                "1 byte after the last attribute",
            ]
        )
        #expect(MsmDecoding.session(session).renderedText().contains("\nwarning: 1 byte after the last attribute\n"))
    }

    @Test func bytesAfterAnEmbeddedStreamOnlyWarn() throws {
        var builder = SessionValueBuilder()
        builder.savedPrincipal = StreamBuilder().code(.null).code(.null).code(.null).bytes
        let session = try #require(MsmValue.decode(key: Self.id, value: builder.bytes).session)
        #expect(session.savedPrincipal == MsmPrincipal(value: .null))
        #expect(session.warnings == ["2 bytes after the objects of the saved principal"])
    }

    @Test func principalWithoutTheUsualFields() throws {
        var builder = SessionValueBuilder()
        builder.authType = 2
        builder.principal = StreamBuilder().string("CN=alice").bytes
        let session = try #require(MsmValue.decode(key: Self.id, value: builder.bytes).session)
        #expect(session.authType == .clientCert)
        #expect(session.principal == MsmPrincipal(value: .string("CN=alice")))
        #expect(session.principal?.name == nil)
        #expect(MsmDecoding.session(session).renderedText().contains("\nauth type: CLIENT_CERT\nprincipal: \"CN=alice\"\n"))
    }

    // MARK: Keys as hints

    @Test func theKeyMustNameTheSession() throws {
        let value = SessionValueBuilder().bytes
        for key in [Self.id, "bak:" + Self.id, "app1_" + Self.id, "bak:app1_" + Self.id] {
            #expect(MsmValue.decode(key: key, value: value).session?.warnings == [], "\(key)")
        }
        let other = try #require(MsmValue.decode(key: "AAAA-n2", value: value).session)
        #expect(other.warnings == ["the key AAAA-n2 does not name session \(Self.id)"])
        let suffix = try #require(MsmValue.decode(key: "x" + Self.id, value: value).session)
        #expect(suffix.warnings.count == 1, "a key that merely ends with the id")
    }

    @Test func aSessionUnderAnotherRoleIsShownWithAWarning() throws {
        let value = SessionValueBuilder().bytes
        let underLock = try #require(MsmValue.decode(key: "lock:" + Self.id, value: value).session)
        #expect(underLock.warnings == ["stored under a lock: key, which should hold msm's lock value `locked`"])
        let underValidity = try #require(MsmValue.decode(key: "validity:" + Self.id, value: value).session)
        #expect(underValidity.warnings.count == 1)
        #expect(underValidity.warnings.first?.hasPrefix("stored under a validity: key") == true)
    }

    @Test func valuesThatContradictTheirKey() {
        #expect(Self.reason(MsmValue.decode(key: "lock:" + Self.id, value: Array("unlocked".utf8))) == "a lock: key should hold msm's lock value `locked`")
        #expect(Self.reason(MsmValue.decode(key: "validity:" + Self.id, value: [1, 2, 3])).contains("20 bytes"))
        #expect(Self.reason(MsmValue.decode(key: "ping-n1", value: [0x01])).contains("never stores"))
        #expect(Self.reason(MsmValue.decode(key: "app1_ping-n1", value: [0x01])).contains("never stores"))
        // The lock value and ping marker are only what msm means by them under the right keys.
        #expect(MsmValue.decode(key: Self.id, value: Array("locked".utf8)).notMsmReason != nil)
        #expect(MsmValue.decode(key: "validity:" + Self.id, value: [0x01]).notMsmReason != nil)
        #expect(MsmValue.decode(key: "lock:" + Self.id, value: [0x01]).notMsmReason != nil)
    }

    @Test func validityRecordsNeedPlausibleTimes() throws {
        func record(_ interval: Int32, _ last: Int64, _ this: Int64) -> [UInt8] {
            StreamBuilder(header: false).u32(UInt32(bitPattern: interval)).u64(UInt64(bitPattern: last)).u64(UInt64(bitPattern: this)).bytes
        }
        let key = "validity:" + Self.id
        // Out of order: Tomcats with different clocks can do that, so only a warning under a validity key…
        let swapped = record(1800, 1_795_319_224_782, 1_795_319_224_000)
        let validity = try #require(MsmValue.decode(key: key, value: swapped).validity)
        #expect(validity.warnings == ["thisAccessedTime is before lastAccessedTime (clocks of different Tomcats?)"])
        // …but without a key that is too little to go on.
        #expect(MsmValue.decode(key: nil, value: swapped).notMsmReason != nil)
        // Times before 2000 or after 9999 are nobody's.
        #expect(Self.reason(MsmValue.decode(key: key, value: record(1800, 5, 6))).contains("are not both within"))
        #expect(MsmValue.decode(key: "bak:validity:" + Self.id, value: record(1800, -1, .max)).notMsmReason != nil)
        // msm's "never expires" and an expiry far out.
        #expect(try #require(MsmValue.decode(key: key, value: record(0, 1_795_319_224_782, 1_795_319_224_782)).validity).validUntil == nil)
        let late = try #require(MsmValue.decode(key: key, value: record(.max, 1_795_319_224_782, 253_402_300_799_999)).validity)
        #expect(late.validUntil == 253_402_300_799_999 + Int64(Int32.max) * 1000)
    }

    @Test func keyRoles() {
        let cases: [(String, MsmKey.Role, String)] = [
            (Self.id, .session, Self.id),
            ("validity:" + Self.id, .validity, Self.id),
            ("bak:" + Self.id, .secondarySession, Self.id),
            ("bak:validity:" + Self.id, .secondaryValidity, Self.id),
            ("lock:" + Self.id, .lock, Self.id),
            ("ping-n1", .nodeProbe, "ping-n1"),
            // With storageKeyPrefix=static:app1 (FORMAT.md 1.2).
            ("app1_" + Self.id, .session, "app1_" + Self.id),
            ("validity:app1_" + Self.id, .validity, "app1_" + Self.id),
            ("bak:app1_" + Self.id, .secondarySession, "app1_" + Self.id),
            ("bak:app1_validity:app1_" + Self.id, .secondaryValidity, "app1_" + Self.id),
            ("app1_ping-n1", .nodeProbe, "app1_ping-n1"),
        ]
        for (key, role, sessionKey) in cases {
            let parsed = MsmKey(key)
            #expect(parsed.role == role, "\(key)")
            #expect(parsed.sessionKey == sessionKey, "\(key)")
            #expect(parsed.names(sessionID: Self.id) == (role != .nodeProbe), "\(key)")
        }
    }
}
