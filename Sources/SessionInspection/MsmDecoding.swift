/// What a value stored by memcached-session-manager is (FORMAT.md).
public enum MsmDecoding: Sendable, Equatable {
    /// A Tomcat session (under the session key or its `bak:` copy).
    case session(MsmSession)
    /// A `validity:` record (or its `bak:validity:` copy).
    case validity(MsmValidity)
    /// The `lock:` value `locked`: a request holds the session's lock.
    case lock
    /// The single byte 0x01 that msm's session ping leaves under a missing session
    /// (or `bak:`) key (FORMAT.md 6): msm data, but not a session.
    case pingMarker
    /// Not something msm stores (or not readable as it); `reason` says why, with the
    /// offset where decoding stopped.
    case notMsm(reason: String)
}

/// A Tomcat session as msm serializes it (FORMAT.md 2 and 3).
public struct MsmSession: Sendable, Equatable {
    /// The fields block's format version: 2 (what msm writes) or 1.
    public var version: Int
    /// The full session id, `<hex>-<nodeId>[.<jvmRoute>]`, without key prefixes.
    public var id: String
    /// Epoch milliseconds.
    public var creationTime: Int64
    /// Epoch milliseconds. In non-sticky mode it may be stale: `validity:` has the current one.
    public var lastAccessedTime: Int64
    /// Seconds; zero or less means the session never times out.
    public var maxInactiveInterval: Int32
    public var isNew: Bool
    public var isValid: Bool
    /// Epoch milliseconds (may be stale like `lastAccessedTime`).
    public var thisAccessedTime: Int64
    /// Epoch milliseconds: when msm serialized the session.
    public var lastBackupTime: Int64
    /// How the user authenticated, nil if not.
    public var authType: MsmAuthType?
    /// The authenticated principal Tomcat cached in the session.
    public var principal: MsmPrincipal?
    /// The request a FORM login saved (session note `org.apache.catalina.authenticator.REQUEST`); version 2 only.
    public var savedRequest: MsmSavedRequest?
    /// The principal in the session note `org.apache.catalina.authenticator.PRINCIPAL`; version 2 only.
    public var savedPrincipal: MsmPrincipal?
    /// In stream order, which is the session's hash-map order, not insertion order.
    public var attributes: [MsmAttribute]
    /// Things that did not stop decoding but look wrong (trailing bytes, a key that
    /// does not name this session, implausible times).
    public var warnings: [String]

    public init(
        version: Int, id: String, creationTime: Int64, lastAccessedTime: Int64, maxInactiveInterval: Int32,
        isNew: Bool, isValid: Bool, thisAccessedTime: Int64, lastBackupTime: Int64, authType: MsmAuthType?,
        principal: MsmPrincipal?, savedRequest: MsmSavedRequest?, savedPrincipal: MsmPrincipal?,
        attributes: [MsmAttribute], warnings: [String]
    ) {
        self.version = version
        self.id = id
        self.creationTime = creationTime
        self.lastAccessedTime = lastAccessedTime
        self.maxInactiveInterval = maxInactiveInterval
        self.isNew = isNew
        self.isValid = isValid
        self.thisAccessedTime = thisAccessedTime
        self.lastBackupTime = lastBackupTime
        self.authType = authType
        self.principal = principal
        self.savedRequest = savedRequest
        self.savedPrincipal = savedPrincipal
        self.attributes = attributes
        self.warnings = warnings
    }

    /// The attribute called `name`, if the session has one.
    public subscript(attribute name: String) -> MsmAttribute? {
        attributes.first(where: { $0.name == name })
    }
}

/// msm's codes for `Session.getAuthType()` (TranscoderService's AuthType enum).
public enum MsmAuthType: UInt16, Sendable, Hashable, CaseIterable {
    case basic = 1
    case clientCert = 2
    case digest = 3
    case form = 4

    /// The servlet API's name: `BASIC`, `CLIENT_CERT`, `DIGEST`, `FORM`.
    public var name: String {
        switch self {
        case .basic: return "BASIC"
        case .clientCert: return "CLIENT_CERT"
        case .digest: return "DIGEST"
        case .form: return "FORM"
        }
    }
}

/// A principal object from the session. Tomcat 9 writes
/// `GenericPrincipal$SerializablePrincipal`; other realms may write other classes,
/// so `name` and `roles` are read from fields of those names when they exist.
public struct MsmPrincipal: Sendable, Equatable {
    public var value: JavaValue

    public init(value: JavaValue) {
        self.value = value
    }

    public var className: String { value.javaTypeName }

    /// The `name` field, if the principal has a string one.
    public var name: String? {
        guard case .object(let object) = value, case .string(let name)? = object[field: "name"] else { return nil }
        return name
    }

    /// The `roles` field, if the principal has one that is an array of strings.
    public var roles: [String]? {
        guard case .object(let object) = value, case .array(_, let elements)? = object[field: "roles"] else { return nil }
        var roles: [String] = []
        for element in elements {
            guard case .string(let role) = element else { return nil }
            roles.append(role)
        }
        return roles
    }
}

/// The request a FORM login saved to replay after the login (TranscoderService
/// writes these eight objects in this order). Each is kept as read: Strings or null,
/// `headers` a map of lower-case names to lists of values, `locales` a list of
/// `java.util.Locale`, `body` a Tomcat `ByteChunk` or null.
public struct MsmSavedRequest: Sendable, Equatable {
    public var body: JavaValue
    public var contentType: JavaValue
    public var headers: JavaValue
    public var locales: JavaValue
    public var method: JavaValue
    public var queryString: JavaValue
    public var requestURI: JavaValue
    public var decodedRequestURI: JavaValue

    public init(
        body: JavaValue, contentType: JavaValue, headers: JavaValue, locales: JavaValue, method: JavaValue,
        queryString: JavaValue, requestURI: JavaValue, decodedRequestURI: JavaValue
    ) {
        self.body = body
        self.contentType = contentType
        self.headers = headers
        self.locales = locales
        self.method = method
        self.queryString = queryString
        self.requestURI = requestURI
        self.decodedRequestURI = decodedRequestURI
    }

    /// The fields with the names used in renderings, in a fixed order.
    public var namedFields: [(name: String, value: JavaValue)] {
        [
            ("method", method), ("requestURI", requestURI), ("queryString", queryString),
            ("decodedRequestURI", decodedRequestURI), ("contentType", contentType), ("body", body),
            ("headers", headers), ("locales", locales),
        ]
    }
}

/// One session attribute.
public struct MsmAttribute: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case readable(JavaValue)
        /// msm could not serialize the value (`NotSerializableException`: the stream
        /// has `TC_EXCEPTION` and msm's marker string instead); msm itself drops such
        /// an attribute, or fails to load the session.
        case unreadable(reason: String)
    }

    public var name: String
    public var value: Value

    public init(name: String, value: Value) {
        self.name = name
        self.value = value
    }

    /// The Java type named in the stream (`java.lang.String`, `byte[]`, `e2e.User`),
    /// or `unreadable`.
    public var javaType: String {
        switch value {
        case .readable(let value): return value.javaTypeName
        case .unreadable: return "unreadable"
        }
    }

    /// The value as Java-like text (`JavaValue.renderedText`), or why it is unreadable.
    public func renderedValue(limits: JavaRenderingLimits = .text) -> String {
        switch value {
        case .readable(let value): return value.renderedText(limits: limits)
        case .unreadable(let reason): return "<unreadable: " + DisplayText.escaped(reason) + ">"
        }
    }
}

/// A `validity:` record (FORMAT.md 4): what msm checks to decide whether a
/// non-sticky session is still valid, and its current access times.
public struct MsmValidity: Sendable, Equatable {
    /// Seconds; zero or less means the session never times out.
    public var maxInactiveInterval: Int32
    /// Epoch milliseconds.
    public var lastAccessedTime: Int64
    /// Epoch milliseconds.
    public var thisAccessedTime: Int64
    public var warnings: [String]

    public init(maxInactiveInterval: Int32, lastAccessedTime: Int64, thisAccessedTime: Int64, warnings: [String]) {
        self.maxInactiveInterval = maxInactiveInterval
        self.lastAccessedTime = lastAccessedTime
        self.thisAccessedTime = thisAccessedTime
        self.warnings = warnings
    }

    /// Epoch milliseconds from which msm considers the session expired
    /// (thisAccessedTime + maxInactiveInterval s); nil when it never expires.
    public var validUntil: Int64? {
        guard maxInactiveInterval > 0 else { return nil }
        let (span, spanOverflow) = Int64(maxInactiveInterval).multipliedReportingOverflow(by: 1000)
        let (end, endOverflow) = thisAccessedTime.addingReportingOverflow(span)
        return spanOverflow || endOverflow ? nil : end
    }
}
