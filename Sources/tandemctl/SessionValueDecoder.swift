import Foundation
import SessionInspection

/// What `sessions show` says about a value: memcached-session-manager's
/// formats decoded, or why the value is not one of them.
enum SessionValueDecoder {
    struct Description {
        let text: String
        /// For `--json`: the decoding as JSONSerialization takes it.
        let json: Any
    }

    static func describe(key: String, value: [UInt8]) -> Description {
        let decoding = MsmValue.decode(key: key, value: value)
        let json = (try? JSONSerialization.jsonObject(with: Data(decoding.json().jsonText.utf8), options: [.fragmentsAllowed])) ?? NSNull()
        return Description(text: "msm:\n" + decoding.renderedText().split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"), json: json)
    }
}
