/// How much of a value a rendering shows. A value can share sub-values through
/// back-references, so its expanded size can be far larger than its stream; every
/// rendering stops after `maximumValues` values and marks what it left out.
public struct JavaRenderingLimits: Sendable, Hashable {
    /// Values rendered in all, nested ones included.
    public var maximumValues: Int
    /// Characters of one string.
    public var maximumStringLength: Int
    /// Bytes of one `byte[]` or block of custom data.
    public var maximumBytes: Int

    public init(maximumValues: Int, maximumStringLength: Int, maximumBytes: Int) {
        self.maximumValues = maximumValues
        self.maximumStringLength = maximumStringLength
        self.maximumBytes = maximumBytes
    }

    /// For a person reading a terminal: one attribute stays a few screens at most.
    public static let text = JavaRenderingLimits(maximumValues: 2_000, maximumStringLength: 2_000, maximumBytes: 256)
    /// For programs: strings and bytes whole, only the expansion of shared values bounded.
    public static let json = JavaRenderingLimits(maximumValues: 100_000, maximumStringLength: .max, maximumBytes: .max)
}

extension JavaValue {
    /// Java-like text: `"text"`, `42`, `12L`, `[a, b]` for lists, `{k=v}` for maps,
    /// `{0x00, 0x7F}` and `{"a", "b"}` for arrays, `User{id=7, name="alice"}` for
    /// other objects, `Date(<ms> ms = <ISO-8601>)` for dates. Strings are quoted and
    /// control characters escaped, so the text is safe to print.
    public func renderedText(limits: JavaRenderingLimits = .text) -> String {
        var renderer = JavaTextRenderer(limits: limits)
        renderer.write(self)
        return renderer.output
    }

    /// The value as JSON: strings, numbers and booleans as themselves; arrays, lists
    /// and sets as arrays; maps as arrays of `{"key", "value"}` (Java keys need not be
    /// strings); dates as `{"epochMillis", "iso"}`; `byte[]` as `{"byteArray": hex}`;
    /// enum constants as `{"enum", "constant"}`; other objects as
    /// `{"class", "fields", "writeObjectData"?}`; a cycle as `{"backReference": class}`.
    /// What the limits leave out is the string `"…"`.
    public func json(limits: JavaRenderingLimits = .json) -> JSONValue {
        var converter = JavaJSONConverter(remaining: limits.maximumValues, limits: limits)
        return converter.convert(self)
    }

    /// `User` for `e2e.User`, `GenericPrincipal$SerializablePrincipal` for the nested class.
    static func simpleName(_ className: String) -> String {
        guard let dot = className.lastIndex(of: ".") else { return className }
        return String(className[className.index(after: dot)...])
    }
}

extension JavaPrimitive {
    /// Java source-like text: `42`, `12L`, `3.25`, `'c'`, `true`.
    public var renderedText: String {
        switch self {
        case .byte(let value): return String(value)
        case .char(let unit): return DisplayText.quoted(char: unit)
        case .double(let value): return Self.javaText(value)
        case .float(let value): return Self.javaText(Double(value))
        case .int(let value): return String(value)
        case .long(let value): return String(value) + "L"
        case .short(let value): return String(value)
        case .boolean(let value): return value ? "true" : "false"
        }
    }

    var json: JSONValue {
        switch self {
        case .byte(let value): return .integer(Int64(value))
        case .char(let unit): return .string(String(decoding: [unit], as: UTF16.self))
        case .double(let value): return value.isFinite ? .double(value) : .string(Self.javaText(value))
        case .float(let value): return value.isFinite ? .double(Double(value)) : .string(Self.javaText(Double(value)))
        case .int(let value): return .integer(Int64(value))
        case .long(let value): return .integer(value)
        case .short(let value): return .integer(Int64(value))
        case .boolean(let value): return .bool(value)
        }
    }

    private static func javaText(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value < 0 ? "-Infinity" : "Infinity" }
        return String(value)
    }
}

/// Writes `JavaValue.renderedText`; values are bounded in depth by the reader, and
/// in number by `remaining`.
struct JavaTextRenderer {
    let limits: JavaRenderingLimits
    var remaining: Int
    var output = ""

    init(limits: JavaRenderingLimits) {
        self.limits = limits
        self.remaining = limits.maximumValues
    }

    mutating func write(_ value: JavaValue) {
        guard remaining > 0 else {
            output += "…"
            return
        }
        remaining -= 1
        switch value {
        case .null:
            output += "null"
        case .primitive(let primitive), .boxed(let primitive):
            output += primitive.renderedText
        case .string(let text):
            output += DisplayText.quoted(text, limit: limits.maximumStringLength)
        case .date(let millis):
            output += "Date(\(millis) ms = \(Timestamp.iso8601(epochMillis: millis)))"
        case .byteArray(let bytes):
            writeBytes(bytes, open: "{", close: "}")
        case .array(_, let elements):
            writeSequence(elements, open: "{", close: "}")
        case .collection(_, let elements):
            writeSequence(elements, open: "[", close: "]")
        case .map(_, let entries):
            output += "{"
            for (index, entry) in entries.enumerated() {
                if index > 0 { output += ", " }
                guard remaining > 0 else {
                    output += "… (\(entries.count - index) more)"
                    break
                }
                write(entry.key)
                output += "="
                write(entry.value)
            }
            output += "}"
        case .enumConstant(let className, let name):
            output += DisplayText.escaped(JavaValue.simpleName(className) + "." + name)
        case .javaClass(let name):
            output += "class " + DisplayText.escaped(name)
        case .object(let object):
            writeObject(object)
        case .backReference(let className):
            output += "<cycle: " + DisplayText.escaped(className) + ">"
        }
    }

    private mutating func writeSequence(_ elements: [JavaValue], open: String, close: String) {
        output += open
        for (index, element) in elements.enumerated() {
            if index > 0 { output += ", " }
            guard remaining > 0 else {
                output += "… (\(elements.count - index) more)"
                break
            }
            write(element)
        }
        output += close
    }

    /// `{0x00, 0x7F, 0x80}`: Java bytes are signed, hex shows the bits unambiguously.
    private mutating func writeBytes(_ bytes: [UInt8], open: String, close: String) {
        output += open
        for (index, byte) in bytes.enumerated() {
            if index > 0 { output += ", " }
            guard index < limits.maximumBytes else {
                output += "… (\(bytes.count) bytes)"
                break
            }
            output += "0x" + hex(byte).uppercased()
        }
        output += close
    }

    private mutating func writeObject(_ object: JavaObject) {
        output += DisplayText.escaped(JavaValue.simpleName(object.className)) + "{"
        var first = true
        for (index, field) in object.fields.enumerated() {
            if !first { output += ", " }
            first = false
            guard remaining > 0 else {
                output += "… (\(object.fields.count - index) more)}"
                return
            }
            output += DisplayText.escaped(field.name) + "="
            write(field.value)
        }
        for data in object.customData {
            if !first { output += ", " }
            first = false
            output += "writeObject(" + DisplayText.escaped(JavaValue.simpleName(data.className)) + ")=["
            for (index, content) in data.contents.enumerated() {
                if index > 0 { output += ", " }
                guard remaining > 0 else {
                    output += "… (\(data.contents.count - index) more)]}"
                    return
                }
                switch content {
                case .bytes(let bytes):
                    let shown = bytes.prefix(limits.maximumBytes)
                    output += "0x" + hex(shown).uppercased() + (shown.count < bytes.count ? "… (\(bytes.count) bytes)" : "")
                case .object(let value):
                    write(value)
                }
            }
            output += "]"
        }
        output += "}"
    }
}

/// Builds `JavaValue.json`; bounded like `JavaTextRenderer`.
struct JavaJSONConverter {
    static let omitted = JSONValue.string("…")

    var remaining: Int
    let limits: JavaRenderingLimits

    mutating func convert(_ value: JavaValue) -> JSONValue {
        guard remaining > 0 else { return Self.omitted }
        remaining -= 1
        switch value {
        case .null:
            return .null
        case .primitive(let primitive), .boxed(let primitive):
            return primitive.json
        case .string(let text):
            return .string(text.count > limits.maximumStringLength ? String(text.prefix(limits.maximumStringLength)) + "…" : text)
        case .date(let millis):
            return .object(["epochMillis": .integer(millis), "iso": .string(Timestamp.iso8601(epochMillis: millis))])
        case .byteArray(let bytes):
            return .object(["byteArray": .string(hexText(bytes))])
        case .array(_, let elements), .collection(_, let elements):
            return .array(elements.map { convert($0) })
        case .map(_, let entries):
            return .array(entries.map { entry in .object(["key": convert(entry.key), "value": convert(entry.value)]) })
        case .enumConstant(let className, let name):
            return .object(["enum": .string(className), "constant": .string(name)])
        case .javaClass(let name):
            return .object(["javaClass": .string(name)])
        case .object(let object):
            return convert(object)
        case .backReference(let className):
            return .object(["backReference": .string(className)])
        }
    }

    private mutating func convert(_ object: JavaObject) -> JSONValue {
        var fields: [String: JSONValue] = [:]
        var nameCounts: [String: Int] = [:]
        for field in object.fields {
            nameCounts[field.name, default: 0] += 1
        }
        for field in object.fields {
            // Fields of different classes in the hierarchy may share a name.
            let ambiguous = nameCounts[field.name, default: 0] > 1
            let key = ambiguous ? JavaValue.simpleName(field.declaringClass) + "." + field.name : field.name
            fields[key] = convert(field.value)
        }
        var members: [String: JSONValue] = ["class": .string(object.className), "fields": .object(fields)]
        if !object.customData.isEmpty {
            members["writeObjectData"] = .array(
                object.customData.map { data in
                    .object([
                        "class": .string(data.className),
                        "contents": .array(
                            data.contents.map { content in
                                switch content {
                                case .bytes(let bytes): return .object(["blockData": .string(hexText(bytes))])
                                case .object(let value): return convert(value)
                                }
                            }
                        ),
                    ])
                }
            )
        }
        return .object(members)
    }

    private func hexText(_ bytes: [UInt8]) -> String {
        bytes.count > limits.maximumBytes ? hex(bytes.prefix(limits.maximumBytes)) + "…" : hex(bytes)
    }
}
