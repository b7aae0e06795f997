/// A value read from a Java Object Serialization stream, without the Java classes:
/// well-known JDK types become their natural shape (strings, boxed numbers, dates,
/// lists, maps), anything else a generic object with its class name and fields.
///
/// A back-reference (`TC_REFERENCE`) to a value that is complete is replaced by that
/// value, so shared objects appear once at every place they are used; one to an
/// object still being read (a cycle) is `backReference`. The reader bounds how deep
/// values nest, counting shared ones (`JavaObjectStream.Limits.maximumDepth`), so
/// walking a value recursively is safe; its size when expanded is not bounded, so
/// renderers budget how much they print.
public enum JavaValue: Sendable, Equatable {
    case null
    /// The value of a primitive field (or an element of a primitive array).
    case primitive(JavaPrimitive)
    /// `java.lang.Integer`, `Long`, `Boolean`, …: the box of a primitive; its class
    /// follows from the primitive (`JavaPrimitive.boxClassName`).
    case boxed(JavaPrimitive)
    case string(String)
    /// `java.util.Date`, in milliseconds since the Unix epoch.
    case date(epochMillis: Int64)
    /// `byte[]`.
    case byteArray([UInt8])
    /// Any other array; `className` is the JVM name (`[I`, `[Ljava.lang.String;`).
    case array(className: String, elements: [JavaValue])
    /// A JDK list, set or queue: its elements in stream order.
    case collection(className: String, elements: [JavaValue])
    /// A JDK map: its entries in stream order.
    case map(className: String, entries: [JavaMapEntry])
    /// A constant of a Java enum.
    case enumConstant(className: String, name: String)
    /// A `java.lang.Class` (or a class descriptor in an object's place).
    case javaClass(name: String)
    /// Any other object: its class, fields and the extra data its `writeObject` wrote.
    case object(JavaObject)
    /// A reference to an object that contains it (a cycle); `className` is its class.
    case backReference(className: String)

    /// The Java type of this value as a reader would name it: the class name, or for
    /// arrays the source form (`byte[]`, `java.lang.String[]`).
    public var javaTypeName: String {
        switch self {
        case .null: return "null"
        case .primitive(let primitive): return primitive.kind.javaName
        case .boxed(let primitive): return primitive.kind.boxClassName
        case .string: return "java.lang.String"
        case .date: return "java.util.Date"
        case .byteArray: return "byte[]"
        case .array(let className, _): return JavaValue.sourceTypeName(ofJVMName: className)
        case .collection(let className, _), .map(let className, _), .enumConstant(let className, _),
            .backReference(let className):
            return className
        case .javaClass: return "java.lang.Class"
        case .object(let object): return object.className
        }
    }

    /// `[B` → `byte[]`, `[[Ljava.lang.String;` → `java.lang.String[][]`; a name that is
    /// not a JVM array name is returned as is.
    public static func sourceTypeName(ofJVMName name: String) -> String {
        var dimensions = 0
        var rest = Substring(name)
        while rest.first == "[" {
            dimensions += 1
            rest = rest.dropFirst()
        }
        guard dimensions > 0, let code = rest.first else { return name }
        let component: String
        if code == "L", rest.last == ";", rest.count > 2 {
            component = String(rest.dropFirst().dropLast())
        } else if rest.count == 1, let kind = JavaPrimitive.Kind(typeCode: code) {
            component = kind.javaName
        } else {
            return name
        }
        return component + String(repeating: "[]", count: dimensions)
    }
}

/// One key/value pair of a map.
public struct JavaMapEntry: Sendable, Equatable {
    public var key: JavaValue
    public var value: JavaValue

    public init(key: JavaValue, value: JavaValue) {
        self.key = key
        self.value = value
    }
}

/// A Java primitive value.
public enum JavaPrimitive: Sendable, Equatable {
    case byte(Int8)
    /// A UTF-16 code unit.
    case char(UInt16)
    case double(Double)
    case float(Float)
    case int(Int32)
    case long(Int64)
    case short(Int16)
    case boolean(Bool)

    /// The primitive types, with their one-letter codes in field descriptors.
    public enum Kind: Sendable, Hashable, CaseIterable {
        case byte, char, double, float, int, long, short, boolean

        init?(typeCode: Character) {
            switch typeCode {
            case "B": self = .byte
            case "C": self = .char
            case "D": self = .double
            case "F": self = .float
            case "I": self = .int
            case "J": self = .long
            case "S": self = .short
            case "Z": self = .boolean
            default: return nil
            }
        }

        init?(typeCode: UInt8) {
            guard typeCode < 0x80 else { return nil }
            self.init(typeCode: Character(Unicode.Scalar(typeCode)))
        }

        /// Bytes of one value in a stream.
        var size: Int {
            switch self {
            case .byte, .boolean: return 1
            case .char, .short: return 2
            case .int, .float: return 4
            case .long, .double: return 8
            }
        }

        public var javaName: String {
            switch self {
            case .byte: return "byte"
            case .char: return "char"
            case .double: return "double"
            case .float: return "float"
            case .int: return "int"
            case .long: return "long"
            case .short: return "short"
            case .boolean: return "boolean"
            }
        }

        public var boxClassName: String {
            switch self {
            case .byte: return "java.lang.Byte"
            case .char: return "java.lang.Character"
            case .double: return "java.lang.Double"
            case .float: return "java.lang.Float"
            case .int: return "java.lang.Integer"
            case .long: return "java.lang.Long"
            case .short: return "java.lang.Short"
            case .boolean: return "java.lang.Boolean"
            }
        }

        /// The primitive boxed by the class `name`, if it is one of the eight boxes.
        init?(boxClassName name: String) {
            guard let kind = Kind.allCases.first(where: { $0.boxClassName == name }) else { return nil }
            self = kind
        }
    }

    public var kind: Kind {
        switch self {
        case .byte: return .byte
        case .char: return .char
        case .double: return .double
        case .float: return .float
        case .int: return .int
        case .long: return .long
        case .short: return .short
        case .boolean: return .boolean
        }
    }
}

/// An object of a class this module has no special shape for.
public struct JavaObject: Sendable, Equatable {
    /// The object's class (the most derived one).
    public var className: String
    /// The serializable fields of every class from the top-most serializable
    /// superclass down, in stream order.
    public var fields: [JavaField]
    /// What the classes' own `writeObject` (or `writeExternal`) methods wrote after
    /// the fields, for each class that wrote something.
    public var customData: [JavaCustomData]

    public init(className: String, fields: [JavaField], customData: [JavaCustomData]) {
        self.className = className
        self.fields = fields
        self.customData = customData
    }

    /// The value of the first field called `name`.
    public subscript(field name: String) -> JavaValue? {
        fields.first(where: { $0.name == name })?.value
    }
}

/// One field of a `JavaObject`.
public struct JavaField: Sendable, Equatable {
    /// The class that declares the field (fields of different classes may share a name).
    public var declaringClass: String
    public var name: String
    public var value: JavaValue

    public init(declaringClass: String, name: String, value: JavaValue) {
        self.declaringClass = declaringClass
        self.name = name
        self.value = value
    }
}

/// The data one class wrote in its `writeObject`/`writeExternal` beyond its fields.
public struct JavaCustomData: Sendable, Equatable {
    public var className: String
    public var contents: [JavaBlockContent]

    public init(className: String, contents: [JavaBlockContent]) {
        self.className = className
        self.contents = contents
    }
}

/// An item of custom data: primitive data (`writeInt`, … as raw bytes; consecutive
/// blocks are joined) or an object.
public enum JavaBlockContent: Sendable, Equatable {
    case bytes([UInt8])
    case object(JavaValue)
}
