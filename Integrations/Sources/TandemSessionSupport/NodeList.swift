import TandemClient
import WireProtocol

/// Node addresses as people write them: `host:port,host:port` for the two
/// nodes of a pair (the wire ports), one such string per pair.
package enum NodeList {
    /// Why a node list was refused.
    package enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case noPairs
        case badAddress(String)
        /// A pair of more than two nodes.
        case tooManyNodes(String)
        /// Two pairs with the same name (by default a pair's first address).
        case samePair(String)

        package var description: String {
            switch self {
            case .noPairs: return "no Tandem nodes given (one or more pairs, each \"host:port,host:port\")"
            case .badAddress(let address): return "\"\(address)\" is not a node address (host:port, the node's wire port)"
            case .tooManyNodes(let spec): return "\"\(spec)\" names more than two nodes: a pair is one or two (host:port,host:port)"
            case .samePair(let name): return "two pairs are named \(name) (a pair is named by its first node): give each pair once"
            }
        }
    }

    /// Pairs from strings of one or two comma-separated `host:port` each;
    /// a string may also hold several pairs separated by `;`.
    package static func pairs(_ specs: [String]) throws -> [TandemPair] {
        var pairs: [TandemPair] = []
        for spec in specs.flatMap({ $0.split(separator: ";") }) {
            let addresses = try spec.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }.map(address)
            guard !addresses.isEmpty else { continue }
            guard addresses.count <= 2 else { throw Error.tooManyNodes(String(spec)) }
            let pair = TandemPair(nodes: addresses.map { TandemNodeAddress(host: $0.host, port: $0.port) })
            guard !pairs.contains(where: { $0.name == pair.name }) else { throw Error.samePair(pair.name) }
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
