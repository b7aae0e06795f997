import Foundation
import SessionInspection
import TandemTestSupport
import Testing

// MARK: Fixtures

/// Session values msm stored in a real memcached, recorded in
/// `Tests/fixtures/msm` (its README.md says how).
enum Fixtures {
    /// `<package root>/Tests/fixtures/msm`, from this file's path.
    static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // SessionInspectionTests
        .deletingLastPathComponent()  // Tests
        .appendingPathComponent("fixtures/msm", isDirectory: true)

    struct Missing: Error, CustomStringConvertible {
        let path: String
        var description: String {
            "msm fixture \(path) not found (Tests/fixtures/msm)"
        }
    }

    /// The bytes of a fixture; throws (failing the test) when it is not there.
    static func bytes(_ name: String) throws -> [UInt8] {
        let url = directory.appendingPathComponent(name)
        guard let data = FileManager.default.contents(atPath: url.path) else { throw Missing(path: url.path) }
        return Array(data)
    }

    static func text(_ name: String) throws -> String {
        String(decoding: try bytes(name), as: UTF8.self)
    }

    /// Every `.bin` file with the key msm stored it under (MANIFEST.md's file table).
    static let keys: [String: String] = [
        "session-rich-attributes.bin": "FF19EF1C768E388FBA4D7B9FCF64E56A-n2",
        "validity-rich-attributes.bin": "validity:FF19EF1C768E388FBA4D7B9FCF64E56A-n2",
        "bak-session-rich-attributes.bin": "bak:FF19EF1C768E388FBA4D7B9FCF64E56A-n2",
        "bak-validity-rich-attributes.bin": "bak:validity:FF19EF1C768E388FBA4D7B9FCF64E56A-n2",
        "session-empty.bin": "744B82AFE666E0B0B555328A49C2F328-n2",
        "validity-empty.bin": "validity:744B82AFE666E0B0B555328A49C2F328-n2",
        "session-seed-counter.bin": "0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1",
        "validity-seed-counter.bin": "validity:0C6E0AAF2B3C363BEBEEFF21A5F6588E-n1",
        "session-no-timeout.bin": "41A03ADC0C47957C465E9F091BC819BA-n1",
        "validity-no-timeout.bin": "validity:41A03ADC0C47957C465E9F091BC819BA-n1",
        "session-sticky-seed-counter.bin": "E9B35F20CE79117ED69183A649B14E70-n1.A",
        "session-auth-basic.bin": "28C4917F2AE9D61DC00B5627A5DAD466-n2",
        "session-form-saved-request.bin": "7A2C4884E8C755D1B0EAB63A1D6CF09A-n1",
        "session-form-login-pending.bin": "27EE33679F01D8BAEAA845FCFE4AFB9B-n2",
        "session-auth-form.bin": "27EE33679F01D8BAEAA845FCFE4AFB9B-n2",
        "session-saved-principal-note.bin": "F64FD2A863D614C7FB2E00C7CDDD0CFD-n2",
        "lock.bin": "lock:92CDD641EC385A7B3D099099D80985A3-n1",
        "ping-marker-session-key.bin": "A00EABA537DDC095C49E5CD98628F417-n2",
    ]

    static let names: [String] = keys.keys.sorted()
}

// MARK: Random numbers

// SplitMix64 and its draws: TandemTestSupport.

// MARK: Values

/// Bytes from hex digits; whitespace is ignored.
func bytes(hex: String) -> [UInt8] {
    let digits = Array(hex.utf8.filter { !($0 == 0x20 || $0 == 0x0A) })
    precondition(digits.count % 2 == 0, "odd number of hex digits")
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0...$0 + 1], as: UTF8.self), radix: 16)! }
}

extension MsmDecoding {
    var session: MsmSession? {
        if case .session(let session) = self { return session }
        return nil
    }

    var validity: MsmValidity? {
        if case .validity(let validity) = self { return validity }
        return nil
    }

    var notMsmReason: String? {
        if case .notMsm(let reason) = self { return reason }
        return nil
    }
}

extension Fixtures {
    /// The `.bin` files in the fixture directory; throws if the directory is missing.
    static func binFilesOnDisk() throws -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else {
            throw Missing(path: directory.path)
        }
        return names.filter { $0.hasSuffix(".bin") }.sorted()
    }
}
