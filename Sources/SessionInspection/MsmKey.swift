/// What an msm key names, from its role prefix (FORMAT.md 1.2). The prefix is only a
/// hint: `MsmValue.decode` checks the value itself.
public struct MsmKey: Sendable, Hashable {
    public enum Role: Sendable, Hashable, CaseIterable {
        /// `P(<id>)`: the session.
        case session
        /// `validity:P(<id>)`: the session's validity record (non-sticky).
        case validity
        /// `bak:P(<id>)`: the secondary copy of the session that msm keeps on
        /// another memcached node (msm calls it the backup; not a Tandem backup node).
        case secondarySession
        /// `bak:P(validity:P(<id>))`: the secondary copy of the validity record.
        case secondaryValidity
        /// `lock:P(<id>)`: held while a request uses the session (non-sticky locking).
        case lock
        /// `P(ping-<nodeId>)`: read by msm to probe a node; msm never stores it.
        case nodeProbe
    }

    static let validityPrefix = "validity:"
    static let secondaryPrefix = "bak:"
    static let lockPrefix = "lock:"
    static let nodeProbePrefix = "ping-"
    /// msm's storage-key prefixes end in this (`StorageKeyFormat`).
    static let storagePrefixEnd: Character = "_"

    public var key: String
    public var role: Role
    /// The key without its role prefixes: `P(<id>)`, the session id with any storage
    /// prefix (`app1_<id>`) still on it; for `nodeProbe`, the whole key.
    public var sessionKey: String

    public init(_ key: String) {
        self.key = key
        if let rest = key.dropPrefix(Self.secondaryPrefix) {
            if let validity = Self.validitySessionKey(rest) {
                role = .secondaryValidity
                sessionKey = validity
            } else {
                role = .secondarySession
                sessionKey = rest
            }
        } else if let rest = key.dropPrefix(Self.validityPrefix) {
            role = .validity
            sessionKey = rest
        } else if let rest = key.dropPrefix(Self.lockPrefix) {
            role = .lock
            sessionKey = rest
        } else if Self.isNodeProbe(key) {
            role = .nodeProbe
            sessionKey = key
        } else {
            role = .session
            sessionKey = key
        }
    }

    /// Whether this key is where msm stores things for session `id`: its session key
    /// is the id, or the id after a storage prefix ending in `_`.
    public func names(sessionID id: String) -> Bool {
        guard role != .nodeProbe, !id.isEmpty, sessionKey.hasSuffix(id) else { return false }
        let prefix = sessionKey.dropLast(id.count)
        return prefix.isEmpty || prefix.last == Self.storagePrefixEnd
    }

    /// `validity:<key>` inside a secondary copy's key, with or without a storage prefix in front
    /// (`bak:validity:<id>`, `bak:app1_validity:app1_<id>`).
    private static func validitySessionKey(_ rest: String) -> String? {
        if let key = rest.dropPrefix(validityPrefix) { return key }
        guard let underscore = rest.firstIndex(of: storagePrefixEnd) else { return nil }
        return String(rest[rest.index(after: underscore)...]).dropPrefix(validityPrefix)
    }

    /// `ping-<node>` or `<prefix>_ping-<node>`.
    private static func isNodeProbe(_ key: String) -> Bool {
        if key.hasPrefix(nodeProbePrefix) { return true }
        guard let underscore = key.firstIndex(of: storagePrefixEnd) else { return false }
        return key[key.index(after: underscore)...].hasPrefix(nodeProbePrefix)
    }
}

extension String {
    /// The rest after `prefix`, or nil if the string does not start with it.
    fileprivate func dropPrefix(_ prefix: String) -> String? {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : nil
    }
}
