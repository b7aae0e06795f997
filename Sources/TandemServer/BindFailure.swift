import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The listeners a node binds, each named by the flag that sets its port, so
/// that a failure to bind says which setting to change.
public enum Listener: Sendable, Equatable {
    /// The memcached protocol (`--port`).
    case memcached
    /// Tandem's wire protocol (`--wire-port`).
    case wire
    /// HTTP metrics and health (`--metrics-port`).
    case metrics

    /// How the operator knows it.
    var name: String {
        switch self {
        case .memcached: return "memcached port"
        case .wire: return "wire port"
        case .metrics: return "metrics port"
        }
    }

    /// The flag that sets its port.
    var flag: String {
        switch self {
        case .memcached: return "--port"
        case .wire: return "--wire-port"
        case .metrics: return "--metrics-port"
        }
    }
}

/// Why a listener could not be bound, told apart by errno: each cause has
/// its own remedy, and NIO's own text (`bind(descriptor:ptr:bytes:): Address
/// already in use`) names neither the port nor the flag.
public enum BindCause: Sendable, Equatable {
    /// EADDRINUSE: something already listens there.
    case inUse
    /// EADDRNOTAVAIL: no interface of this machine has the address.
    case addressNotHere
    /// EACCES: a port below 1024 without the privilege to bind it.
    case privileged
    /// The address did not resolve, or anything else; the underlying error's text.
    case other(String)

    init(_ error: any Error) {
        if let error = error as? IOError {
            switch error.errnoCode {
            case EADDRINUSE: self = .inUse
            case EADDRNOTAVAIL: self = .addressNotHere
            case EACCES, EPERM: self = .privileged
            default: self = .other("\(error)")
            }
        } else {
            self = .other("\(error)")
        }
    }
}

/// A listener that could not be bound: where, and why.
public struct BindFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let listener: Listener
    public let host: String
    public let port: Int
    public let cause: BindCause

    public init(listener: Listener, host: String, port: Int, error: any Error) {
        self.listener = listener
        self.host = host
        self.port = port
        self.cause = BindCause(error)
    }

    public var description: String {
        let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let what = "\(listener.name) \(address) (\(listener.flag))"
        switch cause {
        case .inUse:
            return "\(what) is in use: another tandemd? pick another with \(listener.flag)"
        case .addressNotHere:
            return "cannot listen on \(what): no interface of this machine has the address \(host); check --listen"
        case .privileged:
            return "cannot listen on \(what): ports below 1024 need root or CAP_NET_BIND_SERVICE; pick another with \(listener.flag)"
        case .other(let reason):
            return "cannot listen on \(what): \(reason)"
        }
    }
}
