import SessionInspection
import TandemTestSupport
import Testing

/// The Java serialization reader on streams the JDK wrote (`JDKVectors`) and on
/// hand-built ones that break the grammar or the limits.
@Suite("Java serialization streams")
struct JavaStreamTests {
    static func one(_ bytes: [UInt8]) throws -> JavaValue {
        let objects = try JavaObjectStream.readObjects(from: bytes)
        try #require(objects.count == 1)
        return objects[0]
    }

    static func expectError(_ bytes: [UInt8], _ matches: (SessionInspectionError) -> Bool, _ comment: Comment? = nil) {
        do {
            let objects = try JavaObjectStream.readObjects(from: bytes)
            Issue.record("decoded \(objects) where an error was expected; \(comment?.description ?? "")")
        } catch {
            #expect(matches(error), "\(error)")
        }
    }

    static func list(_ className: String, _ elements: [JavaValue]) -> JavaValue {
        .collection(className: className, elements: elements)
    }

    static func strings(_ values: String...) -> [JavaValue] { values.map { .string($0) } }

    static func entry(_ key: JavaValue, _ value: JavaValue) -> JavaMapEntry { JavaMapEntry(key: key, value: value) }

    // MARK: JDK classes

    @Test func collections() throws {
        #expect(try Self.one(JDKVectors.hashSet) == Self.list("java.util.HashSet", Self.strings("x")))
        #expect(try Self.one(JDKVectors.linkedHashSet) == Self.list("java.util.LinkedHashSet", Self.strings("b", "a")))
        #expect(try Self.one(JDKVectors.treeSet) == Self.list("java.util.TreeSet", Self.strings("a", "b")))
        #expect(try Self.one(JDKVectors.linkedList) == Self.list("java.util.LinkedList", [.boxed(.int(1)), .boxed(.int(2))]))
        #expect(try Self.one(JDKVectors.arrayDeque) == Self.list("java.util.ArrayDeque", Self.strings("head", "tail")))
        #expect(try Self.one(JDKVectors.vector) == Self.list("java.util.Vector", Self.strings("v1", "v2")))
        #expect(try Self.one(JDKVectors.emptyList) == Self.list("java.util.Collections$EmptyList", []))
        // UnmodifiableRandomAccessList replaces itself by an UnmodifiableList when serialized.
        #expect(
            try Self.one(JDKVectors.unmodifiableList)
                == Self.list("java.util.Collections$UnmodifiableList", Self.strings("u"))
        )
        #expect(try Self.one(JDKVectors.singletonList) == Self.list("java.util.Collections$SingletonList", Self.strings("only")))
        #expect(try Self.one(JDKVectors.arraysAsList) == Self.list("java.util.Arrays$ArrayList", Self.strings("p", "q")))
        let seconds = JavaValue.enumConstant(className: "java.util.concurrent.TimeUnit", name: "SECONDS")
        let minutes = JavaValue.enumConstant(className: "java.util.concurrent.TimeUnit", name: "MINUTES")
        #expect(try Self.one(JDKVectors.enumConstant) == seconds)
        #expect(try Self.one(JDKVectors.enumSet) == Self.list("java.util.EnumSet", [seconds, minutes]))
        #expect(try Self.one(JDKVectors.enumSet).renderedText() == "[TimeUnit.SECONDS, TimeUnit.MINUTES]")
    }

    @Test func maps() throws {
        #expect(
            try Self.one(JDKVectors.treeMap)
                == .map(className: "java.util.TreeMap", entries: [Self.entry(.string("a"), .boxed(.int(1))), Self.entry(.string("b"), .boxed(.int(2)))])
        )
        #expect(
            try Self.one(JDKVectors.linkedHashMap)
                == .map(className: "java.util.LinkedHashMap", entries: [Self.entry(.string("z"), .boxed(.long(26))), Self.entry(.string("y"), .boxed(.long(25)))])
        )
        #expect(try Self.one(JDKVectors.hashtable) == .map(className: "java.util.Hashtable", entries: [Self.entry(.string("k"), .string("v"))]))
        #expect(
            try Self.one(JDKVectors.concurrentHashMap)
                == .map(className: "java.util.concurrent.ConcurrentHashMap", entries: [Self.entry(.string("on"), .boxed(.boolean(true)))])
        )
        #expect(try Self.one(JDKVectors.emptyMap) == .map(className: "java.util.Collections$EmptyMap", entries: []))
        #expect(
            try Self.one(JDKVectors.enumMap)
                == .map(
                    className: "java.util.EnumMap",
                    entries: [Self.entry(.enumConstant(className: "java.util.concurrent.TimeUnit", name: "DAYS"), .string("d"))]
                )
        )
        #expect(try Self.one(JDKVectors.treeMap).renderedText() == "{\"a\"=1, \"b\"=2}")
    }

    @Test func boxesClassesAndArrays() throws {
        let boxes = try JavaObjectStream.readObjects(from: JDKVectors.boxes)
        #expect(boxes.count == 5)
        #expect(boxes.prefix(4) == [.boxed(.char(0x78)), .boxed(.short(-2)), .boxed(.byte(7)), .boxed(.float(1.5))])
        #expect(boxes.map(\.javaTypeName) == ["java.lang.Character", "java.lang.Short", "java.lang.Byte", "java.lang.Float", "java.lang.Double"])
        #expect(boxes.map { $0.renderedText() } == ["'x'", "-2", "7", "1.5", "NaN"])
        #expect(boxes[4].json() == .string("NaN"))

        #expect(try Self.one(JDKVectors.classObject) == .javaClass(name: "java.lang.String"))
        let ints = try Self.one(JDKVectors.intArray)
        #expect(ints == .array(className: "[I", elements: [.primitive(.int(1)), .primitive(.int(-1))]))
        #expect(ints.javaTypeName == "int[]")
        let nested = try Self.one(JDKVectors.nestedArray)
        #expect(nested.javaTypeName == "java.lang.String[][]")
        #expect(
            nested
                == .array(
                    className: "[[Ljava.lang.String;",
                    elements: [.array(className: "[Ljava.lang.String;", elements: [.string("a")]), .array(className: "[Ljava.lang.String;", elements: [])]
                )
        )
        #expect(nested.renderedText() == "{{\"a\"}, {}}")
        #expect(try Self.one(JDKVectors.date) == .date(epochMillis: -1))
        #expect(try Self.one(JDKVectors.date).renderedText() == "Date(-1 ms = 1969-12-31T23:59:59.999Z)")
        // NUL is C0 80 in modified UTF-8.
        #expect(try Self.one(JDKVectors.nul) == .string("a\u{0}b"))
        #expect(try Self.one(JDKVectors.nul).renderedText() == "\"a\\u0000b\"")
    }

    @Test func cyclesBecomeBackReferences() throws {
        let array = try Self.one(JDKVectors.selfReferencingArray)
        #expect(array == .array(className: "[Ljava.lang.Object;", elements: [.backReference(className: "[Ljava.lang.Object;")]))
        #expect(array.renderedText() == "{<cycle: [Ljava.lang.Object;>}")
        let list = try Self.one(JDKVectors.selfReferencingList)
        #expect(list == Self.list("java.util.ArrayList", [.backReference(className: "java.util.ArrayList")]))
        #expect(list.json() == .array([.object(["backReference": .string("java.util.ArrayList")])]))
    }

    /// A class without a special shape: shown with its fields, including those of its superclass.
    @Test func genericObjects() throws {
        let decimal = try Self.one(JDKVectors.bigDecimal)
        guard case .object(let object) = decimal else {
            Issue.record("BigDecimal is \(decimal)")
            return
        }
        #expect(object.className == "java.math.BigDecimal")
        #expect(object[field: "scale"] == .primitive(.int(2)))
        guard case .object(let unscaled)? = object[field: "intVal"] else {
            Issue.record("no intVal")
            return
        }
        #expect(unscaled.className == "java.math.BigInteger")
        #expect(unscaled[field: "signum"] == .primitive(.int(1)))
        #expect(unscaled[field: "magnitude"] == .byteArray([0x04, 0xE2]))  // 1250
        #expect(decimal.renderedText().hasPrefix("BigDecimal{scale=2, intVal=BigInteger{"))
    }

    // MARK: msm's NotSerializableException

    /// What msm writes when an attribute fails half-way: the partial object,
    /// `TC_EXCEPTION` with the exception, then its marker string; the attributes
    /// after it are still readable.
    @Test func attributeThatFailedToSerialize() throws {
        let value = SessionValueBuilder(attributes: JDKVectors.msmAttributesWithNotSerializable).bytes
        let session = try #require(MsmValue.decode(key: "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1", value: value).session)
        #expect(session.attributes.map(\.name) == ["ok", "cart", "after"])
        #expect(session.attributes[0].value == .readable(.string("fine")))
        guard case .unreadable(let reason) = session.attributes[1].value else {
            Issue.record("cart is \(session.attributes[1].value)")
            return
        }
        #expect(reason == "serializing it failed with java.io.NotSerializableException: java.lang.Object")
        #expect(session.attributes[1].javaType == "unreadable")
        #expect(session.attributes[1].renderedValue().hasPrefix("<unreadable: "))
        #expect(session.attributes[2].value == .readable(.boxed(.int(5))))
        #expect(session.warnings == [])

        // On its own the stream stops at the exception, as ObjectInputStream does.
        Self.expectError(JDKVectors.msmAttributesWithNotSerializable) {
            if case .writeAborted(_, let exception) = $0 { return exception.hasPrefix("java.io.NotSerializableException") }
            return false
        }
    }

    /// msm's marker alone (no TC_EXCEPTION before it) also marks an unreadable attribute.
    @Test func notSerializableMarkerAlone() throws {
        let block = SessionValueBuilder.attributesBlock(count: 1) { stream in
            stream.string("cart").string("___NOT_SERIALIZABLE_EXCEPTION___")
        }
        let session = try #require(MsmValue.decode(key: nil, value: SessionValueBuilder(attributes: block).bytes).session)
        #expect(session.attributes == [MsmAttribute(name: "cart", value: .unreadable(reason: "msm could not serialize it"))])
    }

    // MARK: Hand-built streams

    @Test func longStringAndLongBlockData() throws {
        let text = String(repeating: "abcdefghij", count: 7_000)
        let stream = StreamBuilder()
        stream.code(.longString).u64(UInt64(text.utf8.count)).raw(Array(text.utf8))
        // An unknown class with writeObject data: a long block, a short one (joined), an object.
        stream.code(.object).classDescriptor("com.example.Blob", flags: StreamBuilder.serializable | StreamBuilder.writeMethod, fields: [("I", "n", nil)])
        stream.u32(9)
        stream.code(.blockDataLong).u32(300).raw([UInt8](repeating: 0xAB, count: 300))
        stream.code(.blockData).u8(2).raw([0x01, 0x02])
        stream.string("tail").code(.endBlockData)
        let objects = try JavaObjectStream.readObjects(from: stream.bytes)
        #expect(objects.count == 2)
        #expect(objects.first == .string(text))
        let blob = JavaObject(
            className: "com.example.Blob",
            fields: [JavaField(declaringClass: "com.example.Blob", name: "n", value: .primitive(.int(9)))],
            customData: [
                JavaCustomData(
                    className: "com.example.Blob",
                    contents: [.bytes([UInt8](repeating: 0xAB, count: 300) + [0x01, 0x02]), .object(.string("tail"))]
                )
            ]
        )
        #expect(objects.last == .object(blob))
        let rendered = objects[1].renderedText()
        #expect(rendered.hasPrefix("Blob{n=9, writeObject(Blob)=[0xABAB"))
        #expect(rendered.hasSuffix("… (302 bytes), \"tail\"]}"))
        #expect(objects[0].renderedText().hasSuffix("\"… (68000 more characters)"))
    }

    @Test func externalizableAndProxyClasses() throws {
        let stream = StreamBuilder()
        stream.code(.object).classDescriptor("com.example.Ext", flags: StreamBuilder.externalizable | StreamBuilder.blockDataMode)
        stream.code(.blockData).u8(4).u32(7).code(.endBlockData)
        stream.code(.object).code(.proxyClassDescriptor).u32(1).utf("com.example.Api").code(.endBlockData)
        stream.classDescriptor("java.lang.reflect.Proxy", fields: [("L", "h", "Ljava/lang/reflect/InvocationHandler;")])
        stream.code(.null)
        let objects = try JavaObjectStream.readObjects(from: stream.bytes)
        #expect(objects.first == .object(JavaObject(className: "com.example.Ext", fields: [], customData: [JavaCustomData(className: "com.example.Ext", contents: [.bytes([0, 0, 0, 7])])])))
        #expect(objects.last == .object(JavaObject(className: "Proxy[com.example.Api]", fields: [JavaField(declaringClass: "java.lang.reflect.Proxy", name: "h", value: .null)], customData: [])))

        // Externalizable data of protocol version 1 has no length: it cannot be skipped.
        let old = StreamBuilder()
        old.code(.object).classDescriptor("com.example.Old", flags: StreamBuilder.externalizable).u32(1)
        Self.expectError(old.bytes) { if case .unsupported = $0 { return true }; return false }
    }

    @Test func resetsClearTheHandleTable() throws {
        let stream = StreamBuilder()
        stream.string("a").reference(0)
        #expect(try JavaObjectStream.readObjects(from: stream.bytes) == [.string("a"), .string("a")])
        let reset = StreamBuilder()
        reset.string("a").code(.reset).reference(0)
        Self.expectError(reset.bytes) { if case .malformed(_, let detail) = $0 { return detail.contains("does not exist") }; return false }
        // A reset is only allowed between top-level objects.
        let nested = StreamBuilder()
        nested.code(.array).classDescriptor("[Ljava.lang.Object;").u32(1).code(.reset)
        Self.expectError(nested.bytes) { if case .malformed = $0 { return true }; return false }
    }

    @Test func malformedStreams() {
        func malformed(_ error: SessionInspectionError) -> Bool {
            if case .malformed = error { return true }
            return false
        }
        func truncated(_ error: SessionInspectionError) -> Bool {
            if case .truncated = error { return true }
            return false
        }
        Self.expectError([0xAC, 0xEE, 0x00, 0x05, 0x70], malformed, "magic")
        Self.expectError([0xAC, 0xED, 0x00, 0x04, 0x70], malformed, "version")
        Self.expectError([0xAC, 0xED, 0x00], truncated, "short header")
        Self.expectError(StreamBuilder().u8(0x42).bytes, malformed, "unknown type code")
        Self.expectError(StreamBuilder().reference(5).bytes, malformed, "dangling reference")
        Self.expectError(StreamBuilder().code(.blockData).u8(1).u8(0).bytes, malformed, "block data for an object")
        Self.expectError(StreamBuilder().code(.endBlockData).bytes, malformed, "stray end of block data")
        Self.expectError(StreamBuilder().code(.object).code(.null).bytes, malformed, "object without a class")
        Self.expectError(StreamBuilder().code(.string).u16(3).raw([0x61, 0xFF, 0x62]).bytes, malformed, "bad modified UTF-8")
        Self.expectError(StreamBuilder().code(.string).u16(2).raw([0xE2, 0x9C]).bytes, malformed, "cut 3-byte character")
        Self.expectError(StreamBuilder().code(.string).u16(10).raw([0x61]).bytes, truncated, "string past the end")
        Self.expectError(StreamBuilder().code(.longString).u64(.max).bytes, truncated, "huge long string")
        Self.expectError(StreamBuilder().code(.array).classDescriptor("[I").u32(0xFFFF_FFFF).bytes, malformed, "negative array length")
        Self.expectError(StreamBuilder().code(.array).classDescriptor("[J").u32(0x7FFF_FFFF).bytes, truncated, "huge array")
        Self.expectError(StreamBuilder().code(.array).classDescriptor("[Ljava.lang.Object;").u32(0x7FFF_FFFF).bytes, truncated, "huge object array")
        Self.expectError(StreamBuilder().code(.array).classDescriptor("java.lang.String").u32(0).bytes, malformed, "array of a non-array class")
        Self.expectError(StreamBuilder().code(.array).classDescriptor("[Q").u32(0).bytes, malformed, "unknown element type")
        Self.expectError(StreamBuilder().code(.object).classDescriptor("X", fields: [("Q", "q", nil)]).bytes, malformed, "unknown field type")
        Self.expectError(
            StreamBuilder().code(.object).code(.classDescriptor).utf("X").u64(1).u8(2).u16(0x8000).bytes, malformed, "negative field count"
        )
        Self.expectError(
            StreamBuilder().code(.object).code(.classDescriptor).utf("X").u64(1).u8(2).u16(0x7FFF).bytes, truncated, "field count past the end"
        )
        // A field's type signature must be a string.
        Self.expectError(StreamBuilder().code(.object).code(.classDescriptor).utf("X").u64(1).u8(2).u16(1).u8(0x4C).utf("f").code(.null).bytes, malformed)
        // A class descriptor whose superclass is itself.
        let selfSuper = StreamBuilder()
        selfSuper.code(.object).classDescriptor("X") { $0.reference(0) }
        Self.expectError(selfSuper.bytes) { if case .malformed(_, let detail) = $0 { return detail.contains("before it is complete") }; return false }
        // An enum constant whose name is not a string.
        Self.expectError(StreamBuilder().code(.enumConstant).classDescriptor("E").code(.null).bytes, malformed)
        Self.expectError(StreamBuilder().code(.object).classDescriptor("X", fields: [("I", "i", nil)]).u8(0).bytes, truncated, "field past the end")
    }

    @Test func surrogatesAndUnpairedSurrogates() throws {
        let stream = StreamBuilder()
        stream.code(.string).u16(6).raw([0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80])  // U+1F600 as two surrogates
        stream.code(.string).u16(3).raw([0xED, 0xA0, 0xBD])  // a high surrogate alone
        #expect(try JavaObjectStream.readObjects(from: stream.bytes) == [.string("\u{1F600}"), .string("\u{FFFD}")])
    }

    // MARK: Limits

    @Test func nestingDepthIsLimited() {
        let depth = JavaObjectStream.Limits.maximumDepth + 10
        let stream = StreamBuilder()
        stream.code(.array).classDescriptor("[Ljava.lang.Object;").u32(1)
        for _ in 1..<depth {
            stream.code(.array).reference(0).u32(1)
        }
        stream.code(.null)
        Self.expectError(stream.bytes) { if case .limitExceeded = $0 { return true }; return false }
    }

    @Test func nestingWithinTheLimitDecodes() throws {
        // Each array is one level, its class descriptor reference another while it is read.
        let depth = JavaObjectStream.Limits.maximumDepth - 1
        let stream = StreamBuilder()
        stream.code(.array).classDescriptor("[Ljava.lang.Object;").u32(1)
        for _ in 1..<depth {
            stream.code(.array).reference(0).u32(1)
        }
        stream.code(.null)
        var value = try Self.one(stream.bytes)
        var levels = 0
        while case .array(_, let elements) = value, let first = elements.first {
            levels += 1
            value = first
        }
        #expect(levels == depth)
        #expect(value == .null)
    }

    /// Back-references can stack values deeper than the stream nests: each array
    /// here nests one level in the stream but holds the previous one.
    @Test func depthThroughBackReferencesIsLimited() {
        let stream = StreamBuilder()
        // handle 0: the descriptor; handle 1: the first array.
        stream.code(.array).classDescriptor("[Ljava.lang.Object;").u32(1).code(.null)
        for index in 0..<(JavaObjectStream.Limits.maximumDepth + 5) {
            stream.code(.array).reference(0).u32(1).reference(1 + index)
        }
        Self.expectError(stream.bytes) {
            if case .limitExceeded(_, let detail) = $0 { return detail.contains("back-references") }
            return false
        }
    }

    /// Sharing can make a small stream expand exponentially; renderings stay bounded.
    @Test func renderingsOfSharedValuesAreBounded() throws {
        let stream = StreamBuilder()
        // Array k holds array k-1 twice: 2^40 leaves when expanded.
        stream.code(.array).classDescriptor("[Ljava.lang.Object;").u32(2).string("leaf").reference(2)
        for index in 0..<40 {
            let previous = index == 0 ? 1 : 3 + index - 1
            stream.code(.array).reference(0).u32(2).reference(previous).reference(previous)
        }
        let objects = try JavaObjectStream.readObjects(from: stream.bytes)
        let last = try #require(objects.last)
        let text = last.renderedText()
        #expect(text.contains("…"))
        #expect(text.utf8.count < 200_000)
        let json = last.json(limits: JavaRenderingLimits(maximumValues: 10_000, maximumStringLength: 100, maximumBytes: 100)).jsonText
        #expect(json.contains("…"))
        #expect(json.utf8.count < 200_000)
    }
}
