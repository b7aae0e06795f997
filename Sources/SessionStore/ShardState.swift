import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Counters a shard keeps under its own lock; `SessionStore.statistics()` sums them.
struct ShardCounters {
    /// Items ever stored (memcached's `total_items`).
    var totalItems: UInt64 = 0
    /// Live items removed to make room under the memory limit.
    var evictions: UInt64 = 0
    /// Expired items whose memory was taken back (on access, by the reclaimer or by eviction).
    var reclaimed: UInt64 = 0
    /// Items that expired before anyone read them again... and were removed by the background reclaimer.
    var expiredUnfetched: UInt64 = 0
    /// Clean values that left RAM to make room (their items stay, cold).
    var valuesEvicted: UInt64 = 0
    /// Cold values read back into RAM.
    var valuesLoaded: UInt64 = 0
}

/// How many shards are over their memory limit with values not yet
/// committed: while any is, writing connections pause (`SessionStore.isOverdrawn`).
final class MemoryPressure: Sendable {
    let overdrawnShards = Atomic<Int>(0)
}

/// The contents of one shard: items in contiguous slots, an open-addressing
/// index from key hash to slot, and two LRU lists threaded through the slots
/// by index: the warm items (value in RAM) and the cold ones (value in the
/// log only). A cold item's place in its list only orders true evictions.
///
/// Everything here runs under the shard's lock, for the map operation only.
struct ShardState {
    /// Item storage; free slots have an empty `bytes` and are listed in `freeSlots`.
    private(set) var slots: [ItemSlot] = []
    /// Indices of free slots in `slots`, reused before `slots` grows.
    private var freeSlots: [Int32] = []
    /// Linear-probing index: 0 is empty, otherwise slot index + 1. Power-of-two size.
    private var table: [Int32] = Array(repeating: 0, count: 16)
    /// Number of live items.
    private(set) var count = 0
    /// Most recently used warm slot, or -1.
    private var head: Int32 = -1
    /// Least recently used warm slot, or -1.
    private var tail: Int32 = -1
    /// Most recently demoted (or used) cold slot, or -1.
    private var coldHead: Int32 = -1
    /// Least recently used cold slot, or -1.
    private var coldTail: Int32 = -1
    /// Number of cold items, and the bytes their values take in the log.
    private(set) var coldCount = 0
    private(set) var coldBytes = 0
    /// Bytes charged to this shard: keys + values + per-item overhead.
    private(set) var bytesUsed = 0
    /// This shard's share of the memory limit.
    let byteLimit: Int
    /// Whether a full shard may evict least recently used items.
    let evictionsEnabled: Bool
    /// Whether a full shard first lets clean values leave RAM (the log holds
    /// them): with persistence. Items are then evicted only when no value
    /// can go.
    let valuesLeaveRAM: Bool
    /// The next CAS this shard hands out. Shards interleave (`index + k * count`),
    /// so tokens are unique store-wide without a shared atomic.
    private var nextCas: UInt64
    /// The distance between two CAS tokens of this shard (the shard count).
    private let casStride: UInt64
    /// Where the background reclaimer resumes its sweep.
    private var reclaimCursor = 0
    /// Counters summed by `statistics()`.
    var counters = ShardCounters()
    /// Where changes are numbered, or nil when nobody consumes the change stream.
    let recorder: ChangeRecorder?
    /// Counts the shards over their limit, store-wide.
    let pressure: MemoryPressure
    /// Whether this shard is over its limit with values not yet committed
    /// (counted in `pressure` while so).
    private(set) var overdrawn = false
    /// Items marked dirty: while there are some, a commit will free values.
    private(set) var dirtyCount = 0
    /// Changes made since the consumer last took them, in sequence order.
    private(set) var changes: [Change] = []
    /// Recent deletes and expiries, for reconciliation between the nodes of a pair.
    var tombstones: Tombstones
    /// How far behind the clock a tombstone's stamp may be and still be kept
    /// (the retention, less the store's stamp skew).
    let tombstoneLagMillis: Int64
    /// Whether expiries leave tombstones (`StoreConfiguration.remembersExpiries`).
    let remembersExpiries: Bool

    /// Bytes charged per item beyond its key and value: the slot, the array
    /// header and allocator overhead, and the index entries.
    static let itemOverhead = MemoryLayout<ItemSlot>.stride + 56

    init(
        index: Int, shardCount: Int, byteLimit: Int, evictionsEnabled: Bool, valuesLeaveRAM: Bool = false, recorder: ChangeRecorder?,
        pressure: MemoryPressure = MemoryPressure(), tombstoneLagMillis: Int64 = SessionStore.tombstoneRetentionMillis,
        remembersExpiries: Bool = true
    ) {
        self.tombstoneLagMillis = tombstoneLagMillis
        self.remembersExpiries = remembersExpiries
        self.recorder = recorder
        self.pressure = pressure
        self.byteLimit = byteLimit
        self.evictionsEnabled = evictionsEnabled
        self.valuesLeaveRAM = valuesLeaveRAM
        self.nextCas = UInt64(index + 1)
        self.casStride = UInt64(shardCount)
        self.tombstones = Tombstones(capacity: max(1024, Self.tombstoneBudget / shardCount))
    }

    /// Deletes the store remembers in all (spread over the shards).
    static let tombstoneBudget = 262_144

    static func cost(keyLength: Int, valueCount: Int) -> Int {
        keyLength + valueCount + itemOverhead
    }

    // MARK: CAS

    /// The next CAS token: a hybrid logical clock stamp at least `base` (the
    /// physical time as a stamp, or the highest stamp seen from the peer).
    @inline(__always)
    mutating func takeCas(_ base: UInt64) -> UInt64 {
        if base > nextCas { raiseCas(above: base &- 1) }
        let cas = nextCas
        nextCas &+= casStride
        return cas
    }

    /// The next token this shard would hand out: above every stamp it holds.
    var casCeiling: UInt64 { nextCas }

    /// Makes every future CAS of this shard larger than `cas` (after recovery or an explicit `E` token).
    mutating func raiseCas(above cas: UInt64) {
        guard cas >= nextCas else { return }
        let steps = (cas - nextCas) / casStride + 1
        nextCas &+= steps &* casStride
    }

    // MARK: Lookup

    /// The slot holding `key`, expired or not.
    func find(_ key: UnsafeRawBufferPointer, hash: UInt64) -> Int32? {
        let mask = table.count - 1
        var position = Int(truncatingIfNeeded: hash) & mask
        while true {
            let entry = table[position]
            if entry == 0 { return nil }
            let slot = entry - 1
            if slots[Int(slot)].hash == hash, keyMatches(Int(slot), key) { return slot }
            position = (position + 1) & mask
        }
    }

    private func keyMatches(_ slot: Int, _ key: UnsafeRawBufferPointer) -> Bool {
        guard Int(slots[slot].keyLength) == key.count else { return false }
        return slots[slot].bytes.withUnsafeBytes { stored in
            memcmp(stored.baseAddress!, key.baseAddress!, key.count) == 0
        }
    }

    /// The slot holding a live `key`; an expired item found on the way is removed.
    mutating func findLive(_ key: UnsafeRawBufferPointer, hash: UInt64, now: Int64) -> Int32? {
        guard let slot = find(key, hash: hash) else { return nil }
        let deadline = slots[Int(slot)].deadline
        if deadline != 0 && deadline <= now {
            expire(slot, now: now)
            counters.reclaimed += 1
            return nil
        }
        return slot
    }

    /// The item as a snapshot; a cold one given its `loaded` value is handed
    /// out whole, as if warm.
    func snapshot(_ slot: Int32, loaded: [UInt8]? = nil) -> ItemSnapshot {
        let item = slots[Int(slot)]
        var snapshot = ItemSnapshot(
            storage: loaded.map { item.bytes + $0 } ?? item.bytes,
            keyLength: Int(item.keyLength),
            flags: item.flags,
            cas: item.cas,
            deadline: Deadline(millis: item.deadline)
        )
        snapshot.lastAccess = item.lastAccess
        snapshot.fromPeer = item.marks.contains(.fromPeer)
        snapshot.seq = item.seq
        snapshot.rowLength = item.rowLength
        snapshot.isCold = item.marks.contains(.cold) && loaded == nil
        return snapshot
    }

    // MARK: Item fields

    func item(_ slot: Int32) -> ItemSlot { slots[Int(slot)] }

    mutating func setDeadline(_ slot: Int32, _ deadline: Deadline) {
        slots[Int(slot)].deadline = deadline.millis
    }

    mutating func setCas(_ slot: Int32, _ cas: UInt64) {
        slots[Int(slot)].cas = cas
    }

    /// Names the key's newest committed row; returns the row it named before.
    /// A cold item's row must hold its value: only compaction moves it.
    mutating func setCommitted(_ slot: Int32, seq: UInt64, length: UInt32) -> (seq: UInt64, length: UInt32) {
        let previous = (slots[Int(slot)].seq, slots[Int(slot)].rowLength)
        if slots[Int(slot)].marks.contains(.cold) {
            coldBytes += Int(length) - Int(previous.1)
        }
        slots[Int(slot)].seq = seq
        slots[Int(slot)].rowLength = length
        return previous
    }

    mutating func setLastAccess(_ slot: Int32, _ now: Int64) {
        slots[Int(slot)].lastAccess = now
    }

    mutating func insertMarks(_ slot: Int32, _ marks: ItemMarks) {
        slots[Int(slot)].marks.formUnion(marks)
    }

    mutating func removeMarks(_ slot: Int32, _ marks: ItemMarks) {
        if marks.contains(.dirty), slots[Int(slot)].marks.contains(.dirty) { dirtyCount -= 1 }
        slots[Int(slot)].marks.subtract(marks)
    }

    // MARK: Insert, replace, remove

    /// Whether `cost` more bytes fit, evicting from the LRU tail if allowed.
    /// `protected` (the item being replaced) is never evicted.
    ///
    /// With `valuesLeaveRAM`, the least recently used clean values leave RAM
    /// first (their items stay, cold); dirty ones met on the way are moved to
    /// the head, as they are the writes of the last moments. When no value
    /// can go, the writes not yet committed may overdraw the limit by half
    /// (the shard is then `overdrawn`: writing connections pause until the
    /// writer's next commit makes those values clean, and free to go); past
    /// that, items are evicted: the least recently used cold ones (a real
    /// loss, counted in `evictions`), and a dirty value never (the write is
    /// refused instead: it is all the store holds of an acknowledged version).
    ///
    /// `losing` false: only values may go (or expired items), never a live
    /// item, and no overdraft: for bringing a value back into RAM, which must
    /// never cost an item.
    mutating func makeRoom(for cost: Int, now: Int64, protecting protected: Int32 = -1, losing: Bool = true) -> Bool {
        if cost <= 0 { return true }
        if cost > byteLimit { return false }
        var skipped = 0
        while bytesUsed + cost > byteLimit {
            let victim = tail
            if victim == -1 || victim == protected || skipped >= Self.dirtySkipLimit {
                guard valuesLeaveRAM, losing else { return false }
                if dirtyCount > 0, bytesUsed + cost <= byteLimit + byteLimit / 2 {
                    setOverdrawn(true)
                    return true
                }
                return evictColdItems(for: cost, now: now, protecting: protected)
            }
            let deadline = slots[Int(victim)].deadline
            if deadline != 0 && deadline <= now {
                counters.reclaimed += 1
                expire(victim, now: now)
                continue
            }
            if valuesLeaveRAM {
                if slots[Int(victim)].isClean {
                    makeCold(victim)
                    counters.valuesEvicted += 1
                } else {
                    unlink(victim)
                    linkAtHead(victim)
                    skipped += 1
                }
                continue
            }
            guard evictionsEnabled else { return false }
            counters.evictions += 1
            remove(victim)
        }
        setOverdrawn(false)
        return true
    }

    private mutating func setOverdrawn(_ value: Bool) {
        guard overdrawn != value else { return }
        overdrawn = value
        pressure.overdrawnShards.wrappingAdd(value ? 1 : -1, ordering: .relaxed)
    }

    /// Brings an overdrawn shard back under its limit once its values are
    /// clean (after a commit): they leave RAM now rather than at the next write.
    mutating func trimIfOverdrawn(now: Int64) {
        guard overdrawn else { return }
        if bytesUsed > byteLimit { _ = makeRoom(for: 1, now: now) }
        // Nothing left to commit: waiting would not help.
        if bytesUsed <= byteLimit || dirtyCount == 0 { setOverdrawn(false) }
    }

    /// How many dirty values one `makeRoom` moves aside before it gives up on
    /// values: they become clean within a flush interval, so a few looks per
    /// write suffice, and a store whose every value is dirty (its writes
    /// outrun its log) must not cost a walk of the whole list per write.
    static let dirtySkipLimit = 64

    /// The last resort of `makeRoom` with `valuesLeaveRAM`: when headers and
    /// dirty values fill the shard, evicts the least recently used cold items
    /// (expired ones are reclaimed on the way), if evictions are allowed.
    private mutating func evictColdItems(for cost: Int, now: Int64, protecting protected: Int32) -> Bool {
        defer { if bytesUsed + cost <= byteLimit { setOverdrawn(false) } }
        while bytesUsed + cost > byteLimit {
            let victim = coldTail
            if victim == -1 || victim == protected { return false }
            let deadline = slots[Int(victim)].deadline
            if deadline != 0 && deadline <= now {
                counters.reclaimed += 1
                expire(victim, now: now)
            } else {
                guard evictionsEnabled else { return false }
                counters.evictions += 1
                remove(victim)
            }
        }
        return true
    }

    /// Evicts least recently used items, cold ones first (their values are
    /// only on disk), until their committed rows add up to `bytes`. Returns
    /// the row bytes freed and the items evicted.
    mutating func evictForDisk(bytes: Int, rowOverhead: Int, now: Int64) -> (freed: Int, items: Int) {
        var freed = 0
        var items = 0
        while freed < bytes {
            let victim = coldTail != -1 ? coldTail : tail
            if victim == -1 { break }
            let item = slots[Int(victim)]
            if item.seq != 0 { freed += Int(item.keyLength) + Int(item.rowLength) + rowOverhead }
            if item.deadline != 0 && item.deadline <= now {
                counters.reclaimed += 1
                expire(victim, now: now)
            } else {
                counters.evictions += 1
                remove(victim)
            }
            items += 1
        }
        return (freed, items)
    }

    // MARK: Cold and warm

    /// Lets a clean value leave RAM: the item keeps its key and header and
    /// moves to the cold list.
    mutating func makeCold(_ slot: Int32) {
        precondition(slots[Int(slot)].isClean && !slots[Int(slot)].marks.contains(.cold), "only a clean warm value leaves RAM")
        let keyLength = Int(slots[Int(slot)].keyLength)
        unlink(slot)
        bytesUsed -= slots[Int(slot)].valueCount
        if slots[Int(slot)].valueCount > 0 { slots[Int(slot)].bytes = Array(slots[Int(slot)].bytes[..<keyLength]) }
        slots[Int(slot)].marks.insert(.cold)
        coldCount += 1
        coldBytes += Int(slots[Int(slot)].rowLength)
        linkAtHead(slot)
    }

    /// Gives a cold item its bytes (key and value) back: it moves to the
    /// head of the warm list. The caller has made room (or accepts going
    /// over the limit for a moment).
    private mutating func makeWarm(_ slot: Int32, bytes: [UInt8]) {
        unlink(slot)
        slots[Int(slot)].marks.remove(.cold)
        coldCount -= 1
        coldBytes -= Int(slots[Int(slot)].rowLength)
        bytesUsed += bytes.count - slots[Int(slot)].bytes.count
        slots[Int(slot)].bytes = bytes
        linkAtHead(slot)
    }

    /// Adds a new item (the key must not be present). The caller has made room.
    @discardableResult
    mutating func insert(
        bytes: [UInt8], keyLength: Int, hash: UInt64,
        flags: UInt32, deadline: Int64, cas: UInt64, now: Int64, marks: ItemMarks = []
    ) -> Int32 {
        let item = ItemSlot(
            bytes: bytes, hash: hash, cas: cas, deadline: deadline, lastAccess: now,
            flags: flags, newer: -1, older: -1, keyLength: UInt8(keyLength), marks: marks
        )
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            slots[Int(slot)] = item
        } else {
            slot = Int32(slots.count)
            slots.append(item)
        }
        if (count + 1) * 2 > table.count { growTable() }
        let mask = table.count - 1
        var position = Int(truncatingIfNeeded: hash) & mask
        while table[position] != 0 { position = (position + 1) & mask }
        table[position] = slot + 1
        count += 1
        bytesUsed += Self.cost(keyLength: keyLength, valueCount: bytes.count - keyLength)
        linkAtHead(slot)
        counters.totalItems += 1
        return slot
    }

    /// Replaces the bytes of an existing item, keeping its place in the index.
    /// A cold item is warm again (it holds a new version, or its value back).
    mutating func replaceBytes(_ slot: Int32, with bytes: [UInt8]) {
        if slots[Int(slot)].marks.contains(.cold) {
            makeWarm(slot, bytes: bytes)
            return
        }
        bytesUsed += bytes.count - slots[Int(slot)].bytes.count
        slots[Int(slot)].bytes = bytes
    }

    /// Removes an item from the index, the LRU list and the memory account,
    /// and records the removal in the change stream.
    mutating func remove(_ slot: Int32, recordedAs kind: Change.Kind = .remove) {
        if recorder != nil { record(kind, slot) }
        removeQuietly(slot)
    }

    /// Removes an expired item, recorded as a removal, and keeps its stamp as
    /// a tombstone: the key's newest version is gone, and an older version
    /// the other node of a pair brings back (reconciliation) must not stand
    /// in for it. Deadlines are absolute, so the other node expires the same
    /// version itself.
    mutating func expire(_ slot: Int32, now: Int64) {
        rememberExpiry(of: slots[Int(slot)].bytes[..<Int(slots[Int(slot)].keyLength)], stamp: slots[Int(slot)].cas, now: now)
        // Clean: the committed row is this version, deadline included, and
        // recovery skips it once that deadline has passed (a backup may
        // expire an item the primary removed a little before its deadline).
        let deadline = slots[Int(slot)].deadline
        let rowExpires = slots[Int(slot)].isClean && deadline != 0 && deadline <= now
        if recorder != nil { record(.remove, slot, committedRowExpires: rowExpires) }
        removeQuietly(slot)
    }

    /// Keeps `stamp`, the stamp of an expired version of `key`, as a
    /// tombstone if it is recent enough to matter (within the retention) and
    /// the store remembers expiries.
    mutating func rememberExpiry(of key: some Collection<UInt8>, stamp: UInt64, now: Int64) {
        guard remembersExpiries, stamp >= tombstoneCutoff(now) else { return }
        rememberDelete(of: key, stamp: stamp, now: now)
    }

    /// Keeps `stamp`, a delete's, as the tombstone of `key` (unless it has a
    /// newer one), dropping those past the retention.
    mutating func rememberDelete(of key: some Collection<UInt8>, stamp: UInt64, now: Int64) {
        tombstones.insert(Array(key), stamp: stamp, olderThanDropped: tombstoneCutoff(now))
    }

    /// Tombstones stamped below this are past the retention.
    func tombstoneCutoff(_ now: Int64) -> UInt64 {
        HybridTimestamp.floor(millis: now &- tombstoneLagMillis)
    }

    /// Removes an item without recording a change (recovery replaces what it loads).
    mutating func removeQuietly(_ slot: Int32) {
        let mask = table.count - 1
        var position = Int(truncatingIfNeeded: slots[Int(slot)].hash) & mask
        while table[position] != slot + 1 { position = (position + 1) & mask }
        deleteFromTable(at: position)
        unlink(slot)
        let item = slots[Int(slot)]
        if item.marks.contains(.cold) {
            coldCount -= 1
            coldBytes -= Int(item.rowLength)
        }
        if item.marks.contains(.dirty) { dirtyCount -= 1 }
        bytesUsed -= Self.cost(keyLength: Int(item.keyLength), valueCount: item.valueCount)
        slots[Int(slot)].bytes = []
        slots[Int(slot)].marks = []
        slots[Int(slot)].seq = 0
        slots[Int(slot)].rowLength = 0
        freeSlots.append(slot)
        count -= 1
    }

    /// Live items from slot `cursor` on, at most `limit`.
    func liveItems(from cursor: Int, limit: Int, now: Int64, newerThan stamp: UInt64 = 0) -> (items: [ItemSnapshot], next: Int?) {
        var items: [ItemSnapshot] = []
        var index = cursor
        let examineLimit = Self.examineLimit(from: cursor, limit: limit)
        while index < slots.count, items.count < limit, index < examineLimit {
            let item = slots[index]
            if !item.bytes.isEmpty, item.deadline == 0 || item.deadline > now, item.cas > stamp {
                items.append(snapshot(Int32(index)))
            }
            index += 1
        }
        return (items, index < slots.count ? index : nil)
    }

    /// Where a walk of `limit` items from slot `cursor` stops examining
    /// slots, found or not: a sparse filter keeps its lock holds short.
    static func examineLimit(from cursor: Int, limit: Int) -> Int {
        cursor + max(limit, 1) * 16
    }

    /// Expires the items stamped above `stamp` that `liveItems(from:limit:now:newerThan:)`
    /// would pass over because their deadline has passed (the same slots).
    mutating func expireStamped(above stamp: UInt64, from cursor: Int, limit: Int, now: Int64) {
        let end = min(slots.count, Self.examineLimit(from: cursor, limit: limit))
        var index = cursor
        while index < end {
            let deadline = slots[index].deadline
            if deadline != 0, deadline <= now, slots[index].cas > stamp, !slots[index].bytes.isEmpty {
                expire(Int32(index), now: now)
                counters.reclaimed += 1
            }
            index += 1
        }
    }

    /// The committed row (seq, key length, value length) of every live item, read in place.
    func forEachCommittedRow(now: Int64, _ body: (UInt64, Int, Int) -> Void) {
        for index in slots.indices where slots[index].seq != 0 && !slots[index].bytes.isEmpty {
            let deadline = slots[index].deadline
            guard deadline == 0 || deadline > now else { continue }
            body(slots[index].seq, Int(slots[index].keyLength), Int(slots[index].rowLength))
        }
    }

    /// Removes every live item stamped below `stamp`, each recorded as a
    /// delete at `stamp` with its tombstone (a peer's `flush_all`, merged);
    /// items stamped after it stay. Returns how many went.
    mutating func removeStamped(below stamp: UInt64, now: Int64) -> Int {
        var removed = 0
        for index in slots.indices {
            let item = slots[index]
            guard !item.bytes.isEmpty, item.deadline == 0 || item.deadline > now, item.cas < stamp else { continue }
            let slot = Int32(index)
            setCas(slot, stamp)
            rememberDelete(of: item.bytes[..<Int(item.keyLength)], stamp: stamp, now: now)
            remove(slot, recordedAs: .delete)
            removed += 1
        }
        raiseCas(above: stamp)
        return removed
    }

    /// Drops every item. CAS tokens keep increasing. The tombstones go too,
    /// unless `keepingTombstones` (a flush that stands for no delete).
    mutating func removeAll(keepingTombstones: Bool = false) {
        setOverdrawn(false)
        slots = []
        freeSlots = []
        table = Array(repeating: 0, count: 16)
        count = 0
        head = -1
        tail = -1
        coldHead = -1
        coldTail = -1
        coldCount = 0
        coldBytes = 0
        dirtyCount = 0
        bytesUsed = 0
        reclaimCursor = 0
        // The flush's own stamp now stands for every delete before it.
        if !keepingTombstones { tombstones.removeAll() }
    }

    /// Linear probing deletion by backward shift: no tombstones, so probe
    /// lengths stay short however many deletes the table sees.
    private mutating func deleteFromTable(at position: Int) {
        let mask = table.count - 1
        var hole = position
        var probe = position
        table[hole] = 0
        while true {
            probe = (probe + 1) & mask
            let entry = table[probe]
            if entry == 0 { return }
            let home = Int(truncatingIfNeeded: slots[Int(entry - 1)].hash) & mask
            // The entry may stay if its home lies cyclically in (hole, probe].
            let staysPut = hole <= probe ? (home > hole && home <= probe) : (home > hole || home <= probe)
            if !staysPut {
                table[hole] = entry
                table[probe] = 0
                hole = probe
            }
        }
    }

    /// Makes room for `items` in all without growing as they arrive
    /// (recovery knows how many rows are coming).
    mutating func reserve(items: Int) {
        slots.reserveCapacity(items)
        while items * 2 > table.count { growTable() }
    }

    private mutating func growTable() {
        var grown = [Int32](repeating: 0, count: table.count * 2)
        let mask = grown.count - 1
        for entry in table where entry != 0 {
            var position = Int(truncatingIfNeeded: slots[Int(entry - 1)].hash) & mask
            while grown[position] != 0 { position = (position + 1) & mask }
            grown[position] = entry
        }
        table = grown
    }

    // MARK: Change stream

    /// Records the item's current state (or its removal) as the next change.
    mutating func record(_ kind: Change.Kind, _ slot: Int32, committedRowExpires: Bool = false) {
        guard let recorder else { return }
        if kind == .upsert {
            // A new version carries its value to the writer and the peer: it
            // is never recorded from a cold item (the caller read it first).
            precondition(!slots[Int(slot)].marks.contains(.cold), "an upsert recorded from a cold item")
            if slots[Int(slot)].marks.insert(.dirty).inserted { dirtyCount += 1 }
        }
        let item = slots[Int(slot)]
        var change = Change(
            kind: kind, sequence: recorder.nextSequence(), storage: item.bytes, keyLength: Int(item.keyLength),
            flags: item.flags, stamp: item.cas, deadline: Deadline(millis: item.deadline)
        )
        change.committedSeq = item.seq
        change.committedLength = item.rowLength
        change.committedRowExpires = committedRowExpires
        changes.append(change)
        recorder.pending.wrappingAdd(1, ordering: .relaxed)
    }

    /// Records a flush of every shard under one sequence number.
    mutating func recordFlush(sequence: UInt64, stamp: UInt64) {
        guard let recorder else { return }
        changes.append(Change(kind: .flushAll, sequence: sequence, storage: [], keyLength: 0, flags: 0, stamp: stamp, deadline: .never))
        recorder.pending.wrappingAdd(1, ordering: .relaxed)
    }

    /// Hands the recorded changes to the consumer.
    mutating func takeChanges() -> [Change] {
        guard !changes.isEmpty else { return [] }
        var taken: [Change] = []
        swap(&taken, &changes)
        recorder?.pending.wrappingSubtract(taken.count, ordering: .relaxed)
        return taken
    }

    // MARK: LRU

    /// Marks an item most recently used (in its own list, warm or cold).
    mutating func bump(_ slot: Int32) {
        let cold = slots[Int(slot)].marks.contains(.cold)
        guard (cold ? coldHead : head) != slot else { return }
        unlink(slot)
        linkAtHead(slot)
    }

    /// Links a slot at the head of the list its `cold` mark names.
    private mutating func linkAtHead(_ slot: Int32) {
        let cold = slots[Int(slot)].marks.contains(.cold)
        let first = cold ? coldHead : head
        slots[Int(slot)].newer = -1
        slots[Int(slot)].older = first
        if first != -1 { slots[Int(first)].newer = slot }
        if cold {
            coldHead = slot
            if coldTail == -1 { coldTail = slot }
        } else {
            head = slot
            if tail == -1 { tail = slot }
        }
    }

    /// Unlinks a slot from the list its `cold` mark names.
    private mutating func unlink(_ slot: Int32) {
        let cold = slots[Int(slot)].marks.contains(.cold)
        let newer = slots[Int(slot)].newer
        let older = slots[Int(slot)].older
        if newer != -1 {
            slots[Int(newer)].older = older
        } else if cold {
            coldHead = older
        } else {
            head = older
        }
        if older != -1 {
            slots[Int(older)].newer = newer
        } else if cold {
            coldTail = newer
        } else {
            tail = newer
        }
        slots[Int(slot)].newer = -1
        slots[Int(slot)].older = -1
    }

    // MARK: Background reclaim

    /// Examines up to `budget` slots from where the last sweep stopped and
    /// removes the expired items among them. Returns how many it removed.
    mutating func reclaimExpired(now: Int64, budget: Int) -> Int {
        guard !slots.isEmpty else { return 0 }
        var removed = 0
        var examined = 0
        while examined < budget {
            if reclaimCursor >= slots.count { reclaimCursor = 0 }
            let slot = Int32(reclaimCursor)
            // Fields read in place: copying the slot would retain and release
            // its bytes for every one of the thousands examined per sweep,
            // which runs on an event loop between requests.
            let deadline = slots[reclaimCursor].deadline
            if deadline != 0, deadline <= now, !slots[reclaimCursor].bytes.isEmpty {
                if !slots[reclaimCursor].marks.contains(.fetched) { counters.expiredUnfetched += 1 }
                expire(slot, now: now)
                counters.reclaimed += 1
                removed += 1
            }
            reclaimCursor += 1
            examined += 1
            if examined >= slots.count { break }
        }
        return removed
    }
}

extension ShardState {
    mutating func setFlags(_ slot: Int32, _ flags: UInt32) {
        slots[Int(slot)].flags = flags
    }
}
