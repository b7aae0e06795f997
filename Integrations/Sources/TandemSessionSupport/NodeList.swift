import TandemClient
import WireProtocol

/// Node addresses as people write them: `host:port,host:port` for the two
/// nodes of a pair (the wire ports), one such string per pair.
package enum NodeList {
    /// Why a node list was refused.
    package enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case noPairs
        case badAddress(String)

        package var description: String {
            switch self {
            case .noPairs: return "no Tandem nodes given (one or more pairs, each \"host:port,host:port\")"
            case .badAddress(let address): return "\"\(address)\" is not a node address (host:port, the node's wire port)"
            }
        }
    }

    /// Pairs from strings of one or two comma-separated `host:port` each;
    /// a string may also hold several pairs separated by `;`.
    package static func pairs(_ specs: [String]) throws -> [TandemPair] {
        var pairs: [TandemPair] = []
        for spec in specs.flatMap({ $0.split(separator: ";") }) {
            let addresses = try spec.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }.map(address)
            guard let first = addresses.first else { continue }
            // The client's address type is left to inference, so that a
            // rename of it on the client's side changes nothing here.
            var pair = TandemPair(.init(host: first.host, port: first.port))
            pair.nodes = addresses.map { .init(host: $0.host, port: $0.port) }
            pairs.append(pair)
        }
        guard !pairs.isEmpty else { throw Error.noPairs }
        return pairs
    }

    /// One `host:port` (an IPv6 host in brackets: `[::1]:11311`).
    package static func address(_ address: String) throws -> (host: String, port: Int) {
        guard let colon = address.lastIndex(of: ":"),
            let port = Int(address[address.index(after: colon)...]), (1...65535).contains(port)
        else { throw Error.badAddress(address) }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw Error.badAddress(address) }
        return (host, port)
    }

    /// The pair's shared secret from `file`, if given.
    package static func secret(file: String?) throws -> WireSecret? {
        guard let file, !file.isEmpty else { return nil }
        return try WireSecret(contentsOfFile: file)
    }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
