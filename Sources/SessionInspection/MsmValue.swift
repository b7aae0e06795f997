/// Decodes the values memcached-session-manager stores (FORMAT.md): sessions and
/// their `bak:` copies, `validity:` records, lock values and ping markers.
public enum MsmValue {
    /// What msm stores under `lock:` keys.
    static let lockValue = Array("locked".utf8)
    /// What msm's session ping leaves under a missing session key.
    static let pingMarkerValue: [UInt8] = [0x01]
    /// The size of a `validity:` record.
    static let validityLength = 20
    /// What msm writes in place of an attribute value it could not serialize.
    static let notSerializableMarker = "___NOT_SERIALIZABLE_EXCEPTION___"
    /// Times outside 2000-01-01 … 9999-12-31 are not a live session's.
    static let plausibleTimes: ClosedRange<Int64> = 946_684_800_000...253_402_300_799_999

    /// Decodes `value`, stored under `key` (nil if unknown).
    ///
    /// The key's role prefix (`validity:`, `bak:`, `lock:`) says what the value should
    /// be; the value must then have that format. When it does not, a value that fully
    /// decodes as something else is returned with a warning, and anything else is
    /// `notMsm`. Without a key, a value is recognised by its bytes; a 20-byte value
    /// only counts as a validity record when its times are plausible and in order,
    /// since any 20 bytes have that format.
    public static func decode(key: String?, value: [UInt8]) -> MsmDecoding {
        guard let key else { return decodeWithoutKey(value) }
        let msmKey = MsmKey(key)
        switch msmKey.role {
        case .session, .secondarySession:
            if value == pingMarkerValue { return .pingMarker }
            return decodeSession(value, key: msmKey)
        case .validity, .secondaryValidity:
            switch validityRecord(value) {
            case .record(let validity):
                return .validity(validity)
            case .implausible(let problem):
                return .notMsm(reason: "a \(keyPrefixDescription(msmKey.role)) key, but \(problem)")
            case .wrongSize:
                return decodeAgainstKey(
                    value, key: msmKey,
                    expected: "a validity record of \(validityLength) bytes, but the value has \(value.count)"
                )
            }
        case .lock:
            if value == lockValue { return .lock }
            return decodeAgainstKey(value, key: msmKey, expected: "msm's lock value `locked`")
        case .nodeProbe:
            return .notMsm(reason: "msm only reads \(MsmKey.nodeProbePrefix)<node> keys to probe nodes and never stores a value under them")
        }
    }

    private static func decodeWithoutKey(_ value: [UInt8]) -> MsmDecoding {
        if value == pingMarkerValue { return .pingMarker }
        if value == lockValue { return .lock }
        switch validityRecord(value) {
        case .record(var validity):
            // Without a key, 20 bytes could be anything; ask for the times to be in order too.
            guard validity.warnings.isEmpty else {
                return .notMsm(reason: "\(validityLength) bytes like a validity record, but \(validity.warnings.joined(separator: "; "))")
            }
            validity.warnings.append("recognised by its size and times only: no key was given")
            return .validity(validity)
        case .implausible(let problem):
            return .notMsm(reason: "\(validityLength) bytes like a validity record, but \(problem)")
        case .wrongSize:
            break
        }
        return decodeSession(value, key: nil)
    }

    /// The key promised another kind of value: accept a session (the one format that
    /// proves itself), with a warning, and refuse the rest.
    private static func decodeAgainstKey(_ value: [UInt8], key: MsmKey, expected: String) -> MsmDecoding {
        let keyKind = "a \(keyPrefixDescription(key.role)) key"
        switch decodeSession(value, key: key) {
        case .session(var session):
            session.warnings.append("stored under \(keyKind), which should hold \(expected)")
            return .session(session)
        case .validity, .lock, .pingMarker, .notMsm:
            return .notMsm(reason: "\(keyKind) should hold \(expected)")
        }
    }

    private static func keyPrefixDescription(_ role: MsmKey.Role) -> String {
        switch role {
        case .session: return "session"
        case .validity: return MsmKey.validityPrefix
        case .secondarySession: return MsmKey.secondaryPrefix
        case .secondaryValidity: return MsmKey.secondaryPrefix + MsmKey.validityPrefix
        case .lock: return MsmKey.lockPrefix
        case .nodeProbe: return MsmKey.nodeProbePrefix
        }
    }

    // MARK: Validity

    enum ValidityRecord {
        case record(MsmValidity)
        /// The right size, but times no live session has.
        case implausible(String)
        case wrongSize
    }

    /// Reads `value` as a validity record. Any 20 bytes have the format, so the times
    /// must be plausible; `thisAccessedTime` before `lastAccessedTime` only warns, as
    /// clocks that differ between Tomcats can cause it.
    private static func validityRecord(_ value: [UInt8]) -> ValidityRecord {
        var cursor = ByteCursor(value)
        guard value.count == validityLength,
            let maxInactiveInterval = try? cursor.readInteger(Int32.self),
            let lastAccessedTime = try? cursor.readInteger(Int64.self),
            let thisAccessedTime = try? cursor.readInteger(Int64.self)
        else { return .wrongSize }
        guard plausibleTimes.contains(lastAccessedTime), plausibleTimes.contains(thisAccessedTime) else {
            return .implausible(
                "its access times \(lastAccessedTime) and \(thisAccessedTime) are not both within "
                    + "\(Timestamp.iso8601(epochMillis: plausibleTimes.lowerBound)) … \(Timestamp.iso8601(epochMillis: plausibleTimes.upperBound))"
            )
        }
        var warnings: [String] = []
        if thisAccessedTime < lastAccessedTime {
            warnings.append("thisAccessedTime is before lastAccessedTime (clocks of different Tomcats?)")
        }
        return .record(
            MsmValidity(
                maxInactiveInterval: maxInactiveInterval, lastAccessedTime: lastAccessedTime,
                thisAccessedTime: thisAccessedTime, warnings: warnings
            )
        )
    }

    // MARK: Session

    private static func decodeSession(_ value: [UInt8], key: MsmKey?) -> MsmDecoding {
        var decoder = MsmSessionDecoder(value: value)
        do {
            var session = try decoder.decode()
            if let key, !key.names(sessionID: session.id) {
                session.warnings.append("the key \(key.key) does not name session \(session.id)")
            }
            return .session(session)
        } catch {
            return .notMsm(reason: "not an msm session: \(decoder.section): \(error)")
        }
    }
}

/// Reads a session value: the fields block, its embedded Java streams, the attributes.
struct MsmSessionDecoder {
    /// The fixed-size fields before the id: version … idLength (NUM_BYTES + 6).
    static let fixedFieldsLength = 44
    static let savedRequestObjectCount = 8
    static let trueByte = UInt8(ascii: "1")
    static let falseByte = UInt8(ascii: "0")

    let value: [UInt8]
    /// The part being read, for the `notMsm` reason.
    private(set) var section = "session fields"
    private var warnings: [String] = []

    init(value: [UInt8]) {
        self.value = value
    }

    mutating func decode() throws(SessionInspectionError) -> MsmSession {
        var cursor = ByteCursor(value)
        let version = try cursor.readInteger(Int16.self)
        guard version == 1 || version == 2 else {
            throw .malformed(offset: 0, detail: "format version \(version); msm writes 2 and also reads 1")
        }
        let fieldsLengthOffset = cursor.offset
        // msm reads all 2-byte lengths back as a signed short.
        let fieldsLength = Int(try cursor.readInteger(Int16.self))
        guard fieldsLength >= Self.fixedFieldsLength, fieldsLength <= value.count else {
            throw .malformed(offset: fieldsLengthOffset, detail: "fieldsLength \(fieldsLength) for a value of \(value.count) bytes")
        }
        let creationTime = try cursor.readInteger(Int64.self)
        let lastAccessedTime = try cursor.readInteger(Int64.self)
        let maxInactiveInterval = try cursor.readInteger(Int32.self)
        let isNew = try readBoolean(&cursor, field: "isNew")
        let isValid = try readBoolean(&cursor, field: "isValid")
        let thisAccessedTime = try cursor.readInteger(Int64.self)
        let lastBackupTime = try cursor.readInteger(Int64.self)
        for (name, time) in [("creationTime", creationTime), ("lastAccessedTime", lastAccessedTime),
                             ("thisAccessedTime", thisAccessedTime), ("lastBackupTime", lastBackupTime)]
        where !MsmValue.plausibleTimes.contains(time) {
            warnings.append("\(name) \(time) is not a plausible time")
        }

        let idOffset = cursor.offset
        let idBytes = try cursor.readBytes(try readLength(&cursor, field: "idLength"))
        guard let id = String(validating: idBytes, as: UTF8.self), !id.isEmpty else {
            throw .malformed(offset: idOffset, detail: "the session id is empty or not UTF-8")
        }
        if !Self.isStorableSessionID(id) {
            warnings.append("session id \(id) is not of the form msm stores (<id>-<node>[.<route>])")
        }

        let authTypeOffset = cursor.offset
        let authCode = try cursor.readInteger(UInt16.self)
        let authType: MsmAuthType?
        if authCode == 0 {
            authType = nil
        } else if let known = MsmAuthType(rawValue: authCode) {
            authType = known
        } else {
            throw .malformed(offset: authTypeOffset, detail: "auth type \(authCode); msm writes 0 to 4")
        }

        section = "principal"
        let principal = try readEmbeddedObjects(&cursor, count: 1, lengthField: "principalLength").first.map(MsmPrincipal.init)
        var savedRequest: MsmSavedRequest?
        var savedPrincipal: MsmPrincipal?
        if version == 2 {
            section = "saved request"
            let objects = try readEmbeddedObjects(&cursor, count: Self.savedRequestObjectCount, lengthField: "savedRequestLength")
            if objects.count == Self.savedRequestObjectCount {
                savedRequest = MsmSavedRequest(
                    body: objects[0], contentType: objects[1], headers: objects[2], locales: objects[3],
                    method: objects[4], queryString: objects[5], requestURI: objects[6], decodedRequestURI: objects[7]
                )
            }
            section = "saved principal"
            savedPrincipal = try readEmbeddedObjects(&cursor, count: 1, lengthField: "savedPrincipalLength").first.map(MsmPrincipal.init)
        }
        section = "session fields"
        guard cursor.offset == fieldsLength else {
            throw .malformed(offset: cursor.offset, detail: "the fields end here, but fieldsLength says \(fieldsLength)")
        }

        section = "attributes"
        let attributes = try readAttributes(from: fieldsLength)
        return MsmSession(
            version: Int(version), id: id, creationTime: creationTime, lastAccessedTime: lastAccessedTime,
            maxInactiveInterval: maxInactiveInterval, isNew: isNew, isValid: isValid, thisAccessedTime: thisAccessedTime,
            lastBackupTime: lastBackupTime, authType: authType, principal: principal, savedRequest: savedRequest,
            savedPrincipal: savedPrincipal, attributes: attributes, warnings: warnings
        )
    }

    /// msm writes booleans as the characters '1' and '0'.
    private func readBoolean(_ cursor: inout ByteCursor, field: String) throws(SessionInspectionError) -> Bool {
        let offset = cursor.offset
        switch try cursor.readByte() {
        case Self.trueByte: return true
        case Self.falseByte: return false
        case let byte: throw .malformed(offset: offset, detail: "\(field) is byte 0x\(hex(byte)); msm writes '0' or '1'")
        }
    }

    private func readLength(_ cursor: inout ByteCursor, field: String) throws(SessionInspectionError) -> Int {
        let offset = cursor.offset
        let length = Int(try cursor.readInteger(Int16.self))
        guard length >= 0 else {
            throw .malformed(offset: offset, detail: "negative \(field) \(length)")
        }
        return length
    }

    /// A length-prefixed section holding its own Java stream of `count` objects, or
    /// nothing when the length is 0.
    private mutating func readEmbeddedObjects(
        _ cursor: inout ByteCursor, count: Int, lengthField: String
    ) throws(SessionInspectionError) -> [JavaValue] {
        let length = try readLength(&cursor, field: lengthField)
        let start = cursor.offset
        try cursor.skip(length)
        guard length > 0 else { return [] }
        var reader = JavaStreamReader(value, range: start..<(start + length))
        try reader.readStreamHeader()
        var objects: [JavaValue] = []
        for _ in 0..<count {
            objects.append(try reader.readTopLevelObject())
        }
        if !reader.isAtEnd {
            warnings.append("\(Self.byteCount(reader.remaining)) after the objects of the \(section)")
        }
        return objects
    }

    /// The attributes block (FORMAT.md 3): one stream with the count, then name/value pairs.
    private mutating func readAttributes(from start: Int) throws(SessionInspectionError) -> [MsmAttribute] {
        var reader = JavaStreamReader(value, range: start..<value.count)
        try reader.readStreamHeader()
        let countOffset = reader.offset
        guard case .boxed(.int(let count)) = try reader.readTopLevelObject(), count >= 0 else {
            throw .malformed(offset: countOffset, detail: "the attribute count is not a non-negative java.lang.Integer")
        }
        // A name and a value take at least a byte each (references are 5).
        guard Int(count) * 2 <= reader.remaining else {
            throw .truncated(offset: reader.offset, needed: Int(count) * 2 - reader.remaining)
        }
        var attributes: [MsmAttribute] = []
        attributes.reserveCapacity(Int(count))
        for _ in 0..<count {
            let nameOffset = reader.offset
            guard case .string(let name) = try reader.readTopLevelObject() else {
                throw .malformed(offset: nameOffset, detail: "an attribute name is not a string")
            }
            do {
                let value = try reader.readTopLevelObject()
                if value == .string(MsmValue.notSerializableMarker) {
                    attributes.append(MsmAttribute(name: name, value: .unreadable(reason: "msm could not serialize it")))
                } else {
                    attributes.append(MsmAttribute(name: name, value: .readable(value)))
                }
            } catch {
                guard case .writeAborted(_, let exception) = error else { throw error }
                attributes.append(MsmAttribute(name: name, value: .unreadable(reason: "serializing it failed with \(exception)")))
                // msm then wrote its marker in place of the value; skip it.
                var lookahead = reader
                if (try? lookahead.readTopLevelObject()) == .string(MsmValue.notSerializableMarker) {
                    reader = lookahead
                }
            }
        }
        if !reader.isAtEnd {
            warnings.append("\(Self.byteCount(reader.remaining)) after the last attribute")
        }
        return attributes
    }

    static func byteCount(_ count: Int) -> String {
        count == 1 ? "1 byte" : "\(count) bytes"
    }

    /// msm stores only ids like `[^-.]+-[^.]+(\.[^.]+)?` (SessionIdFormat).
    static func isStorableSessionID(_ id: String) -> Bool {
        guard let dash = id.firstIndex(of: "-") else { return false }
        let base = id[..<dash]
        let rest = id[id.index(after: dash)...]
        guard !base.isEmpty, !base.contains("."), !rest.isEmpty else { return false }
        let parts = rest.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count <= 2 && parts.allSatisfy { !$0.isEmpty }
    }
}
