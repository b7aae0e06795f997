/// Why bytes could not be decoded. Every throwing function of this module throws this
/// type and nothing else. Offsets count from the start of the bytes handed to the
/// decoder (for an msm value: from the start of the value, not of the embedded stream).
public enum SessionInspectionError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The input ends before something it announces: `needed` more bytes at `offset`.
    case truncated(offset: Int, needed: Int)
    /// The bytes at `offset` do not follow the format; `detail` says which rule they break.
    case malformed(offset: Int, detail: String)
    /// Decoding would pass one of the limits that keep the decoder's time, memory and
    /// stack bounded (nesting depth, handle count); `detail` names the limit.
    case limitExceeded(offset: Int, detail: String)
    /// Valid Java serialization that this decoder does not read, such as the data of an
    /// `Externalizable` class written with stream protocol version 1.
    case unsupported(offset: Int, detail: String)
    /// The writer gave up on an object and wrote `TC_EXCEPTION` with the exception that
    /// stopped it (what `ObjectOutputStream` does when a `writeObject` fails, e.g. with
    /// `NotSerializableException`). `exception` is its class and message.
    case writeAborted(offset: Int, exception: String)

    /// Where in the input the problem was found.
    public var offset: Int {
        switch self {
        case .truncated(let offset, _), .malformed(let offset, _), .limitExceeded(let offset, _),
            .unsupported(let offset, _), .writeAborted(let offset, _):
            return offset
        }
    }

    public var description: String {
        switch self {
        case .truncated(let offset, let needed):
            return "input ends at offset \(offset) where \(needed) more byte\(needed == 1 ? "" : "s") are needed"
        case .malformed(let offset, let detail):
            return "malformed at offset \(offset): \(detail)"
        case .limitExceeded(let offset, let detail):
            return "limit exceeded at offset \(offset): \(detail)"
        case .unsupported(let offset, let detail):
            return "unsupported at offset \(offset): \(detail)"
        case .writeAborted(let offset, let exception):
            return "the writer aborted at offset \(offset) with \(exception)"
        }
    }
}
