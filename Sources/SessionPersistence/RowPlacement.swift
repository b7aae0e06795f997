import SessionStore

/// The order in which the writer writes a batch, so that the keys of one
/// session share a page of the file.
///
/// SQLite gives a new row the next rowid, and rows with neighbouring rowids
/// share a page. msm keeps each session under several keys (`<id>`,
/// `validity:<id>`, `bak:<id>`, `lock:<id>`) and rewrites them together on
/// every request. Written in the batch's hash order, a session and its
/// validity record land on two random pages, and every later request costs
/// two pages in the WAL and again at the checkpoint; written one after the
/// other, a 2 KB session and its 20-byte validity record fill one page.
/// (SQLite alone, 25,000 sessions, `Benchmarks/sqlite-floor`: 15 µs of CPU
/// per request instead of 25.)
///
/// Only new rows move: an update leaves a row where it is. The grouping is a
/// hint about msm's key names, never a rule: keys it does not recognise are
/// written in an arbitrary order, as before.
enum RowPlacement {
    /// Prefixes msm puts before a session's key, outermost first: its
    /// secondary copy of a session kept on another node (`bak:`), then the
    /// key's role.
    private static let secondaryPrefix = Array("bak:".utf8)
    private static let rolePrefixes = [Array("validity:".utf8), Array("lock:".utf8)]

    /// The changes in write order: grouped by session, the session's own key
    /// first, then the keys derived from it.
    static func ordered<C: Collection<Change>>(_ changes: C) -> [Change] {
        var placed: [(group: Int, rank: Int, change: Change)] = []
        placed.reserveCapacity(changes.count)
        for change in changes {
            let (group, rank) = change.withKeyBytes(Self.group)
            placed.append((group, rank, change))
        }
        placed.sort { ($0.group, $0.rank) < ($1.group, $1.rank) }
        return placed.map(\.change)
    }

    /// A hash of the key without msm's role prefixes (equal for all keys of
    /// one session), and the key's rank within its group.
    static func group(_ key: UnsafeRawBufferPointer) -> (group: Int, rank: Int) {
        var rest = key[...]
        var rank = 0
        if rest.starts(with: secondaryPrefix) {
            rest = rest.dropFirst(secondaryPrefix.count)
            rank += rolePrefixes.count + 1
        }
        for (index, prefix) in rolePrefixes.enumerated() where rest.starts(with: prefix) {
            rest = rest.dropFirst(prefix.count)
            rank += index + 1
            break
        }
        var hasher = Hasher()
        hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: rest))
        return (hasher.finalize(), rank)
    }
}
