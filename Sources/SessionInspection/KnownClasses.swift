/// Turns the fields and custom data of objects of well-known JDK classes into their
/// natural shape (`JavaValue.boxed`, `.date`, `.collection`, `.map`). The layouts are
/// those of the classes' `writeObject` methods in OpenJDK 8 to 21, which have stayed
/// stable because they are the classes' serialized form. When an object does not
/// have the expected layout it stays a generic `JavaValue.object`, so nothing is lost.
enum KnownClasses {
    /// What one class of an object's hierarchy wrote.
    struct ClassData {
        var className: String
        var fields: [JavaField]
        /// What its `writeObject`/`writeExternal` wrote after the fields; nil when the class has no such method.
        var customData: [JavaBlockContent]?
    }

    /// How a collection class lays out its elements in its custom data.
    enum CustomDataLayout {
        /// Objects after any primitive data are the elements.
        case elements
        /// The elements, then a null that ends them.
        case elementsEndingInNull
        /// The comparator (or null), then the elements.
        case comparatorThenElements
        /// Key, value, key, value…
        case pairs
        /// Key, value pairs, then one or two nulls that end them.
        case pairsEndingInNull
    }

    /// Collection classes whose elements are in their custom data, by the class in the
    /// hierarchy that writes them (so `LinkedHashMap` is found through `HashMap`).
    static let customDataLayouts: [String: CustomDataLayout] = [
        "java.util.ArrayList": .elements,
        "java.util.LinkedList": .elements,
        "java.util.ArrayDeque": .elements,
        "java.util.HashSet": .elements,
        "java.util.PriorityQueue": .elements,
        "java.util.concurrent.CopyOnWriteArrayList": .elements,
        "java.util.concurrent.ConcurrentLinkedQueue": .elementsEndingInNull,
        "java.util.concurrent.ConcurrentLinkedDeque": .elementsEndingInNull,
        "java.util.TreeSet": .comparatorThenElements,
        "java.util.HashMap": .pairs,
        "java.util.Hashtable": .pairs,
        "java.util.TreeMap": .pairs,
        "java.util.IdentityHashMap": .pairs,
        "java.util.EnumMap": .pairs,
        "java.util.concurrent.ConcurrentHashMap": .pairsEndingInNull,
        "java.util.concurrent.ConcurrentSkipListMap": .pairsEndingInNull,
    ]

    static let javaUtilDate = "java.util.Date"
    static let collectionsPrefix = "java.util.Collections$"

    static func value(className: String, layers: [ClassData]) -> JavaValue {
        if let kind = JavaPrimitive.Kind(boxClassName: className), let primitive = boxedValue(kind, className: className, layers: layers) {
            return .boxed(primitive)
        }
        if className == javaUtilDate, let millis = dateMillis(layers) {
            return .date(epochMillis: millis)
        }
        if let collection = collectionFromCustomData(className: className, layers: layers)
            ?? collectionFromFields(className: className, layers: layers)
        {
            return collection
        }
        return .object(genericObject(className: className, layers: layers))
    }

    static func genericObject(className: String, layers: [ClassData]) -> JavaObject {
        JavaObject(
            className: className,
            fields: layers.flatMap(\.fields),
            customData: layers.compactMap { layer in
                guard let contents = layer.customData, !contents.isEmpty else { return nil }
                return JavaCustomData(className: layer.className, contents: contents)
            }
        )
    }

    /// The `value` field of `java.lang.Integer` and the other boxes.
    private static func boxedValue(_ kind: JavaPrimitive.Kind, className: String, layers: [ClassData]) -> JavaPrimitive? {
        for layer in layers where layer.className == className {
            for field in layer.fields where field.name == "value" {
                if case .primitive(let primitive) = field.value, primitive.kind == kind {
                    return primitive
                }
            }
        }
        return nil
    }

    /// `java.util.Date.writeObject` writes the time as one long.
    private static func dateMillis(_ layers: [ClassData]) -> Int64? {
        guard let layer = layers.last(where: { $0.className == javaUtilDate }),
            case .bytes(let bytes)? = layer.customData?.first, bytes.count >= 8
        else { return nil }
        return bytes.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) }
    }

    private static func collectionFromCustomData(className: String, layers: [ClassData]) -> JavaValue? {
        for layer in layers.reversed() {
            guard let layout = customDataLayouts[layer.className], let contents = layer.customData else { continue }
            var objects: [JavaValue] = contents.compactMap { content in
                guard case .object(let value) = content else { return nil }
                return value
            }
            switch layout {
            case .elements:
                return .collection(className: className, elements: objects)
            case .elementsEndingInNull:
                guard objects.last == .null else { return nil }
                objects.removeLast()
                return .collection(className: className, elements: objects)
            case .comparatorThenElements:
                guard !objects.isEmpty else { return nil }
                return .collection(className: className, elements: Array(objects.dropFirst()))
            case .pairs, .pairsEndingInNull:
                if layout == .pairsEndingInNull {
                    // ConcurrentHashMap ends with two nulls, ConcurrentSkipListMap with
                    // one; neither allows null keys, so the first null key ends the map.
                    guard let end = stride(from: 0, to: objects.count, by: 2).first(where: { objects[$0] == .null }) else {
                        return nil
                    }
                    objects.removeSubrange(end...)
                }
                guard objects.count % 2 == 0 else { return nil }
                let entries = stride(from: 0, to: objects.count, by: 2).map { index in
                    JavaMapEntry(key: objects[index], value: objects[index + 1])
                }
                return .map(className: className, entries: entries)
            }
        }
        return nil
    }

    /// Collections whose elements are ordinary fields.
    private static func collectionFromFields(className: String, layers: [ClassData]) -> JavaValue? {
        let fields = layers.flatMap(\.fields)
        func field(_ name: String) -> JavaValue? {
            fields.first(where: { $0.name == name })?.value
        }
        func elements(of value: JavaValue?) -> [JavaValue]? {
            switch value {
            case .array(_, let elements)?, .collection(_, let elements)?: return elements
            default: return nil
            }
        }
        if layers.contains(where: { $0.className == "java.util.Vector" }),
            let data = elements(of: field("elementData")),
            case .primitive(.int(let count))? = field("elementCount"), count >= 0
        {
            return .collection(className: className, elements: Array(data.prefix(Int(count))))
        }
        switch className {
        case "java.util.Collections$EmptyList", "java.util.Collections$EmptySet":
            return .collection(className: className, elements: [])
        case "java.util.Collections$EmptyMap":
            return .map(className: className, entries: [])
        case "java.util.Collections$SingletonList", "java.util.Collections$SingletonSet":
            return field("element").map { .collection(className: className, elements: [$0]) }
        case "java.util.Collections$SingletonMap":
            guard let key = field("k"), let value = field("v") else { return nil }
            return .map(className: className, entries: [JavaMapEntry(key: key, value: value)])
        case "java.util.Arrays$ArrayList":
            return elements(of: field("a")).map { .collection(className: className, elements: $0) }
        case "java.util.EnumSet$SerializationProxy":
            return elements(of: field("elements")).map { .collection(className: "java.util.EnumSet", elements: $0) }
        default:
            break
        }
        // Collections.unmodifiableList(…), synchronizedMap(…), checkedSet(…): show the
        // wrapped collection's contents under the wrapper's class.
        guard className.hasPrefix(collectionsPrefix) else { return nil }
        if let wrapped = elements(of: field("c")) {
            return .collection(className: className, elements: wrapped)
        }
        if case .map(_, let entries)? = field("m") {
            return .map(className: className, entries: entries)
        }
        return nil
    }
}
