// libFuzzer harness for SessionInspection: msm value decoding and the Java
// serialization reader. Not part of the SwiftPM package: Tests/fuzz/run.sh msm
// compiles it against the SessionInspection target built with
// `--sanitize=fuzzer --sanitize=address` and runs it.
//
// Input layout: byte 0 picks the key the value is decoded under (none, a session
// key, validity:, bak:, bak:validity:, lock:, ping-), the rest is the value.
//
// Checked for every input:
// - no crash, trap or memory error (ASan); typed throws guarantee only
//   `SessionInspectionError` comes out of the stream reader;
// - both renderings (text and JSON) of every answer can be built, and a
//   `notMsm` answer always has a reason;
// - the text rendering never contains an ESC or other C0 control but newline.

import SessionInspection

let sessionID = "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1"
let keys: [String?] = [
    nil, sessionID, "validity:" + sessionID, "bak:" + sessionID, "bak:validity:" + sessionID, "lock:" + sessionID, "ping-n1",
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let key = keys[Int(input[0]) % keys.count]
    let value = Array(input.dropFirst())

    let decoding = MsmValue.decode(key: key, value: value)
    let text = decoding.renderedText()
    _ = decoding.json().jsonText
    if case .notMsm(let reason) = decoding, reason.isEmpty {
        fatalError("notMsm without a reason")
    }
    for scalar in text.unicodeScalars where scalar.value < 0x20 && scalar != "\n" {
        fatalError("control character U+\(String(scalar.value, radix: 16)) in the text rendering")
    }

    if let objects = try? JavaObjectStream.readObjects(from: value) {
        for object in objects {
            _ = object.renderedText()
            _ = object.json().jsonText
        }
    }
    return 0
}
