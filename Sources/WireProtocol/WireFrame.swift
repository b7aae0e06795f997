import NIOCore

/// One frame of Tandem's wire protocol (Protocol.md 1.1):
///
///     length u32 | type u16 | flags u16 | request id u32 | body (length - 8 bytes)
///
/// `length` is not stored: it is always `8 + body.readableBytes`.
public struct WireFrame: Sendable, Hashable {
    /// The message type (`WireMessageType`); kept raw so that a frame of an unknown
    /// type can still be received and answered with `error` `unknownMessage`.
    public var type: UInt16
    /// Bit 0 is `Flags.response`; bits 1–15 are reserved (sent as 0, ignored on receipt).
    public var flags: UInt16
    /// Chosen by the sender of a request and echoed in its response; 0 for unsolicited frames.
    public var requestID: UInt32
    /// The body. A received frame's body is a slice of the receive buffer (no copy).
    public var body: ByteBuffer

    public init(type: UInt16, flags: UInt16 = 0, requestID: UInt32 = 0, body: ByteBuffer) {
        self.type = type
        self.flags = flags
        self.requestID = requestID
        self.body = body
    }

    public init(type: WireMessageType, flags: UInt16 = 0, requestID: UInt32 = 0, body: ByteBuffer) {
        self.init(type: type.rawValue, flags: flags, requestID: requestID, body: body)
    }

    /// A frame carrying `message`, its body encoded into a new buffer.
    public init(_ message: WireMessage, flags: UInt16 = 0, requestID: UInt32 = 0) {
        var body = ByteBuffer()
        body.reserveCapacity(message.encodedBodySize)
        message.encodeBody(into: &body)
        self.init(type: message.type.rawValue, flags: flags, requestID: requestID, body: body)
    }

    /// Parses the body as the message its type names.
    public func message() throws(WireProtocolError) -> WireMessage {
        try WireMessage(type: type, body: body)
    }

    /// The known type of this frame, or `nil`.
    public var messageType: WireMessageType? { WireMessageType(rawValue: type) }

    /// Whether the `RESPONSE` flag is set.
    public var isResponse: Bool {
        get { flags & Flags.response != 0 }
        set { flags = newValue ? flags | Flags.response : flags & ~Flags.response }
    }

    /// The value of this frame's `length` field: the bytes after it.
    public var length: Int { Self.minimumFrameLength + body.readableBytes }

    // MARK: Constants

    /// Flag bits of the `flags` field.
    public enum Flags {
        /// The frame answers the request with the same request id.
        public static let response: UInt16 = 1 << 0
    }

    /// Size of the `length` field.
    public static let lengthFieldSize = 4
    /// Size of everything before the body: `length`, `type`, `flags`, `request id`.
    public static let headerSize = 12
    /// The smallest valid `length`: the 8 bytes of type, flags and request id after it.
    public static let minimumFrameLength = 8
    /// The largest valid `length` (16 MiB), counting the 8 bytes of type, flags and request id.
    public static let maximumFrameLength = 16 * 1024 * 1024
    /// The largest body a frame can carry.
    public static let maximumBodySize = maximumFrameLength - minimumFrameLength
    /// The largest value a node may accept (tandemd's ceiling for `-I`): half
    /// a frame, so that a replicated or exported item always fits one frame
    /// with its key and fields, and a scan page can always take one more.
    public static let largestItemValue = maximumFrameLength / 2
}

/// Message type numbers (Protocol.md 1.4).
public enum WireMessageType: UInt16, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case hello = 0x0001
    case helloOK = 0x0002
    case auth = 0x0003
    case authOK = 0x0004
    case error = 0x0005
    case ping = 0x0010
    case pong = 0x0011
    case replicate = 0x0020
    case fullResync = 0x0021
    case snapshotChunk = 0x0022
    case snapshotEnd = 0x0023
    case partialResync = 0x0024
    case changes = 0x0025
    case ack = 0x0026
    case reconcile = 0x0027
    case reconcileFrom = 0x0028
    case reconcileChunk = 0x0029
    case reconcileEnd = 0x002A
    case reconcileDone = 0x002B
    case forward = 0x0030
    case forwardReply = 0x0031
    case statusRequest = 0x0040
    case statsRequest = 0x0041
    case properties = 0x0042
    case promote = 0x0050
    case demote = 0x0051
    case roleChanged = 0x0052
    case pairStatus = 0x0053
    case pairStatusReply = 0x0054
    case scan = 0x0060
    case scanPage = 0x0061
    case inspect = 0x0062
    case deleteKeys = 0x0063
    case deleteResult = 0x0064
    case importItems = 0x0065
    case importResult = 0x0066
    case importReport = 0x0067
    case backup = 0x0070
    case backupDone = 0x0071
    case watch = 0x0080
    case watchEvent = 0x0081
    case get = 0x0090
    case items = 0x0091
    case store = 0x0092
    case touch = 0x0093
    case delete = 0x0094
    case writeResult = 0x0095

    /// The name Protocol.md uses, e.g. `helloOK`.
    public var name: String {
        switch self {
        case .hello: return "hello"
        case .helloOK: return "helloOK"
        case .auth: return "auth"
        case .authOK: return "authOK"
        case .error: return "error"
        case .ping: return "ping"
        case .pong: return "pong"
        case .replicate: return "replicate"
        case .fullResync: return "fullResync"
        case .snapshotChunk: return "snapshotChunk"
        case .snapshotEnd: return "snapshotEnd"
        case .partialResync: return "partialResync"
        case .changes: return "changes"
        case .ack: return "ack"
        case .reconcile: return "reconcile"
        case .reconcileFrom: return "reconcileFrom"
        case .reconcileChunk: return "reconcileChunk"
        case .reconcileEnd: return "reconcileEnd"
        case .reconcileDone: return "reconcileDone"
        case .forward: return "forward"
        case .forwardReply: return "forwardReply"
        case .statusRequest: return "statusRequest"
        case .promote: return "promote"
        case .demote: return "demote"
        case .roleChanged: return "roleChanged"
        case .pairStatus: return "pairStatus"
        case .pairStatusReply: return "pairStatusReply"
        case .scan: return "scan"
        case .scanPage: return "scanPage"
        case .inspect: return "inspect"
        case .deleteKeys: return "deleteKeys"
        case .deleteResult: return "deleteResult"
        case .importItems: return "importItems"
        case .importResult: return "importResult"
        case .importReport: return "importReport"
        case .backup: return "backup"
        case .backupDone: return "backupDone"
        case .watch: return "watch"
        case .watchEvent: return "watchEvent"
        case .get: return "get"
        case .items: return "items"
        case .store: return "store"
        case .touch: return "touch"
        case .delete: return "delete"
        case .writeResult: return "writeResult"
        case .statsRequest: return "statsRequest"
        case .properties: return "properties"
        }
    }

    /// `name (0x0010)`.
    public var description: String { "\(name) (\(Self.hex(rawValue)))" }

    /// `0x0010`: a type number as Protocol.md writes it.
    public static func hex(_ type: UInt16) -> String {
        let digits = String(type, radix: 16)
        return "0x" + String(repeating: "0", count: 4 - digits.count) + digits
    }
}
