/// Reads Java Object Serialization streams (the format of `ObjectOutputStream`,
/// protocol version 2, stream version 5) without the Java classes they name.
///
/// It reads what Tomcat and msm write: objects with their class descriptors and
/// superclass chains, strings (modified UTF-8, short and long), arrays, enum
/// constants, classes, back-references through the handle table, the extra data of
/// classes with their own `writeObject`, and `TC_RESET`/`TC_EXCEPTION`.
/// Every length is checked against the bytes left before anything is read or
/// allocated, and `Limits` bounds nesting and the handle table, so any input either
/// decodes or throws `SessionInspectionError`.
public enum JavaObjectStream {
    /// Bounds that keep the reader's stack and memory in proportion to its input.
    public enum Limits {
        /// How deep objects may nest while being read, and how deep a value may be
        /// once back-references are replaced by the values they refer to. Bounds the
        /// reader's recursion and that of anything that walks a `JavaValue`.
        public static let maximumDepth = 64
        /// Handles (objects, strings, classes, descriptors) one stream may create
        /// between resets.
        public static let maximumHandles = 1 << 20
        /// Interfaces of a proxy class descriptor: the JVM's own limit on a class.
        public static let maximumProxyInterfaces = 65_535
    }

    /// Reads a whole stream: its header, then objects until the bytes end.
    public static func readObjects(from bytes: [UInt8]) throws(SessionInspectionError) -> [JavaValue] {
        var reader = JavaStreamReader(bytes, range: 0..<bytes.count)
        try reader.readStreamHeader()
        var objects: [JavaValue] = []
        while !reader.isAtEnd {
            objects.append(try reader.readTopLevelObject())
        }
        return objects
    }
}

/// The stream grammar of the Java Object Serialization Specification, chapter 6.4.
/// One reader is one stream: one handle table, shared by all its top-level objects.
struct JavaStreamReader {
    typealias Limits = JavaObjectStream.Limits

    static let magic: UInt16 = 0xACED
    static let streamVersion: UInt16 = 5
    /// The handle of the first object; later ones count up from it.
    static let baseHandle = 0x7E_0000

    /// The type codes (`TC_*`) that start every element of a stream.
    enum TypeCode: UInt8 {
        case null = 0x70
        case reference = 0x71
        case classDescriptor = 0x72
        case object = 0x73
        case string = 0x74
        case array = 0x75
        case `class` = 0x76
        case blockData = 0x77
        case endBlockData = 0x78
        case reset = 0x79
        case blockDataLong = 0x7A
        case exception = 0x7B
        case longString = 0x7C
        case proxyClassDescriptor = 0x7D
        case enumConstant = 0x7E
    }

    /// `SC_*` flags of a class descriptor.
    struct ClassFlags: OptionSet {
        let rawValue: UInt8
        /// The class has a `writeObject` method, so its fields are followed by custom data.
        static let writeMethod = ClassFlags(rawValue: 0x01)
        static let serializable = ClassFlags(rawValue: 0x02)
        static let externalizable = ClassFlags(rawValue: 0x04)
        /// Externalizable data is in block-data mode (protocol version 2).
        static let blockData = ClassFlags(rawValue: 0x08)
        static let isEnum = ClassFlags(rawValue: 0x10)
    }

    struct FieldDescriptor {
        enum FieldType {
            case primitive(JavaPrimitive.Kind)
            /// An object or array; its value is a nested object in the stream.
            case reference
        }

        var name: String
        var type: FieldType
    }

    /// One class of a descriptor's superclass chain.
    struct ClassLayer {
        var name: String
        var flags: ClassFlags
        var fields: [FieldDescriptor]
    }

    struct ClassDescriptor {
        var name: String
        /// From the top-most serializable superclass down to this class (its last layer).
        var hierarchy: [ClassLayer]

        var flags: ClassFlags { hierarchy.last?.flags ?? [] }
    }

    enum HandleEntry {
        case classDescriptor(ClassDescriptor)
        /// A descriptor whose fields, annotation or superclass are still being read.
        case classDescriptorInProgress(name: String)
        case value(Node)
        /// An object, array or enum constant still being read: a reference to it is a cycle.
        case valueInProgress(className: String)
    }

    /// A value and how deep it nests (a leaf is 1), so that a value built from
    /// back-references can be refused before it grows past `Limits.maximumDepth`.
    struct Node {
        var value: JavaValue
        var height: Int

        init(_ value: JavaValue, height: Int = 1) {
            self.value = value
            self.height = height
        }
    }

    private var cursor: ByteCursor
    private var handles: [HandleEntry] = []
    private var depth = 0

    init(_ bytes: [UInt8], range: Range<Int>) {
        cursor = ByteCursor(bytes, range: range)
    }

    var offset: Int { cursor.offset }
    var isAtEnd: Bool { cursor.isAtEnd }
    var remaining: Int { cursor.remaining }

    mutating func readStreamHeader() throws(SessionInspectionError) {
        let start = cursor.offset
        let magic = try cursor.readInteger(UInt16.self)
        guard magic == Self.magic else {
            throw .malformed(offset: start, detail: "no Java serialization stream here (magic 0x\(String(magic, radix: 16)), expected 0xaced)")
        }
        let version = try cursor.readInteger(UInt16.self)
        guard version == Self.streamVersion else {
            throw .malformed(offset: start + 2, detail: "Java serialization stream version \(version), expected \(Self.streamVersion)")
        }
    }

    /// Reads the next object at the top of the stream, after any resets.
    mutating func readTopLevelObject() throws(SessionInspectionError) -> JavaValue {
        while cursor.peekByte() == TypeCode.reset.rawValue {
            try cursor.skip(1)
            handles.removeAll(keepingCapacity: true)
        }
        return try readObject().value
    }

    // MARK: Objects

    /// Reads one `object` of the grammar (anything that may stand where an object is expected).
    private mutating func readObject() throws(SessionInspectionError) -> Node {
        try enterNesting()
        defer { depth -= 1 }
        let start = cursor.offset
        let byte = try cursor.readByte()
        guard let code = TypeCode(rawValue: byte) else {
            throw .malformed(offset: start, detail: "unknown type code 0x\(hex(byte)) where an object was expected")
        }
        switch code {
        case .null:
            return Node(.null)
        case .reference:
            let index = try readHandleIndex(at: start)
            switch handles[index] {
            case .value(let node):
                return node
            case .valueInProgress(let className):
                return Node(.backReference(className: className))
            case .classDescriptor(let descriptor):
                return Node(.javaClass(name: descriptor.name))
            case .classDescriptorInProgress(let name):
                return Node(.javaClass(name: name))
            }
        case .object:
            return try readNewObject(at: start)
        case .string:
            return try readNewString(long: false)
        case .longString:
            return try readNewString(long: true)
        case .array:
            return try readNewArray(at: start)
        case .class:
            let descriptor = try readRequiredClassDescriptor(for: "a class")
            let node = Node(.javaClass(name: descriptor.name))
            _ = try newHandle(.value(node), at: start)
            return node
        case .enumConstant:
            return try readNewEnumConstant(at: start)
        case .classDescriptor:
            return Node(.javaClass(name: try readNewClassDescriptor(at: start).name))
        case .proxyClassDescriptor:
            return Node(.javaClass(name: try readNewProxyClassDescriptor(at: start).name))
        case .exception:
            // The writer cleared its handle table, wrote the exception and cleared it
            // again (ObjectOutputStream.writeFatalException); mirror both so that a
            // caller that carries on after the abort sees the writer's handles.
            handles.removeAll(keepingCapacity: true)
            let exception = try readObject()
            handles.removeAll(keepingCapacity: true)
            throw .writeAborted(offset: start, exception: Self.describeException(exception.value))
        case .reset:
            throw .malformed(offset: start, detail: "TC_RESET inside an object")
        case .blockData, .blockDataLong:
            throw .malformed(offset: start, detail: "primitive data where an object was expected")
        case .endBlockData:
            throw .malformed(offset: start, detail: "end of block data where an object was expected")
        }
    }

    private mutating func readNewObject(at start: Int) throws(SessionInspectionError) -> Node {
        let descriptor = try readRequiredClassDescriptor(for: "an object")
        let handle = try newHandle(.valueInProgress(className: descriptor.name), at: start)
        var layers: [KnownClasses.ClassData] = []
        var childHeight = 0
        if descriptor.flags.contains(.externalizable) {
            // writeExternal's data comes once, for the object's own class.
            guard descriptor.flags.contains(.blockData) else {
                throw .unsupported(
                    offset: cursor.offset,
                    detail: "externalizable \(descriptor.name) written with stream protocol version 1"
                )
            }
            let contents = try readBlockContents(height: &childHeight)
            layers.append(.init(className: descriptor.name, fields: [], customData: contents))
        } else {
            for layer in descriptor.hierarchy where layer.flags.contains(.serializable) {
                var fields: [JavaField] = []
                fields.reserveCapacity(layer.fields.count)
                for field in layer.fields {
                    let node = try readFieldValue(field)
                    childHeight = max(childHeight, node.height)
                    fields.append(JavaField(declaringClass: layer.name, name: field.name, value: node.value))
                }
                let customData = layer.flags.contains(.writeMethod) ? try readBlockContents(height: &childHeight) : nil
                layers.append(.init(className: layer.name, fields: fields, customData: customData))
            }
        }
        let node = Node(KnownClasses.value(className: descriptor.name, layers: layers), height: childHeight + 1)
        try checkHeight(node, at: start)
        setHandle(handle, .value(node))
        return node
    }

    private mutating func readFieldValue(_ field: FieldDescriptor) throws(SessionInspectionError) -> Node {
        switch field.type {
        case .primitive(let kind):
            return Node(.primitive(try readPrimitive(kind)))
        case .reference:
            return try readObject()
        }
    }

    private mutating func readPrimitive(_ kind: JavaPrimitive.Kind) throws(SessionInspectionError) -> JavaPrimitive {
        switch kind {
        case .byte: return .byte(try cursor.readInteger(Int8.self))
        case .char: return .char(try cursor.readInteger(UInt16.self))
        case .double: return .double(Double(bitPattern: try cursor.readInteger(UInt64.self)))
        case .float: return .float(Float(bitPattern: try cursor.readInteger(UInt32.self)))
        case .int: return .int(try cursor.readInteger(Int32.self))
        case .long: return .long(try cursor.readInteger(Int64.self))
        case .short: return .short(try cursor.readInteger(Int16.self))
        case .boolean: return .boolean(try cursor.readByte() != 0)
        }
    }

    private mutating func readNewString(long: Bool) throws(SessionInspectionError) -> Node {
        let lengthOffset = cursor.offset
        let length: Int
        if long {
            let announced = try cursor.readInteger(UInt64.self)
            guard announced <= UInt64(cursor.remaining) else {
                throw .truncated(offset: cursor.offset, needed: Int(clamping: announced) - cursor.remaining)
            }
            length = Int(announced)
        } else {
            length = Int(try cursor.readInteger(UInt16.self))
        }
        let textOffset = cursor.offset
        let text = try ModifiedUTF8.decode(try cursor.readBytes(length), offset: textOffset)
        let node = Node(.string(text))
        _ = try newHandle(.value(node), at: lengthOffset - 1)
        return node
    }

    private mutating func readNewArray(at start: Int) throws(SessionInspectionError) -> Node {
        let descriptor = try readRequiredClassDescriptor(for: "an array")
        let handle = try newHandle(.valueInProgress(className: descriptor.name), at: start)
        let lengthOffset = cursor.offset
        let length = Int(try cursor.readInteger(Int32.self))
        guard length >= 0 else {
            throw .malformed(offset: lengthOffset, detail: "negative array length \(length)")
        }
        let name = Array(descriptor.name.utf8)
        guard name.count >= 2, name[0] == UInt8(ascii: "[") else {
            throw .malformed(offset: start, detail: "array of class \(descriptor.name), which is not an array class")
        }
        let node: Node
        if name.count == 2, let kind = JavaPrimitive.Kind(typeCode: name[1]) {
            let (byteCount, overflow) = length.multipliedReportingOverflow(by: kind.size)
            guard !overflow else { throw .truncated(offset: cursor.offset, needed: .max) }
            try cursor.require(byteCount)
            if kind == .byte {
                node = Node(.byteArray(Array(try cursor.readBytes(length))))
            } else {
                var elements: [JavaValue] = []
                elements.reserveCapacity(length)
                for _ in 0..<length {
                    elements.append(.primitive(try readPrimitive(kind)))
                }
                node = Node(.array(className: descriptor.name, elements: elements), height: 2)
            }
        } else if name[1] == UInt8(ascii: "L") || name[1] == UInt8(ascii: "[") {
            // Every element takes at least one byte (TC_NULL), which bounds the length.
            try cursor.require(length)
            var elements: [JavaValue] = []
            elements.reserveCapacity(length)
            var childHeight = 0
            for _ in 0..<length {
                let element = try readObject()
                childHeight = max(childHeight, element.height)
                elements.append(element.value)
            }
            node = Node(.array(className: descriptor.name, elements: elements), height: childHeight + 1)
            try checkHeight(node, at: start)
        } else {
            throw .malformed(offset: start, detail: "array class name \(descriptor.name) has no valid element type")
        }
        setHandle(handle, .value(node))
        return node
    }

    private mutating func readNewEnumConstant(at start: Int) throws(SessionInspectionError) -> Node {
        let descriptor = try readRequiredClassDescriptor(for: "an enum constant")
        let handle = try newHandle(.valueInProgress(className: descriptor.name), at: start)
        let nameOffset = cursor.offset
        guard case .string(let name) = try readObject().value else {
            throw .malformed(offset: nameOffset, detail: "the name of an enum constant of \(descriptor.name) is not a string")
        }
        let node = Node(.enumConstant(className: descriptor.name, name: name))
        setHandle(handle, .value(node))
        return node
    }

    /// Reads custom data up to its `TC_ENDBLOCKDATA`: primitive blocks and objects.
    /// Raises `height` to the tallest object read.
    private mutating func readBlockContents(height: inout Int) throws(SessionInspectionError) -> [JavaBlockContent] {
        var contents: [JavaBlockContent] = []
        while true {
            let start = cursor.offset
            guard let byte = cursor.peekByte() else {
                throw .truncated(offset: start, needed: 1)
            }
            switch TypeCode(rawValue: byte) {
            case .endBlockData?:
                try cursor.skip(1)
                return contents
            case .blockData?:
                try cursor.skip(1)
                let length = Int(try cursor.readByte())
                Self.appendBlock(try cursor.readBytes(length), to: &contents)
            case .blockDataLong?:
                try cursor.skip(1)
                let length = Int(try cursor.readInteger(Int32.self))
                guard length >= 0 else {
                    throw .malformed(offset: start + 1, detail: "negative block data length \(length)")
                }
                Self.appendBlock(try cursor.readBytes(length), to: &contents)
            default:
                let node = try readObject()
                height = max(height, node.height)
                contents.append(.object(node.value))
            }
        }
    }

    /// Joins consecutive blocks: the writer splits one run of primitive data into
    /// blocks of at most 1024 bytes, so block boundaries mean nothing.
    private static func appendBlock(_ block: ArraySlice<UInt8>, to contents: inout [JavaBlockContent]) {
        if case .bytes(var previous)? = contents.last {
            contents.removeLast()
            previous.append(contentsOf: block)
            contents.append(.bytes(previous))
        } else {
            contents.append(.bytes(Array(block)))
        }
    }

    // MARK: Class descriptors

    /// Reads a `classDesc`: a new descriptor, a reference to one, or null.
    private mutating func readClassDescriptor() throws(SessionInspectionError) -> ClassDescriptor? {
        try enterNesting()
        defer { depth -= 1 }
        let start = cursor.offset
        let byte = try cursor.readByte()
        switch TypeCode(rawValue: byte) {
        case .null?:
            return nil
        case .reference?:
            let index = try readHandleIndex(at: start)
            switch handles[index] {
            case .classDescriptor(let descriptor):
                return descriptor
            case .classDescriptorInProgress(let name):
                throw .malformed(offset: start, detail: "class descriptor \(name) is used before it is complete")
            case .value, .valueInProgress:
                throw .malformed(offset: start, detail: "handle 0x\(String(Self.baseHandle + index, radix: 16)) is not a class descriptor")
            }
        case .classDescriptor?:
            return try readNewClassDescriptor(at: start)
        case .proxyClassDescriptor?:
            return try readNewProxyClassDescriptor(at: start)
        default:
            throw .malformed(offset: start, detail: "type code 0x\(hex(byte)) where a class descriptor was expected")
        }
    }

    private mutating func readRequiredClassDescriptor(for what: String) throws(SessionInspectionError) -> ClassDescriptor {
        let start = cursor.offset
        guard let descriptor = try readClassDescriptor() else {
            throw .malformed(offset: start, detail: "\(what) without a class descriptor")
        }
        return descriptor
    }

    private mutating func readNewClassDescriptor(at start: Int) throws(SessionInspectionError) -> ClassDescriptor {
        let name = try readUTF()
        // The serialVersionUID identifies a version of the class; without the class
        // there is nothing to check it against.
        try cursor.skip(8)
        let handle = try newHandle(.classDescriptorInProgress(name: name), at: start)
        let flags = ClassFlags(rawValue: try cursor.readByte())
        let countOffset = cursor.offset
        let fieldCount = Int(try cursor.readInteger(Int16.self))
        guard fieldCount >= 0 else {
            throw .malformed(offset: countOffset, detail: "negative field count \(fieldCount) in class descriptor \(name)")
        }
        // A field takes at least 3 bytes: its type code and the length of its name.
        try cursor.require(fieldCount * 3)
        var fields: [FieldDescriptor] = []
        fields.reserveCapacity(fieldCount)
        for _ in 0..<fieldCount {
            fields.append(try readFieldDescriptor())
        }
        try skipAnnotation()
        let superclass = try readClassDescriptor()
        let hierarchy = (superclass?.hierarchy ?? []) + [ClassLayer(name: name, flags: flags, fields: fields)]
        guard hierarchy.count <= Limits.maximumDepth else {
            throw .limitExceeded(offset: start, detail: "class \(name) has more than \(Limits.maximumDepth) superclasses")
        }
        let descriptor = ClassDescriptor(name: name, hierarchy: hierarchy)
        setHandle(handle, .classDescriptor(descriptor))
        return descriptor
    }

    private mutating func readFieldDescriptor() throws(SessionInspectionError) -> FieldDescriptor {
        let start = cursor.offset
        let code = try cursor.readByte()
        let name = try readUTF()
        if let kind = JavaPrimitive.Kind(typeCode: code) {
            return FieldDescriptor(name: name, type: .primitive(kind))
        }
        guard code == UInt8(ascii: "L") || code == UInt8(ascii: "[") else {
            throw .malformed(offset: start, detail: "unknown field type code 0x\(hex(code)) for field \(name)")
        }
        // The field's type signature (`Ljava/lang/String;`): only a string, often a
        // back-reference; it takes a handle like any string.
        let signatureOffset = cursor.offset
        guard case .string = try readObject().value else {
            throw .malformed(offset: signatureOffset, detail: "the type signature of field \(name) is not a string")
        }
        return FieldDescriptor(name: name, type: .reference)
    }

    private mutating func readNewProxyClassDescriptor(at start: Int) throws(SessionInspectionError) -> ClassDescriptor {
        let handle = try newHandle(.classDescriptorInProgress(name: "a proxy class"), at: start)
        let countOffset = cursor.offset
        let count = Int(try cursor.readInteger(Int32.self))
        guard count >= 0, count <= Limits.maximumProxyInterfaces else {
            throw .malformed(offset: countOffset, detail: "proxy class with \(count) interfaces")
        }
        // Each interface name takes at least its 2-byte length.
        try cursor.require(count * 2)
        var interfaces: [String] = []
        interfaces.reserveCapacity(count)
        for _ in 0..<count {
            interfaces.append(try readUTF())
        }
        try skipAnnotation()
        let superclass = try readClassDescriptor()
        let name = "Proxy[" + interfaces.joined(separator: ", ") + "]"
        let hierarchy = (superclass?.hierarchy ?? []) + [ClassLayer(name: name, flags: .serializable, fields: [])]
        guard hierarchy.count <= Limits.maximumDepth else {
            throw .limitExceeded(offset: start, detail: "proxy class has more than \(Limits.maximumDepth) superclasses")
        }
        let descriptor = ClassDescriptor(name: name, hierarchy: hierarchy)
        setHandle(handle, .classDescriptor(descriptor))
        return descriptor
    }

    /// A class annotation (what `annotateClass` wrote; empty from the JDK's own
    /// stream): read only because its objects take handles.
    private mutating func skipAnnotation() throws(SessionInspectionError) {
        var height = 0
        _ = try readBlockContents(height: &height)
    }

    // MARK: Primitives of the grammar

    /// A `DataOutput.writeUTF` string: 2-byte length and modified UTF-8.
    private mutating func readUTF() throws(SessionInspectionError) -> String {
        let length = Int(try cursor.readInteger(UInt16.self))
        let textOffset = cursor.offset
        return try ModifiedUTF8.decode(try cursor.readBytes(length), offset: textOffset)
    }

    /// Reads a 4-byte handle and returns its index in the table, which it must be in.
    private mutating func readHandleIndex(at start: Int) throws(SessionInspectionError) -> Int {
        let handle = Int(try cursor.readInteger(Int32.self))
        let index = handle - Self.baseHandle
        guard handles.indices.contains(index) else {
            throw .malformed(offset: start, detail: "reference to handle 0x\(String(UInt32(truncatingIfNeeded: handle), radix: 16)), which does not exist")
        }
        return index
    }

    private mutating func newHandle(_ entry: HandleEntry, at offset: Int) throws(SessionInspectionError) -> Int {
        guard handles.count < Limits.maximumHandles else {
            throw .limitExceeded(offset: offset, detail: "more than \(Limits.maximumHandles) handles in one stream")
        }
        handles.append(entry)
        return handles.count - 1
    }

    /// Completes a handle. Handles only disappear on a reset or an exception, which
    /// end the object that owns `index` first; the check keeps that an invariant
    /// rather than a way to trap.
    private mutating func setHandle(_ index: Int, _ entry: HandleEntry) {
        if handles.indices.contains(index) {
            handles[index] = entry
        }
    }

    private mutating func enterNesting() throws(SessionInspectionError) {
        guard depth < Limits.maximumDepth else {
            throw .limitExceeded(offset: cursor.offset, detail: "objects nest deeper than \(Limits.maximumDepth) levels")
        }
        depth += 1
    }

    private func checkHeight(_ node: Node, at offset: Int) throws(SessionInspectionError) {
        guard node.height <= Limits.maximumDepth else {
            throw .limitExceeded(
                offset: offset,
                detail: "a value nests deeper than \(Limits.maximumDepth) levels through back-references"
            )
        }
    }

    /// `java.io.NotSerializableException: com.example.Cart` from a Throwable's fields.
    static func describeException(_ value: JavaValue) -> String {
        guard case .object(let object) = value else { return value.javaTypeName }
        if case .string(let message)? = object[field: "detailMessage"] {
            return object.className + ": " + message
        }
        return object.className
    }
}
