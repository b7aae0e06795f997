/// A fast, seeded 64-bit hash over key bytes.
///
/// Keys come from the network, so the seed is random per process: an attacker who
/// can choose keys cannot precompute a set that lands in one bucket.
struct KeyHasher: Sendable {
    let seed: UInt64

    init(seed: UInt64) {
        self.seed = seed
    }

    @inline(__always)
    func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        var h = seed ^ (UInt64(truncatingIfNeeded: key.count) &* 0x9E37_79B9_7F4A_7C15)
        let count = key.count
        var offset = 0
        while offset + 8 <= count {
            let word = key.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            h = (h ^ Self.mix(word)) &* 0xFF51_AFD7_ED55_8CCD
            h = (h << 29) | (h >> 35)
            offset += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while offset < count {
            tail |= UInt64(key[offset]) << shift
            shift += 8
            offset += 1
        }
        h ^= Self.mix(tail)
        return Self.mix(h)
    }

    /// The murmur3 64-bit finaliser: every input bit affects every output bit.
    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 33
        x = x &* 0xFF51_AFD7_ED55_8CCD
        x ^= x >> 33
        x = x &* 0xC4CE_B9FE_1A85_EC53
        x ^= x >> 33
        return x
    }
}
