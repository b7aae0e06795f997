import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// sd_notify(3) without libsystemd: tells the service manager (systemd with
/// `Type=notify`) that the node is ready, what it is doing, and that it is
/// stopping, by a datagram to the unix socket named in `NOTIFY_SOCKET`.
///
/// With `Type=notify`, units ordered after tandemd (a Tomcat that needs its
/// sessions) start only once `READY=1` arrives, which is sent once the
/// memcached port accepts connections: after recovery and after the node has
/// compared its data with its peer's. `NOTIFY_SOCKET` may name a path or an
/// abstract socket (`@name`, as systemd uses in containers).
public struct SystemdNotifier: Sendable {
    /// Why a notification could not be sent; the node runs on regardless.
    public enum Failure: Error, CustomStringConvertible, Sendable {
        case unsupportedAddress(String)
        case system(call: String, errno: Int32)

        public var description: String {
            switch self {
            case .unsupportedAddress(let address):
                return "NOTIFY_SOCKET=\(address) is neither a unix socket path nor an abstract name (@name)"
            case .system(let call, let code):
                return "\(call) failed: \(String(cString: strerror(code)))"
            }
        }
    }

    /// The socket address as `NOTIFY_SOCKET` gave it.
    public let address: String

    /// nil when `NOTIFY_SOCKET` is unset or empty: not started by systemd (or
    /// not as `Type=notify`), and there is nobody to tell.
    public static func fromEnvironment() -> SystemdNotifier? {
        guard let value = getenv("NOTIFY_SOCKET") else { return nil }
        let address = String(cString: value)
        return address.isEmpty ? nil : SystemdNotifier(address: address)
    }

    public init(address: String) {
        self.address = address
    }

    /// Sends `state`: newline-separated `KEY=value` lines (`READY=1`, `STATUS=…`, `STOPPING=1`).
    public func notify(_ state: String) throws(Failure) {
        // An abstract name starts with a NUL byte in the kernel's address and
        // is not NUL-terminated; a path is.
        var path = Array(address.utf8)
        let abstract = path.first == UInt8(ascii: "@")
        if abstract { path[0] = 0 }
        guard path.first == UInt8(ascii: "/") || abstract else { throw .unsupportedAddress(address) }
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: socketAddress.sun_path)
        guard path.count < capacity else { throw .unsupportedAddress(address) }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { bytes in
            bytes.copyBytes(from: path)
        }
        let length = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path).map { $0 + path.count + (abstract ? 0 : 1) }
            ?? MemoryLayout<sockaddr_un>.size

        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw .system(call: "socket", errno: errno) }
        defer { close(descriptor) }
        let message = Array(state.utf8)
        let sent = message.withUnsafeBytes { payload in
            withUnsafePointer(to: &socketAddress) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    sendto(descriptor, payload.baseAddress, payload.count, Int32(MSG_NOSIGNAL), address, socklen_t(length))
                }
            }
        }
        guard sent == message.count else { throw .system(call: "sendto", errno: sent < 0 ? errno : EMSGSIZE) }
    }
}

/// Tells systemd (`Type=notify`) how a node's life goes: `READY=1` once its
/// memcached port serves, `STOPPING=1` once graceful shutdown begins.
///
/// Runs after the node in the process's `ServiceGroup`, so that it is told
/// of the shutdown first and says `STOPPING=1` before the node drains.
public struct SystemdAnnouncer: Service {
    let node: TandemNode
    let systemd: SystemdNotifier?
    /// The memcached listener's address, for the `STATUS=` line.
    let host: String
    let logger: Logger

    public init(node: TandemNode, host: String, systemd: SystemdNotifier? = .fromEnvironment(), logger: Logger) {
        self.node = node
        self.systemd = systemd
        self.host = host
        self.logger = logger
    }

    public func run() async throws {
        let node = self.node
        // Units after this one start now; a node that never serves (it failed, or was stopped first) is not ready.
        if await cancelWhenGracefulShutdown({ await node.waitUntilServing() }) {
            notify("READY=1\nSTATUS=serving memcached on \(host):\(node.port)")
        }
        try? await gracefulShutdown()
        notify("STOPPING=1\nSTATUS=stopping: draining connections")
    }

    private func notify(_ state: String) {
        guard let systemd else { return }
        do {
            try systemd.notify(state)
        } catch {
            logger.warning("cannot notify systemd", metadata: ["error": "\(error)"])
        }
    }
}
