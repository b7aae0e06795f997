/// Why the TLS files given to `tandemd` or `tandemctl` cannot be used. Each
/// description is one line that names the flag and the file and says what to
/// do, so that a bad configuration stops a node with a message an operator
/// can act on.
public enum TLSSetupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file cannot be opened or read (missing, a directory, no permission).
    case unreadable(flag: String, path: String, reason: String)
    /// The file holds no PEM block of the kind the flag takes.
    case notPEM(flag: String, path: String, expected: String, hint: String?)
    /// The private key is encrypted; a node starts unattended, so it cannot ask for a passphrase.
    case encryptedKey(flag: String, path: String)
    /// The private key is not the one the certificate was issued for.
    case keyMismatch(certificate: String, key: String)
    /// BoringSSL refused the combination for another reason.
    case unusable(reason: String)

    public var description: String {
        switch self {
        case .unreadable(let flag, let path, let reason):
            return "\(flag) \(path): cannot read the file: \(reason)"
        case .notPEM(let flag, let path, let expected, let hint):
            return "\(flag) \(path): not a PEM \(expected)" + (hint.map { " (\($0))" } ?? "")
        case .encryptedKey(let flag, let path):
            return "\(flag) \(path): the private key is encrypted; tandemd cannot ask for a passphrase: decrypt it with `openssl pkey -in \(path) -out KEY` and keep KEY chmod 600"
        case .keyMismatch(let certificate, let key):
            return "--tls-key \(key) does not belong to the certificate in --tls-cert \(certificate): give the key the certificate was issued for"
        case .unusable(let reason):
            return "cannot set up TLS: \(reason)"
        }
    }
}
