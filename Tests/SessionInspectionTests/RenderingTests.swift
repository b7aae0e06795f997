import SessionInspection
import TandemTestSupport
import Testing

/// The two renderings tandemctl prints, exactly, and their building blocks.
@Suite("Renderings")
struct RenderingTests {
    @Test func sessionText() throws {
        let decoding = MsmValue.decode(key: Fixtures.keys["session-seed-counter.bin"], value: try Fixtures.bytes("session-seed-counter.bin"))
        #expect(
            decoding.renderedText() == """
                msm session (format version 2)
                id: 0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1
                created: 2026-11-22T03:47:02.551Z (1795319222551)
                last accessed: 2026-11-22T03:47:04.782Z (1795319224782)
                this accessed: 2026-11-22T03:47:04.782Z (1795319224782)
                last backup: 2026-11-22T03:47:04.782Z (1795319224782)
                max inactive interval: 1800 s
                new: false
                valid: true
                auth type: none
                attributes:
                  magedu.com (java.lang.String) = "magedu.com"
                  counter (java.lang.Integer) = 3

                """
        )
        #expect(decoding.description == decoding.renderedText())
    }

    @Test func sessionTextWithAuthenticationAndASavedRequest() throws {
        let decoding = MsmValue.decode(
            key: Fixtures.keys["session-form-login-pending.bin"], value: try Fixtures.bytes("session-form-login-pending.bin")
        )
        let text = decoding.renderedText()
        #expect(text.contains("\nauth type: FORM\nprincipal: alice, roles admin, user (org.apache.catalina.realm.GenericPrincipal$SerializablePrincipal)\n"))
        #expect(text.contains("\nsaved request (note org.apache.catalina.authenticator.REQUEST):\n  method = \"GET\"\n  requestURI = \"/secure/whoami\"\n"))
        #expect(text.hasSuffix("attributes:\n  loginCsrfToken (java.lang.String) = \"csrf-0123456789\"\n"))
    }

    @Test func otherKindsAsText() throws {
        let validity = MsmValue.decode(key: Fixtures.keys["validity-no-timeout.bin"], value: try Fixtures.bytes("validity-no-timeout.bin"))
        #expect(
            validity.renderedText() == """
                msm validity record
                max inactive interval: -1 s (never expires)
                last accessed: 2026-11-22T03:47:07.391Z (1795319227391)
                this accessed: 2026-11-22T03:47:07.392Z (1795319227392)
                valid until: never expires

                """
        )
        #expect(MsmDecoding.lock.renderedText() == "msm lock: the value `locked`; a request holds this session's lock\n")
        #expect(MsmDecoding.pingMarker.renderedText().hasPrefix("msm ping marker: "))
        #expect(MsmDecoding.notMsm(reason: "x\u{1B}[2J").renderedText() == "not an msm value: x\\u001B[2J\n")
    }

    @Test func validityJSON() throws {
        let decoding = MsmValue.decode(key: Fixtures.keys["validity-seed-counter.bin"], value: try Fixtures.bytes("validity-seed-counter.bin"))
        #expect(
            decoding.json().jsonText
                == #"{"kind":"validity","lastAccessedTime":{"epochMillis":1795319224780,"iso":"2026-11-22T03:47:04.780Z"},"#
                + #""maxInactiveInterval":1800,"thisAccessedTime":{"epochMillis":1795319224780,"iso":"2026-11-22T03:47:04.780Z"},"#
                + #""validUntil":{"epochMillis":1795321024780,"iso":"2026-11-22T04:17:04.780Z"},"warnings":[]}"#
        )
        #expect(MsmDecoding.lock.json().jsonText == #"{"kind":"lock"}"#)
        #expect(MsmDecoding.pingMarker.json().jsonText == #"{"kind":"pingMarker"}"#)
        #expect(MsmDecoding.notMsm(reason: "why").json().jsonText == #"{"kind":"notMsm","reason":"why"}"#)
    }

    @Test func sessionJSON() throws {
        let decoding = MsmValue.decode(key: Fixtures.keys["session-auth-basic.bin"], value: try Fixtures.bytes("session-auth-basic.bin"))
        guard case .object(let session) = decoding.json() else {
            Issue.record("not an object")
            return
        }
        #expect(session["kind"] == .string("session"))
        #expect(session["id"] == .string("28C4917F2AE9D61DC00B5627A5DAD466-n2"))
        #expect(session["creationTime"] == .object(["epochMillis": .integer(1_795_319_234_778), "iso": .string("2026-11-22T03:47:14.778Z")]))
        #expect(session["maxInactiveInterval"] == .integer(1800))
        #expect(session["isNew"] == .bool(false))
        #expect(session["authType"] == .string("BASIC"))
        #expect(session["savedRequest"] == .null)
        #expect(
            session["attributes"]
                == .array([.object(["name": .string("visits"), "type": .string("java.lang.Integer"), "value": .integer(2), "text": .string("2")])])
        )
        guard case .object(let principal)? = session["principal"] else {
            Issue.record("no principal")
            return
        }
        #expect(principal["name"] == .string("alice"))
        #expect(principal["roles"] == .array([.string("admin"), .string("user")]))
        #expect(principal["class"] == .string("org.apache.catalina.realm.GenericPrincipal$SerializablePrincipal"))
        // Deterministic: the same value always prints the same text.
        #expect(decoding.json().jsonText == decoding.json().jsonText)
        #expect(decoding.json().prettyJSONText.hasPrefix("{\n  \"attributes\": [\n    {\n      \"name\": \"visits\",\n"))
    }

    @Test func jsonText() {
        let value = JSONValue.object([
            "b": .array([.integer(-1), .double(0.5), .double(.infinity), .bool(true), .null]),
            "a": .string("q\"\\\n\t\u{1}\u{7F}\u{2028}é😀"),
            "c": .object([:]),
            "d": .array([]),
            "e": .integer(.min),
        ])
        #expect(
            value.jsonText
                == #"{"a":"q\"\\\n\t\u0001\u007f\u2028é😀","b":[-1,0.5,null,true,null],"c":{},"d":[],"e":-9223372036854775808}"#
        )
        #expect(JSONValue.array([.integer(1), .object(["k": .null])]).prettyJSONText == "[\n  1,\n  {\n    \"k\": null\n  }\n]")
    }

    @Test func javaValueJSON() {
        let object = JavaValue.object(
            JavaObject(
                className: "com.example.Child",
                fields: [
                    JavaField(declaringClass: "com.example.Parent", name: "id", value: .primitive(.long(1))),
                    JavaField(declaringClass: "com.example.Child", name: "id", value: .primitive(.char(0x41))),
                    JavaField(declaringClass: "com.example.Child", name: "when", value: .date(epochMillis: 0)),
                ],
                customData: [JavaCustomData(className: "com.example.Child", contents: [.bytes([0xCA, 0xFE]), .object(.null)])]
            )
        )
        #expect(
            object.json().jsonText
                == #"{"class":"com.example.Child","fields":{"Child.id":"A","Parent.id":1,"#
                + #""when":{"epochMillis":0,"iso":"1970-01-01T00:00:00.000Z"}},"#
                + #""writeObjectData":[{"class":"com.example.Child","contents":[{"blockData":"cafe"},null]}]}"#
        )
        #expect(object.renderedText() == "Child{id=1L, id='A', when=Date(0 ms = 1970-01-01T00:00:00.000Z), writeObject(Child)=[0xCAFE, null]}")
        #expect(JavaValue.enumConstant(className: "a.Color", name: "RED").json() == .object(["enum": .string("a.Color"), "constant": .string("RED")]))
        #expect(JavaValue.javaClass(name: "a.B").json() == .object(["javaClass": .string("a.B")]))
        #expect(JavaValue.byteArray([0, 255]).json() == .object(["byteArray": .string("00ff")]))
    }

    /// Everything from a session is escaped in the text rendering, so a value cannot
    /// send escape sequences or fake lines to the terminal.
    @Test func textFromTheSessionIsEscaped() throws {
        var builder = SessionValueBuilder()
        builder.attributes = SessionValueBuilder.attributesBlock(count: 2) { stream in
            stream.string("evil\nname").string("\u{1B}]0;title\u{07}\u{202E}txt.exe")
            stream.string("obj").code(.object).classDescriptor("x.\u{1B}[31mRed", fields: [("I", "f\u{1B}", nil)]).u32(1)
        }
        let text = MsmValue.decode(key: nil, value: builder.bytes).renderedText()
        #expect(!text.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x202E })
        #expect(text.contains(#"  evil\nname (java.lang.String) = "\u001B]0;title\u0007\u202Etxt.exe""#))
        #expect(text.contains(#"  obj (x.\u001B[31mRed) = \u001B[31mRed{f\u001B=1}"#))
    }

    @Test func timestamps() {
        let cases: [(Int64, String)] = [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_795_319_222_551, "2026-11-22T03:47:02.551Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
            (-62_135_596_800_001, "0000-12-31T23:59:59.999Z"),
            (-62_167_219_200_001, "-0001-12-31T23:59:59.999Z"),
            (.max, "292278994-08-17T07:12:55.807Z"),
            (.min, "-292275055-05-16T16:47:04.192Z"),
        ]
        for (millis, text) in cases {
            #expect(JavaValue.date(epochMillis: millis).renderedText() == "Date(\(millis) ms = \(text))")
        }
    }

    @Test func javaTypeNames() {
        #expect(JavaValue.sourceTypeName(ofJVMName: "[B") == "byte[]")
        #expect(JavaValue.sourceTypeName(ofJVMName: "[[Z") == "boolean[][]")
        #expect(JavaValue.sourceTypeName(ofJVMName: "[Ljava.util.Map;") == "java.util.Map[]")
        #expect(JavaValue.sourceTypeName(ofJVMName: "[X") == "[X")
        #expect(JavaValue.sourceTypeName(ofJVMName: "[") == "[")
        #expect(JavaValue.sourceTypeName(ofJVMName: "java.lang.String") == "java.lang.String")
    }
}
