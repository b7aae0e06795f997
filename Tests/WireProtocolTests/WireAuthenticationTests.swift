import Crypto
import Foundation
import Testing
import WireProtocol

/// The shared secret and the proofs of Protocol.md 1.3.
@Suite("Wire authentication")
struct WireAuthenticationTests {
    let secretBytes = Array("0123456789abcdef0123456789abcdef".utf8)
    let clientNonce = Array(UInt8(0x00)...UInt8(0x0F))
    let serverNonce = Array(UInt8(0x20)...UInt8(0x3F))

    /// HMAC-SHA256 over the concatenation, spelled out independently of `WireSecret`.
    func hmac(_ parts: [UInt8]...) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: parts.flatMap { $0 }, using: SymmetricKey(data: secretBytes)))
    }

    func hex(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    @Test("the proofs are the HMACs Protocol.md specifies")
    func proofsMatchTheSpecification() throws {
        let secret = try WireSecret(bytes: secretBytes)
        for role in [ConnectionRole.client, .peer] {
            let expected = hmac(Array("tandem-auth-v1".utf8), serverNonce, clientNonce, [role.rawValue])
            #expect(secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: role) == expected)
        }
        let expectedServer = hmac(Array("tandem-auth-server-v1".utf8), clientNonce, serverNonce)
        #expect(secret.serverProof(clientNonce: clientNonce, serverNonce: serverNonce) == expectedServer)
    }

    @Test("known answers (computed with Python's hmac module) pin the construction")
    func knownAnswers() throws {
        let secret = try WireSecret(bytes: secretBytes)
        #expect(hex(secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .peer))
            == "3cae27305697929d75dad7efc802703882a8043d9b3deb02445756118e7b3853")
        #expect(hex(secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .client))
            == "9254d7aa16177f2d34120a9a17f5e79046b700cfa012c45cbfcc9c74108238d1")
        #expect(hex(secret.serverProof(clientNonce: clientNonce, serverNonce: serverNonce))
            == "eff999a257772a2141b019945b779c68a8cab2239a8d6afc0adcbfd743b1baf0")
    }

    @Test("verification accepts the right proof and rejects any flipped bit, other lengths, other nonces, roles or secrets")
    func verification() throws {
        let secret = try WireSecret(bytes: secretBytes)
        let client = secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .peer)
        let server = secret.serverProof(clientNonce: clientNonce, serverNonce: serverNonce)
        #expect(client.count == WireSecret.proofLength && server.count == WireSecret.proofLength)
        #expect(secret.isValidClientProof(client, clientNonce: clientNonce, serverNonce: serverNonce, role: .peer))
        #expect(secret.isValidServerProof(server, clientNonce: clientNonce, serverNonce: serverNonce))

        for bit in 0..<(client.count * 8) {
            var flipped = client
            flipped[bit / 8] ^= 1 << (bit % 8)
            #expect(!secret.isValidClientProof(flipped, clientNonce: clientNonce, serverNonce: serverNonce, role: .peer))
            var flippedServer = server
            flippedServer[bit / 8] ^= 1 << (bit % 8)
            #expect(!secret.isValidServerProof(flippedServer, clientNonce: clientNonce, serverNonce: serverNonce))
        }
        for proof in [[], Array(client.dropLast()), client + [0], [UInt8](repeating: 0, count: 32)] {
            #expect(!secret.isValidClientProof(proof, clientNonce: clientNonce, serverNonce: serverNonce, role: .peer))
            #expect(!secret.isValidServerProof(proof, clientNonce: clientNonce, serverNonce: serverNonce))
        }
        // The client's proof is not the server's, and is bound to its role and both nonces.
        #expect(!secret.isValidServerProof(client, clientNonce: clientNonce, serverNonce: serverNonce))
        #expect(!secret.isValidClientProof(client, clientNonce: clientNonce, serverNonce: serverNonce, role: .client))
        #expect(!secret.isValidClientProof(client, clientNonce: serverNonce.prefix(16).map { $0 }, serverNonce: serverNonce, role: .peer))
        #expect(!secret.isValidClientProof(client, clientNonce: clientNonce, serverNonce: clientNonce + clientNonce, role: .peer))
        let other = try WireSecret(bytes: Array("0123456789abcdef0123456789abcdeF".utf8))
        #expect(!other.isValidClientProof(client, clientNonce: clientNonce, serverNonce: serverNonce, role: .peer))
    }

    @Test("nonces are fresh")
    func nonces() {
        let a = WireSecret.randomNonce(count: WireSecret.serverNonceLength)
        let b = WireSecret.randomNonce(count: WireSecret.serverNonceLength)
        #expect(a.count == 32 && b.count == 32 && a != b)
    }

    @Test("a secret never shows in its description")
    func description() throws {
        let secret = try WireSecret(bytes: secretBytes)
        #expect("\(secret)" == "WireSecret(32 bytes)")
    }

    // MARK: Files

    /// A fresh directory for one test, removed afterwards.
    func withDirectory(_ body: (URL) throws -> Void) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-secret-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try body(directory)
    }

    func write(_ contents: [UInt8], to url: URL, mode: Int = 0o600) throws {
        try Data(contents).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
    }

    func loadError(_ path: String) -> WireAuthenticationError? {
        do {
            _ = try WireSecret(contentsOfFile: path)
            return nil
        } catch {
            return error
        }
    }

    @Test("a file's secret is its bytes less one trailing newline")
    func loadsAFile() throws {
        let expected = try WireSecret(bytes: secretBytes).clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .peer)
        try withDirectory { directory in
            for (name, contents) in [("plain", secretBytes), ("lf", secretBytes + [0x0A]), ("crlf", secretBytes + [0x0D, 0x0A])] {
                let url = directory.appendingPathComponent(name)
                try write(contents, to: url)
                let secret = try WireSecret(contentsOfFile: url.path)
                #expect(secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .peer) == expected, "\(name)")
            }
            // Only one newline goes: a second is part of the secret.
            let twice = directory.appendingPathComponent("twice")
            try write(secretBytes + [0x0A, 0x0A], to: twice)
            let secret = try WireSecret(contentsOfFile: twice.path)
            #expect(secret.clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: .peer) != expected)
            // Owner read-only is fine too.
            let readOnly = directory.appendingPathComponent("read-only")
            try write(secretBytes, to: readOnly, mode: 0o400)
            #expect(loadError(readOnly.path) == nil)
        }
    }

    @Test("too short, empty and too long secrets are refused with a message naming the file")
    func refusesBadLengths() throws {
        try withDirectory { directory in
            let short = directory.appendingPathComponent("short")
            try write(Array("fifteen-bytes!!\n".utf8), to: short)
            #expect(loadError(short.path) == .tooShort(path: short.path, length: 15))
            #expect(loadError(short.path)?.description.contains(short.path) == true)
            #expect(loadError(short.path)?.description.contains("at least 16") == true)

            let sixteen = directory.appendingPathComponent("sixteen")
            try write(Array("sixteen-bytes!!!".utf8), to: sixteen)
            #expect(loadError(sixteen.path) == nil)

            let empty = directory.appendingPathComponent("empty")
            try write([], to: empty)
            #expect(loadError(empty.path) == .empty(path: empty.path))
            let newline = directory.appendingPathComponent("newline")
            try write([0x0A], to: newline)
            #expect(loadError(newline.path) == .empty(path: newline.path))

            let long = directory.appendingPathComponent("long")
            try write([UInt8](repeating: 0x61, count: WireSecret.maximumLength + 1), to: long)
            #expect(loadError(long.path) == .tooLong(path: long.path))
        }
        #expect(throws: WireAuthenticationError.tooShort(path: nil, length: 3)) { try WireSecret(bytes: [1, 2, 3]) }
        #expect(throws: WireAuthenticationError.empty(path: nil)) { try WireSecret(bytes: []) }
    }

    @Test("a file group or others may read is refused, telling to chmod 600")
    func refusesReadableByOthers() throws {
        try withDirectory { directory in
            for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
                let url = directory.appendingPathComponent("secret-\(String(mode, radix: 8))")
                try write(secretBytes, to: url, mode: mode)
                let error = loadError(url.path)
                #expect(error == .readableByOthers(path: url.path, mode: UInt32(mode)))
                let text = error?.description ?? ""
                #expect(text.contains("chmod 600 \(url.path)") && text.contains("0\(String(mode, radix: 8))"), "\(text)")
                #expect(!text.contains("\n"))
            }
        }
    }

    @Test("a missing file or a directory is unreadable, with the path and the reason")
    func refusesMissingFiles() throws {
        try withDirectory { directory in
            let missing = directory.appendingPathComponent("missing").path
            guard case .unreadable(let path, let reason) = loadError(missing) else {
                Issue.record("expected unreadable, got \(String(describing: loadError(missing)))")
                return
            }
            #expect(path == missing && reason.lowercased().contains("no such file"))
            #expect(loadError(missing)?.description == "cannot read the secret file \(missing): \(reason)")

            let folder = directory.appendingPathComponent("folder")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false)
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: folder.path)
            #expect(loadError(folder.path) == .unreadable(path: folder.path, reason: "not a regular file"))
        }
    }
}
