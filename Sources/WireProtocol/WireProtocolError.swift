/// Everything that can go wrong while framing or parsing Tandem's wire protocol
/// (Protocol.md sections 1.1 and 1.2). Every decoding entry point of this module
/// throws this type and nothing else.
///
/// None of these errors is recoverable on the connection it happened on: the
/// stream is out of frame or the peer does not speak the protocol, so the
/// connection must be closed (after sending `error` where `wireErrorCode` says so).
public enum WireProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A frame's `length` field is below 8 (the type, flags and request id it must count).
    case frameTooShort
    /// A frame's `length` field (or the length a frame being encoded would need) is over
    /// `WireFrame.maximumFrameLength`. Thrown before any of the body is buffered.
    case frameTooLarge(length: UInt32)
    /// The connection ended in the middle of a frame.
    case truncatedFrame
    /// A frame's body does not parse as its message type (section 1.2): it ends early,
    /// has bytes left over, a length or count runs past its end, an enumerated field
    /// has a value the protocol does not define, or a `string` is not UTF-8.
    /// The text says which message and field.
    case malformed(String)
    /// A frame of a type this implementation does not know.
    case unknownMessageType(UInt16)

    public var description: String {
        switch self {
        case .frameTooShort:
            return "wire frame length below the minimum of \(WireFrame.minimumFrameLength) bytes"
        case .frameTooLarge(let length):
            return "wire frame length \(length) over the maximum of \(WireFrame.maximumFrameLength) bytes"
        case .truncatedFrame:
            return "connection ended inside a wire frame"
        case .malformed(let detail):
            return "malformed wire message: \(detail)"
        case .unknownMessageType(let type):
            return "unknown wire message type \(WireMessageType.hex(type))"
        }
    }

    /// The `error` code a node sends before closing the connection (Protocol.md 1.1,
    /// 1.2, 1.4), or `nil` when there is nobody left to tell (a truncated frame: the
    /// peer closed its end). A frame length out of bounds is answered `malformed`
    /// like a body that does not parse: the header's type and request id were not
    /// read, so the answer is unsolicited (request id 0, no `RESPONSE` flag).
    public var wireErrorCode: WireErrorCode? {
        switch self {
        case .frameTooShort, .frameTooLarge, .malformed: return .malformed
        case .truncatedFrame: return nil
        case .unknownMessageType: return .unknownMessage
        }
    }
}
