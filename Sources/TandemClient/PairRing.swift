/// Consistent hashing of keys onto pairs, ketama-style (as spymemcached and
/// pymemcache place keys on memcached servers): every pair owns
/// `pointsPerPair` points on a ring of 64-bit hashes, and a key belongs to
/// the pair of the first point at or after the key's hash. Adding a pair
/// to N takes over about 1/(N+1) of the keys, all from the others; no key
/// moves between two pairs that were there before.
///
/// A pair's points are derived from its `name` alone, so every client
/// given the same pair names places every key on the same pair, whatever
/// the order the pairs were listed in.
public struct PairRing: Sendable {
    /// Points per pair: enough that the pairs' shares stay within a few
    /// per cent of equal (ketama uses 160 per server too).
    public static let pointsPerPair = 160

    private let points: [(hash: UInt64, pair: Int)]

    /// A ring of the pairs named `names` (their index in it is what `pair(for:)` returns).
    public init(names: [String]) {
        var points: [(hash: UInt64, pair: Int)] = []
        points.reserveCapacity(names.count * Self.pointsPerPair)
        for (index, name) in names.enumerated() {
            for point in 0..<Self.pointsPerPair {
                points.append((Self.hash(Array("\(name)-\(point)".utf8)), index))
            }
        }
        // Ties (as good as impossible in 64 bits) go to the smaller name, so
        // that the order the pairs were listed in never matters.
        self.points = points.sorted { lhs, rhs in
            lhs.hash != rhs.hash ? lhs.hash < rhs.hash : names[lhs.pair] < names[rhs.pair]
        }
    }

    /// The index of the pair that holds `key`.
    public func pair<Bytes: Sequence>(for key: Bytes) -> Int where Bytes.Element == UInt8 {
        precondition(!points.isEmpty, "a ring needs at least one pair")
        let hash = Self.hash(key)
        var low = 0
        var high = points.count
        while low < high {
            let middle = (low + high) / 2
            if points[middle].hash < hash { low = middle + 1 } else { high = middle }
        }
        return points[low == points.count ? 0 : low].pair
    }

    /// FNV-1a over the bytes, then MurmurHash3's 64-bit finalizer, so that
    /// keys differing in one byte land far apart on the ring. Stable across
    /// processes and platforms (unlike `Hasher`, which is seeded per process).
    static func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        hash ^= hash >> 33
        hash = hash &* 0xff51_afd7_ed55_8ccd
        hash ^= hash >> 33
        hash = hash &* 0xc4ce_b9fe_1a85_ec53
        hash ^= hash >> 33
        return hash
    }
}
