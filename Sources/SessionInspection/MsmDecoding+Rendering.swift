// The two renderings tandemctl prints: text for people and JSON for programs.
// Both escape or encode everything that came from the value, so printing them is safe.

extension MsmDecoding: CustomStringConvertible {
    /// Multi-line text; every line ends in a newline.
    ///
    ///     msm session (format version 2)
    ///     id: 0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1
    ///     created: 2026-11-22T03:47:02.551Z (1795319222551)
    ///     …
    ///     attributes:
    ///       magedu.com (java.lang.String) = "magedu.com"
    ///       counter (java.lang.Integer) = 3
    public func renderedText(limits: JavaRenderingLimits = .text) -> String {
        var lines: [String] = []
        switch self {
        case .session(let session):
            lines = session.renderedLines(limits: limits)
        case .validity(let validity):
            lines = validity.renderedLines()
        case .lock:
            lines = ["msm lock: the value `locked`; a request holds this session's lock"]
        case .pingMarker:
            lines = ["msm ping marker: the byte 0x01 that msm's session ping leaves under a missing key; not a session"]
        case .notMsm(let reason):
            lines = ["not an msm value: " + DisplayText.escaped(reason)]
        }
        return lines.map { $0 + "\n" }.joined()
    }

    public var description: String { renderedText() }

    /// `{"kind": "session" | "validity" | "lock" | "pingMarker" | "notMsm", …}`.
    /// Times are `{"epochMillis", "iso"}`; attribute values are `JavaValue.json`, with
    /// their text rendering beside them.
    public func json(limits: JavaRenderingLimits = .json) -> JSONValue {
        switch self {
        case .session(let session):
            return session.json(limits: limits)
        case .validity(let validity):
            return validity.json
        case .lock:
            return .object(["kind": .string("lock")])
        case .pingMarker:
            return .object(["kind": .string("pingMarker")])
        case .notMsm(let reason):
            return .object(["kind": .string("notMsm"), "reason": .string(reason)])
        }
    }
}

/// `2026-11-22T03:47:02.551Z (1795319222551)`.
func renderedTime(_ millis: Int64) -> String {
    "\(Timestamp.iso8601(epochMillis: millis)) (\(millis))"
}

func jsonTime(_ millis: Int64) -> JSONValue {
    .object(["epochMillis": .integer(millis), "iso": .string(Timestamp.iso8601(epochMillis: millis))])
}

func renderedInterval(_ seconds: Int32) -> String {
    seconds > 0 ? "\(seconds) s" : "\(seconds) s (never expires)"
}

extension MsmSession {
    static let savedRequestNote = "org.apache.catalina.authenticator.REQUEST"
    static let savedPrincipalNote = "org.apache.catalina.authenticator.PRINCIPAL"

    func renderedLines(limits: JavaRenderingLimits) -> [String] {
        var lines = [
            "msm session (format version \(version))",
            "id: " + DisplayText.escaped(id),
            "created: " + renderedTime(creationTime),
            "last accessed: " + renderedTime(lastAccessedTime),
            "this accessed: " + renderedTime(thisAccessedTime),
            "last backup: " + renderedTime(lastBackupTime),
            "max inactive interval: " + renderedInterval(maxInactiveInterval),
            "new: \(isNew)",
            "valid: \(isValid)",
            "auth type: " + (authType?.name ?? "none"),
        ]
        if let principal {
            lines.append("principal: " + principal.renderedText(limits: limits))
        }
        if let savedRequest {
            lines.append("saved request (note \(Self.savedRequestNote)):")
            for field in savedRequest.namedFields {
                lines.append("  \(field.name) = " + field.value.renderedText(limits: limits))
            }
        }
        if let savedPrincipal {
            lines.append("saved principal (note \(Self.savedPrincipalNote)): " + savedPrincipal.renderedText(limits: limits))
        }
        if attributes.isEmpty {
            lines.append("attributes: none")
        } else {
            lines.append("attributes:")
            for attribute in attributes {
                lines.append(
                    "  " + DisplayText.escaped(attribute.name) + " (" + DisplayText.escaped(attribute.javaType) + ") = "
                        + attribute.renderedValue(limits: limits)
                )
            }
        }
        for warning in warnings {
            lines.append("warning: " + DisplayText.escaped(warning))
        }
        return lines
    }

    func json(limits: JavaRenderingLimits) -> JSONValue {
        var members: [String: JSONValue] = [
            "kind": .string("session"),
            "version": .integer(Int64(version)),
            "id": .string(id),
            "creationTime": jsonTime(creationTime),
            "lastAccessedTime": jsonTime(lastAccessedTime),
            "thisAccessedTime": jsonTime(thisAccessedTime),
            "lastBackupTime": jsonTime(lastBackupTime),
            "maxInactiveInterval": .integer(Int64(maxInactiveInterval)),
            "isNew": .bool(isNew),
            "isValid": .bool(isValid),
            "authType": authType.map { .string($0.name) } ?? .null,
            "principal": principal?.json(limits: limits) ?? .null,
            "savedPrincipal": savedPrincipal?.json(limits: limits) ?? .null,
            "attributes": .array(attributes.map { $0.json(limits: limits) }),
            "warnings": .array(warnings.map { .string($0) }),
        ]
        if let savedRequest {
            var fields: [String: JSONValue] = [:]
            for field in savedRequest.namedFields {
                fields[field.name] = field.value.json(limits: limits)
            }
            members["savedRequest"] = .object(fields)
        } else {
            members["savedRequest"] = .null
        }
        return .object(members)
    }
}

extension MsmPrincipal {
    /// `alice, roles admin, user (org.apache.catalina.realm.GenericPrincipal$SerializablePrincipal)`,
    /// or the whole value when it has no string `name`.
    func renderedText(limits: JavaRenderingLimits) -> String {
        guard let name else { return value.renderedText(limits: limits) }
        var text = DisplayText.escaped(name)
        if let roles {
            text += roles.isEmpty ? ", no roles" : ", roles " + roles.map(DisplayText.escaped).joined(separator: ", ")
        }
        return text + " (" + DisplayText.escaped(className) + ")"
    }

    func json(limits: JavaRenderingLimits) -> JSONValue {
        .object([
            "class": .string(className),
            "name": name.map { .string($0) } ?? .null,
            "roles": roles.map { .array($0.map { .string($0) }) } ?? .null,
            "value": value.json(limits: limits),
        ])
    }
}

extension MsmAttribute {
    func json(limits: JavaRenderingLimits) -> JSONValue {
        switch value {
        case .readable(let value):
            return .object([
                "name": .string(name),
                "type": .string(javaType),
                "value": value.json(limits: limits),
                "text": .string(value.renderedText(limits: .text)),
            ])
        case .unreadable(let reason):
            return .object(["name": .string(name), "type": .null, "unreadable": .string(reason)])
        }
    }
}

extension MsmValidity {
    func renderedLines() -> [String] {
        var lines = [
            "msm validity record",
            "max inactive interval: " + renderedInterval(maxInactiveInterval),
            "last accessed: " + renderedTime(lastAccessedTime),
            "this accessed: " + renderedTime(thisAccessedTime),
            "valid until: " + validUntilText,
        ]
        for warning in warnings {
            lines.append("warning: " + DisplayText.escaped(warning))
        }
        return lines
    }

    private var validUntilText: String {
        if maxInactiveInterval <= 0 { return "never expires" }
        return validUntil.map(renderedTime) ?? "past the end of time"
    }

    var json: JSONValue {
        .object([
            "kind": .string("validity"),
            "maxInactiveInterval": .integer(Int64(maxInactiveInterval)),
            "lastAccessedTime": jsonTime(lastAccessedTime),
            "thisAccessedTime": jsonTime(thisAccessedTime),
            "validUntil": validUntil.map(jsonTime) ?? .null,
            "warnings": .array(warnings.map { .string($0) }),
        ])
    }
}
