import Crypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The shared secret of a pair (`--secret-file`), and the proofs of
/// Protocol.md section 1.3 computed from it.
///
/// Both proofs bind both nonces, so a proof recorded on one connection is
/// worth nothing on another; the client's also binds its role, so a proof
/// made for a `tandemctl` connection cannot open a replication one.
public struct WireSecret: Sendable, CustomStringConvertible {
    /// Below this a secret is guessable offline from one recorded handshake.
    public static let minimumLength = 16
    /// A secret is a short random string; a larger file is a mistake (a wrong
    /// path, a device), and reading it all would only hide that.
    public static let maximumLength = 4096
    /// The connecting side's nonce in `hello`.
    public static let clientNonceLength = 16
    /// The accepting side's nonce in `helloOK`.
    public static let serverNonceLength = 32
    /// An HMAC-SHA256.
    public static let proofLength = 32

    private static let clientContext = Array("tandem-auth-v1".utf8)
    private static let serverContext = Array("tandem-auth-server-v1".utf8)

    /// The bytes, not a `SymmetricKey`: that type is not `Sendable` in every
    /// supported swift-crypto, and making one per proof costs nothing next to the HMAC.
    private let bytes: [UInt8]

    /// Never the secret itself, so that logging a configuration cannot leak it.
    public var description: String { "WireSecret(\(bytes.count) bytes)" }

    /// A secret from its bytes (tests, or an application holding the secret in memory).
    public init(bytes: some Collection<UInt8>) throws(WireAuthenticationError) {
        guard !bytes.isEmpty else { throw .empty(path: nil) }
        guard bytes.count >= Self.minimumLength else { throw .tooShort(path: nil, length: bytes.count) }
        self.bytes = Array(bytes)
    }

    /// Reads the secret from a file that only its owner may read. One trailing
    /// newline (`\n` or `\r\n`) is not part of the secret, so that
    /// `echo "$SECRET" > file` and editors that end files with one work.
    public init(contentsOfFile path: String) throws(WireAuthenticationError) {
        var contents = try Self.readPrivateFile(path)
        if contents.last == UInt8(ascii: "\n") {
            contents.removeLast()
            if contents.last == UInt8(ascii: "\r") { contents.removeLast() }
        }
        guard !contents.isEmpty else { throw .empty(path: path) }
        guard contents.count >= Self.minimumLength else { throw .tooShort(path: path, length: contents.count) }
        guard contents.count <= Self.maximumLength else { throw .tooLong(path: path) }
        self.bytes = contents
    }

    // MARK: Proofs

    /// `auth.proof`: HMAC-SHA256(secret, "tandem-auth-v1" ‖ helloOK.nonce ‖ hello.nonce ‖ role).
    public func clientProof(clientNonce: [UInt8], serverNonce: [UInt8], role: ConnectionRole) -> [UInt8] {
        var authentication = HMAC<SHA256>(key: SymmetricKey(data: bytes))
        authentication.update(data: Self.clientContext)
        authentication.update(data: serverNonce)
        authentication.update(data: clientNonce)
        authentication.update(data: [role.rawValue])
        return Array(authentication.finalize())
    }

    /// `authOK.proof`: HMAC-SHA256(secret, "tandem-auth-server-v1" ‖ hello.nonce ‖ helloOK.nonce).
    public func serverProof(clientNonce: [UInt8], serverNonce: [UInt8]) -> [UInt8] {
        var authentication = HMAC<SHA256>(key: SymmetricKey(data: bytes))
        authentication.update(data: Self.serverContext)
        authentication.update(data: clientNonce)
        authentication.update(data: serverNonce)
        return Array(authentication.finalize())
    }

    /// Whether `proof` is the connecting side's proof for these nonces and role, compared in constant time.
    public func isValidClientProof(_ proof: [UInt8], clientNonce: [UInt8], serverNonce: [UInt8], role: ConnectionRole) -> Bool {
        Self.constantTimeEqual(proof, clientProof(clientNonce: clientNonce, serverNonce: serverNonce, role: role))
    }

    /// Whether `proof` is the accepting side's proof for these nonces, compared in constant time.
    public func isValidServerProof(_ proof: [UInt8], clientNonce: [UInt8], serverNonce: [UInt8]) -> Bool {
        Self.constantTimeEqual(proof, serverProof(clientNonce: clientNonce, serverNonce: serverNonce))
    }

    /// Fresh random bytes for a nonce.
    public static func randomNonce(count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// Compares without an early exit, so the time taken does not tell how
    /// many leading bytes of a guess were right. Lengths are public (a proof
    /// is always 32 bytes), so a length mismatch may return at once.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices {
            difference |= a[index] ^ b[index]
        }
        return difference == 0
    }

    // MARK: Reading the file

    /// Opens once, then checks and reads through that descriptor, so the file
    /// whose mode was checked is the file that is read.
    private static func readPrivateFile(_ path: String) throws(WireAuthenticationError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .unreadable(path: path, reason: lastErrorDescription()) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .unreadable(path: path, reason: lastErrorDescription()) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .unreadable(path: path, reason: "not a regular file") }
        let mode = UInt32(status.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw .readableByOthers(path: path, mode: mode) }

        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: lastErrorDescription())
            }
            contents.append(contentsOf: chunk[0..<count])
            // Room for a trailing "\r\n"; the caller checks the length without it.
            guard contents.count <= Self.maximumLength + 2 else { throw .tooLong(path: path) }
        }
        return contents
    }

    private static func lastErrorDescription() -> String {
        String(cString: strerror(errno))
    }
}

/// Why a secret cannot be used. Each description is one line that names the
/// file and says what to do.
public enum WireAuthenticationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file cannot be opened or read.
    case unreadable(path: String, reason: String)
    /// Group or others may read (or write) the file.
    case readableByOthers(path: String, mode: UInt32)
    /// The file (or the bytes given) holds nothing but a newline, or nothing.
    case empty(path: String?)
    /// Fewer than `WireSecret.minimumLength` bytes.
    case tooShort(path: String?, length: Int)
    /// More than `WireSecret.maximumLength` bytes.
    case tooLong(path: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "cannot read the secret file \(path): \(reason)"
        case .readableByOthers(let path, let mode):
            return "the secret file \(path) is accessible to other users (mode \(Self.octal(mode))); run chmod 600 \(path)"
        case .empty(let path?):
            return "the secret file \(path) is empty; put at least \(WireSecret.minimumLength) random bytes in it (e.g. openssl rand -hex 32)"
        case .empty(nil):
            return "the shared secret is empty"
        case .tooShort(let path?, let length):
            return "the secret in \(path) is \(length) bytes long; it must be at least \(WireSecret.minimumLength) (e.g. openssl rand -hex 32)"
        case .tooShort(nil, let length):
            return "the shared secret is \(length) bytes long; it must be at least \(WireSecret.minimumLength)"
        case .tooLong(let path):
            return "the secret file \(path) is longer than \(WireSecret.maximumLength) bytes; is that the right file?"
        }
    }

    private static func octal(_ mode: UInt32) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
