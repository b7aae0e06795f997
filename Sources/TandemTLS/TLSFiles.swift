import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A certificate chain and the private key it was issued for, read from
/// `--tls-cert` and `--tls-key` and checked against each other.
public struct TLSIdentity: Sendable {
    public let certificatePath: String
    public let keyPath: String
    let chain: [NIOSSLCertificate]
    let key: NIOSSLPrivateKey
    /// Things worth saying that do not stop the node (an expired certificate,
    /// a key others may read).
    public let warnings: [String]

    /// Reads both files and checks that the key belongs to the certificate.
    public static func load(certificate certificatePath: String, key keyPath: String) throws(TLSSetupError) -> TLSIdentity {
        let chain = try PEMFile.certificates(flag: "--tls-cert", path: certificatePath)
        let keyBytes = try PEMFile.contents(flag: "--tls-key", path: keyPath)
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: keyBytes.contents, format: .pem)
        } catch {
            if keyBytes.text.contains("ENCRYPTED") { throw .encryptedKey(flag: "--tls-key", path: keyPath) }
            let hint = keyBytes.text.contains("BEGIN CERTIFICATE") ? "it holds a certificate: is it the --tls-cert file?" : nil
            throw .notPEM(flag: "--tls-key", path: keyPath, expected: "private key (-----BEGIN PRIVATE KEY-----)", hint: hint)
        }
        // BoringSSL checks the key against the leaf certificate when both go
        // into one context: a mismatch fails there and nowhere else.
        do {
            _ = try NIOSSLContext(configuration: .makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key)
            ))
        } catch NIOSSLError.failedToLoadPrivateKey {
            throw .keyMismatch(certificate: certificatePath, key: keyPath)
        } catch {
            throw .unusable(reason: "--tls-cert \(certificatePath) with --tls-key \(keyPath): \(error)")
        }
        var warnings: [String] = []
        if let leaf = chain.first {
            let now = time(nil)
            if leaf.notValidAfter < now {
                warnings.append("--tls-cert \(certificatePath): the certificate expired (\(Self.date(leaf.notValidAfter))); peers will refuse it")
            } else if leaf.notValidBefore > now {
                warnings.append("--tls-cert \(certificatePath): the certificate is not valid before \(Self.date(leaf.notValidBefore)); is the clock right?")
            }
        }
        if keyBytes.mode & 0o007 != 0 {
            warnings.append("--tls-key \(keyPath): the private key is readable by every user; chmod 600 it (or 640 with the service's group)")
        }
        return TLSIdentity(certificatePath: certificatePath, keyPath: keyPath, chain: chain, key: key, warnings: warnings)
    }

    private static func date(_ seconds: time_t) -> String {
        var time = seconds
        var parts = tm()
        gmtime_r(&time, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The certificates a peer's chain must lead to: `--tls-ca`, a PEM bundle.
public struct TLSTrust: Sendable {
    public let path: String
    let roots: [NIOSSLCertificate]

    public static func load(ca path: String, flag: String = "--tls-ca") throws(TLSSetupError) -> TLSTrust {
        TLSTrust(path: path, roots: try PEMFile.certificates(flag: flag, path: path))
    }
}

/// Reading PEM files with errors that name the flag and the file.
enum PEMFile {
    /// Certificates and keys are a few KB; a CA bundle a few hundred.
    static let maximumSize = 4 << 20

    struct Contents {
        var contents: [UInt8]
        /// The permission bits, for the private key's warning.
        var mode: UInt32
        var text: String { String(decoding: contents, as: UTF8.self) }
    }

    static func certificates(flag: String, path: String) throws(TLSSetupError) -> [NIOSSLCertificate] {
        let file = try contents(flag: flag, path: path)
        let certificates = try? NIOSSLCertificate.fromPEMBytes(file.contents)
        guard let certificates, !certificates.isEmpty else {
            let hint = file.text.contains("PRIVATE KEY") ? "it holds a private key: is it the --tls-key file?" : nil
            throw .notPEM(flag: flag, path: path, expected: "certificate (-----BEGIN CERTIFICATE-----)", hint: hint)
        }
        return certificates
    }

    static func contents(flag: String, path: String) throws(TLSSetupError) -> Contents {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .unreadable(flag: flag, path: path, reason: lastError()) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .unreadable(flag: flag, path: path, reason: lastError()) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .unreadable(flag: flag, path: path, reason: "not a regular file") }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(flag: flag, path: path, reason: lastError())
            }
            contents.append(contentsOf: chunk[0..<count])
            guard contents.count <= maximumSize else {
                throw .unreadable(flag: flag, path: path, reason: "larger than \(maximumSize >> 20) MB; is that the right file?")
            }
        }
        return Contents(contents: contents, mode: UInt32(status.st_mode) & 0o777)
    }

    private static func lastError() -> String {
        String(cString: strerror(errno))
    }
}
