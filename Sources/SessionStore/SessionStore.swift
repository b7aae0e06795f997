import Synchronization

/// How a store is sized and behaves when full.
public struct StoreConfiguration: Sendable {
    /// Bytes that keys, values and per-item overhead may use in total.
    public var memoryLimit: Int
    /// Whether a full store evicts least recently used items (memcached's default)
    /// or refuses the write (`-M`).
    public var evictionsEnabled: Bool
    /// The largest value accepted, in bytes (`-I`).
    public var maxItemSize: Int
    /// Number of independently locked shards; rounded to a power of two.
    public var shardCount: Int
    /// Whether mutations are recorded as a change stream (`takeChanges()`), for
    /// persistence and replication. Off, the store does no bookkeeping for it.
    public var recordsChanges: Bool
    /// Added to the clock when stamping writes (CAS tokens are hybrid logical
    /// clock stamps). Only tests set it, to play machines whose clocks disagree.
    public var stampSkewMillis: Int64 = 0
    /// Whether a full store lets clean values leave RAM before it evicts
    /// items: with persistence, where the log holds every committed value.
    /// Reads of such a value then throw `ValueOnDisk`.
    public var valuesLeaveRAM = false
    /// The key hash's seed. nil (the default): random per store, so that
    /// keys chosen by a client cannot be made to collide. Only a simulation
    /// that must replay exactly sets it.
    public var hashSeed: UInt64?
    /// Whether an expiry leaves a tombstone at the expired version's stamp
    /// (Protocol.md 2.6): a node that may reconcile with another needs it,
    /// so that reconciliation cannot put an older version in its place; a
    /// store that never will is spared the tombstones.
    public var remembersExpiries = true

    public init(memoryLimit: Int = 1024 << 20, evictionsEnabled: Bool = true, maxItemSize: Int = 1 << 20, shardCount: Int = 64, recordsChanges: Bool = false) {
        self.memoryLimit = memoryLimit
        self.evictionsEnabled = evictionsEnabled
        self.maxItemSize = maxItemSize
        self.shardCount = shardCount
        self.recordsChanges = recordsChanges
    }
}

/// How a storage command combines the new value with what is stored.
public enum StoreMode: Sendable, Equatable {
    /// Store unconditionally.
    case set
    /// Store only if the key is absent; a live item is left untouched.
    case add
    /// Store only if the key is present.
    case replace
    /// Add the bytes after the stored value, keeping its flags and deadline.
    case append
    /// Add the bytes before the stored value, keeping its flags and deadline.
    case prepend
}

/// A write's parameters beyond key and value.
public struct StoreRequest: Sendable {
    public var mode: StoreMode
    public var flags: UInt32
    public var deadline: Deadline
    /// Store only if the item's CAS equals this (`cas` command, meta `C`).
    public var compareCas: UInt64?
    /// Use this as the new CAS instead of a generated one (meta `E`).
    public var explicitCas: UInt64?
    /// With `compareCas`: accept an older CAS but mark the item stale (meta
    /// `I`). Such a store keeps the item's deadline and its win token state,
    /// as memcached does: the value is a late fill of an invalidated item,
    /// not a fresh one, and the client that won the recache still holds it.
    public var invalidate: Bool
    /// In append/prepend mode, create the item with this deadline on a miss (meta `N`).
    public var vivifyDeadline: Deadline?

    public init(
        mode: StoreMode, flags: UInt32 = 0, deadline: Deadline = .never, compareCas: UInt64? = nil,
        explicitCas: UInt64? = nil, invalidate: Bool = false, vivifyDeadline: Deadline? = nil
    ) {
        self.mode = mode
        self.flags = flags
        self.deadline = deadline
        self.compareCas = compareCas
        self.explicitCas = explicitCas
        self.invalidate = invalidate
        self.vivifyDeadline = vivifyDeadline
    }
}

/// The result of a write.
public enum StoreOutcome: Sendable, Equatable {
    /// Stored; the new CAS and the stored value's size.
    case stored(cas: UInt64, size: Int)
    /// The mode's condition failed (add on a live key, replace/append on a miss).
    case notStored
    /// The CAS did not match.
    case exists
    /// A CAS was given but the key is absent.
    case notFound
    /// The resulting value is larger than the item size limit.
    case tooLarge
    /// The store is full and may not evict (or the item exceeds a shard's share).
    case outOfMemory
}

/// Options for a read.
public struct FetchOptions: Sendable {
    /// Set a new deadline on a hit (`gat`, meta `T`).
    public var touch: Deadline?
    /// Move the item to the head of the LRU and record the access and the hit
    /// (`false` for meta `u` and for `me`, which only look).
    public var bump: Bool
    /// On a miss, create an empty item with this deadline and hand out the win token (meta `N`).
    public var vivify: Deadline?
    /// Hand out the win token when fewer than this many seconds are left (meta `R`).
    public var recacheBelowSeconds: Int64?
    /// Whether this read may hand out the win token of a stale item (or one
    /// that `recacheBelowSeconds` finds due): only `mg` tells a client that it
    /// won, so other reads (`get`, `me`, binary GET) must not use it up.
    public var offersWinToken: Bool
    /// Whether the caller uses the value: a read that does not (meta `mg`
    /// without `v`) is answered from the header of a cold item.
    public var needsValue: Bool
    /// The value of this very version read from the log (a `ValueOnDisk`
    /// answered): a read of a cold item whose CAS matches uses it, whether or
    /// not the value stayed in RAM. So a `get` of more keys than `-m` holds
    /// is answered although each value read may push an earlier one out.
    public var loaded: LoadedValue?

    public init(
        touch: Deadline? = nil, bump: Bool = true, vivify: Deadline? = nil, recacheBelowSeconds: Int64? = nil,
        offersWinToken: Bool = false, needsValue: Bool = true
    ) {
        self.touch = touch
        self.bump = bump
        self.vivify = vivify
        self.recacheBelowSeconds = recacheBelowSeconds
        self.offersWinToken = offersWinToken
        self.needsValue = needsValue
    }
}

/// A value read from the log for one version (CAS) of a cold item.
public struct LoadedValue: Sendable, Equatable {
    public var cas: UInt64
    public var value: [UInt8]

    public init(cas: UInt64, value: [UInt8]) {
        self.cas = cas
        self.value = value
    }
}

/// A hit, with the state the meta protocol reports.
public struct FetchResult: Sendable {
    public var item: ItemSnapshot
    /// Whether the item had been read before this read (meta `h`).
    public var hitBefore: Bool
    /// Milliseconds since the previous access (meta `l`).
    public var millisSinceLastAccess: Int64
    /// This client won the right to recache (meta `W`).
    public var won: Bool
    /// The item is marked stale (meta `X`).
    public var stale: Bool
    /// Another client already holds the win token (meta `Z`).
    public var tokenAlreadySent: Bool
}

/// The parameters of a delete.
public struct DeleteRequest: Sendable {
    /// Delete only if the item's CAS equals this.
    public var compareCas: UInt64?
    /// Use this as the new CAS when the item is kept (meta `E`).
    public var explicitCas: UInt64?
    /// Keep the item but mark it stale with a new CAS (meta `I`).
    public var invalidate: Bool
    /// With `invalidate`, a new deadline (meta `T`).
    public var deadline: Deadline?
    /// Keep the item but empty its value (meta `x`).
    public var removeValueOnly: Bool

    public init(compareCas: UInt64? = nil, explicitCas: UInt64? = nil, invalidate: Bool = false, deadline: Deadline? = nil, removeValueOnly: Bool = false) {
        self.compareCas = compareCas
        self.explicitCas = explicitCas
        self.invalidate = invalidate
        self.deadline = deadline
        self.removeValueOnly = removeValueOnly
    }
}

/// The result of a delete.
public enum DeleteOutcome: Sendable, Equatable {
    case deleted
    case notFound
    case exists
}

/// The parameters of an increment or decrement.
public struct ArithmeticRequest: Sendable {
    /// `true` adds (wrapping at 2^64), `false` subtracts (flooring at 0).
    public var increment: Bool
    public var delta: UInt64
    public var compareCas: UInt64?
    public var explicitCas: UInt64?
    /// On a miss, create the item holding `initial` with this deadline (meta `N`, `J`).
    public var vivify: (deadline: Deadline, initial: UInt64)?
    /// On success, set this deadline (meta `T`).
    public var touch: Deadline?

    public init(increment: Bool, delta: UInt64, compareCas: UInt64? = nil, explicitCas: UInt64? = nil, vivify: (deadline: Deadline, initial: UInt64)? = nil, touch: Deadline? = nil) {
        self.increment = increment
        self.delta = delta
        self.compareCas = compareCas
        self.explicitCas = explicitCas
        self.vivify = vivify
        self.touch = touch
    }
}

/// The result of an increment or decrement.
public enum ArithmeticOutcome: Sendable, Equatable {
    /// The new value, the item's CAS and deadline.
    case value(UInt64, cas: UInt64, deadline: Deadline)
    case notFound
    /// The stored value is not a decimal unsigned 64-bit number.
    case nonNumeric
    case exists
    /// A vivified item did not fit.
    case outOfMemory
}

/// Thrown by an operation that needs the value of an item whose value is not
/// in RAM (it left under `-m`; the log holds it). Nothing was changed: read
/// row `seq` of the log, give the value to `SessionStore.install`, and run
/// the operation again.
public struct ValueOnDisk: Error, Sendable, Equatable {
    /// The key, and the version (CAS) whose value row `seq` holds.
    public var key: [UInt8]
    public var cas: UInt64
    public var seq: UInt64
    /// The value's length.
    public var length: UInt32

    public init(key: [UInt8], cas: UInt64, seq: UInt64, length: UInt32) {
        self.key = key
        self.cas = cas
        self.seq = seq
        self.length = length
    }
}

/// Store-wide figures for `stats`.
public struct StoreStatistics: Sendable, Equatable {
    public var currentItems: Int = 0
    /// Items whose value is not in RAM, and their values' bytes (in the log).
    public var coldItems: Int = 0
    public var coldBytes: Int = 0
    /// Values that left RAM to make room, and values read back into it.
    public var valuesEvicted: UInt64 = 0
    public var valuesLoaded: UInt64 = 0
    public var bytes: Int = 0
    public var totalItems: UInt64 = 0
    public var evictions: UInt64 = 0
    public var reclaimed: UInt64 = 0
    public var expiredUnfetched: UInt64 = 0
    public var limitBytes: Int = 0
}

/// One lock-protected shard.
final class Shard: Sendable {
    let state: Mutex<ShardState>

    init(_ state: ShardState) {
        self.state = Mutex(state)
    }
}

/// The in-memory session store: a sharded map with memcached semantics
/// (expiry, CAS, LRU eviction under a memory limit).
///
/// Keys are hashed straight from the caller's bytes; values are copied into
/// the store (never kept as slices of a network buffer). Each operation holds
/// one shard's lock for the map operation only, so operations on different
/// keys rarely contend.
public final class SessionStore: Sendable {
    public let configuration: StoreConfiguration
    public let clock: any StoreClock
    let shards: [Shard]
    private let shardMask: Int
    let hasher: KeyHasher
    private let recorder: ChangeRecorder?
    /// No stamp handed out is below this: raised to what the peer's stamps
    /// reached, so this node's later writes order after everything it applied.
    private let stampFloor = Atomic<UInt64>(0)
    /// The stamp of the last `flush_all`: it stands for a delete of every item written before it.
    let flushStampValue = Atomic<UInt64>(0)
    /// Where cold values are read from (`attachColdValueReader(_:)`).
    let coldReader = Mutex<(any ColdValueReading)?>(nil)
    /// The log's live data is over its disk budget (`setDiskFull`).
    let diskFullFlag = Atomic<Bool>(false)
    private let pressure: MemoryPressure

    /// Whether a shard is over its memory limit with values that are not yet
    /// committed (so cannot leave RAM): writing connections should pause
    /// until the writer's next commit, as when it falls behind.
    public var isOverdrawn: Bool { pressure.overdrawnShards.load(ordering: .relaxed) > 0 }

    public init(configuration: StoreConfiguration = .init(), clock: any StoreClock = SystemClock()) {
        // A shard must hold at least a couple of the largest items, so small
        // memory limits get fewer shards.
        var shardCount = 1
        let wanted = max(1, configuration.shardCount)
        let minimumShare = 2 * (configuration.maxItemSize + ShardState.itemOverhead + 256)
        while shardCount * 2 <= wanted && configuration.memoryLimit / (shardCount * 2) >= minimumShare {
            shardCount *= 2
        }
        var effective = configuration
        effective.shardCount = shardCount
        self.configuration = effective
        self.clock = clock
        self.shardMask = shardCount - 1
        self.hasher = KeyHasher(seed: configuration.hashSeed ?? UInt64.random(in: .min ... .max))
        let share = configuration.memoryLimit / shardCount
        let recorder = configuration.recordsChanges ? ChangeRecorder() : nil
        self.recorder = recorder
        let pressure = MemoryPressure()
        self.pressure = pressure
        self.shards = (0..<shardCount).map {
            Shard(ShardState(
                index: $0, shardCount: shardCount, byteLimit: share,
                evictionsEnabled: configuration.evictionsEnabled,
                valuesLeaveRAM: configuration.valuesLeaveRAM, recorder: recorder, pressure: pressure,
                tombstoneLagMillis: Self.tombstoneRetentionMillis &- configuration.stampSkewMillis,
                remembersExpiries: configuration.remembersExpiries
            ))
        }
    }

    @inline(__always)
    func locate(_ key: UnsafeRawBufferPointer) -> (Shard, UInt64) {
        let hash = hasher.hash(key)
        // High bits choose the shard, low bits the bucket, so the two stay independent.
        return (shards[shardIndex(hash)], hash)
    }

    @inline(__always)
    func shardIndex(_ hash: UInt64) -> Int {
        Int(truncatingIfNeeded: hash >> 40) & shardMask
    }

    /// The current time in milliseconds, from the store's clock.
    public func now() -> Int64 { clock.nowMillis() }

    /// The least stamp a write made at `now` may take.
    @inline(__always)
    func stampBase(_ now: Int64) -> UInt64 {
        // `now` (milliseconds) serves deadlines; stamps read the clock finer.
        max(HybridTimestamp.floor(micros: clock.nowMicros() &+ configuration.stampSkewMillis &* 1000), stampFloor.load(ordering: .relaxed))
    }

    /// The stamp a write made now would get at least: what a node tells its
    /// peer its clock reads (pings), including the floor raised by the peer's stamps.
    public func currentStamp() -> UInt64 {
        stampBase(clock.nowMillis())
    }

    /// Raises the floor of future stamps to above `stamp`.
    @inline(__always)
    func raiseStampFloor(above stamp: UInt64) {
        var current = stampFloor.load(ordering: .relaxed)
        while current <= stamp {
            let (exchanged, original) = stampFloor.compareExchange(expected: current, desired: stamp &+ 1, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    // MARK: Reads

    /// Reads an item. Returns nil on a miss (an expired item is a miss).
    /// Throws `ValueOnDisk`, having changed nothing, when the value is needed
    /// (or a touch would record a new version) and is not in RAM.
    public func fetch(_ key: UnsafeRawBufferPointer, options: FetchOptions = FetchOptions()) throws(ValueOnDisk) -> FetchResult? {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return try shard.state.withLock { state throws(ValueOnDisk) -> FetchResult? in
            guard let slot = state.findLive(key, hash: hash, now: now) else {
                guard let vivify = options.vivify else { return nil }
                let cost = ShardState.cost(keyLength: key.count, valueCount: 0)
                guard state.makeRoom(for: cost, now: now) else { return nil }
                let created = state.insert(
                    bytes: Array(key), keyLength: key.count, hash: hash, flags: 0,
                    deadline: vivify.millis, cas: state.takeCas(stampBase(now)), now: now, marks: [.winTokenSent]
                )
                state.record(.upsert, created)
                return FetchResult(
                    item: state.snapshot(created), hitBefore: false, millisSinceLastAccess: 0,
                    won: true, stale: false, tokenAlreadySent: false
                )
            }
            let item = state.item(slot)
            // A value read from the log for this version answers a plain read.
            let loaded = options.loaded.flatMap { $0.cas == item.cas && item.marks.contains(.cold) && options.touch == nil ? $0 : nil }
            if loaded == nil, options.needsValue || options.touch != nil { try Self.requireValue(&state, slot) }
            if let touch = options.touch {
                state.setDeadline(slot, touch)
                state.record(.upsert, slot)
            }
            let stale = item.marks.contains(.stale)
            var won = false
            if options.offersWinToken, !item.marks.contains(.winTokenSent) {
                if stale {
                    won = true
                } else if let threshold = options.recacheBelowSeconds, item.deadline != 0,
                    Deadline(millis: item.deadline).remainingSeconds(at: now) < threshold
                {
                    won = true
                }
            }
            if won { state.insertMarks(slot, .winTokenSent) }
            if options.bump {
                state.insertMarks(slot, .fetched)
                state.bump(slot)
                state.setLastAccess(slot, now)
            }
            return FetchResult(
                item: state.snapshot(slot, loaded: loaded?.value),
                hitBefore: item.marks.contains(.fetched),
                millisSinceLastAccess: max(0, now - item.lastAccess),
                won: won, stale: stale,
                tokenAlreadySent: !won && item.marks.contains(.winTokenSent)
            )
        }
    }

    /// Sets a new deadline on a live item (`touch`). Returns whether it was
    /// found. A cold item's value is read first: the new version's row
    /// carries it (`ValueOnDisk`).
    public func touch(_ key: UnsafeRawBufferPointer, deadline: Deadline) throws(ValueOnDisk) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return try shard.state.withLock { state throws(ValueOnDisk) in
            guard let slot = state.findLive(key, hash: hash, now: now) else { return false }
            try Self.requireValue(&state, slot)
            state.setDeadline(slot, deadline)
            state.bump(slot)
            state.setLastAccess(slot, now)
            state.record(.upsert, slot)
            return true
        }
    }

    // MARK: Writes

    /// Stores a value under `key` according to `request.mode`. The value is
    /// copied. Append and prepend on a cold item throw `ValueOnDisk`.
    public func store(_ key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, request: StoreRequest) throws(ValueOnDisk) -> StoreOutcome {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        let maxItemSize = configuration.maxItemSize
        return try shard.state.withLock { state throws(ValueOnDisk) -> StoreOutcome in
            let existing = state.findLive(key, hash: hash, now: now)
            var deadline = request.deadline
            var flags = request.flags
            var mode = request.mode

            switch mode {
            case .set:
                break
            case .add:
                if let slot = existing {
                    // msm's existence check: the item, its CAS and its deadline stay as they are.
                    state.bump(slot)
                    return .notStored
                }
            case .replace:
                if existing == nil { return .notStored }
            case .append, .prepend:
                if let slot = existing {
                    try Self.requireValue(&state, slot)
                } else {
                    guard let vivify = request.vivifyDeadline else { return .notStored }
                    mode = .set
                    deadline = vivify
                }
            }

            var markStale = false
            if let expected = request.compareCas {
                guard let slot = existing else { return .notFound }
                let current = state.item(slot).cas
                if current != expected {
                    guard request.invalidate, expected < current else { return .exists }
                    markStale = true
                    deadline = Deadline(millis: state.item(slot).deadline)
                }
            }

            var bytes: [UInt8]
            switch mode {
            case .append, .prepend:
                let old = state.item(existing!)
                flags = old.flags
                deadline = Deadline(millis: old.deadline)
                let newCount = old.valueCount + value.count
                guard newCount <= maxItemSize else { return .tooLarge }
                bytes = [UInt8](unsafeUninitializedCapacity: key.count + newCount) { buffer, initialized in
                    let raw = UnsafeMutableRawBufferPointer(buffer)
                    raw.copyMemory(from: key)
                    old.bytes.withUnsafeBytes { oldBytes in
                        let oldValue = UnsafeRawBufferPointer(rebasing: oldBytes[key.count...])
                        if mode == .append {
                            UnsafeMutableRawBufferPointer(rebasing: raw[key.count...]).copyMemory(from: oldValue)
                            UnsafeMutableRawBufferPointer(rebasing: raw[(key.count + oldValue.count)...]).copyMemory(from: value)
                        } else {
                            UnsafeMutableRawBufferPointer(rebasing: raw[key.count...]).copyMemory(from: value)
                            UnsafeMutableRawBufferPointer(rebasing: raw[(key.count + value.count)...]).copyMemory(from: oldValue)
                        }
                    }
                    initialized = key.count + newCount
                }
            case .set, .add, .replace:
                guard value.count <= maxItemSize else { return .tooLarge }
                bytes = Self.join(key, value)
            }

            // A deadline already in the past stores nothing visible: drop the old item.
            if deadline.hasPassed(at: now) {
                // Like a delete: the removal is stamped and remembered.
                let stamp = state.takeCas(stampBase(now))
                if let slot = existing {
                    state.setCas(slot, stamp)
                    state.rememberDelete(of: key, stamp: stamp, now: now)
                    state.remove(slot, recordedAs: .delete)
                }
                return .stored(cas: request.explicitCas ?? stamp, size: bytes.count - key.count)
            }

            let size = bytes.count - key.count
            // Without evictions, a spent disk budget refuses data that would add to it.
            if !configuration.evictionsEnabled, diskFullFlag.load(ordering: .relaxed) {
                if existing.map({ size > state.item($0).valueLength }) ?? true { return .outOfMemory }
            }
            let cas: UInt64
            if let explicit = request.explicitCas {
                cas = explicit
                state.raiseCas(above: explicit)
            } else {
                cas = state.takeCas(stampBase(now))
            }
            if let slot = existing {
                let old = state.item(slot)
                state.bump(slot)
                guard state.makeRoom(for: bytes.count - old.bytes.count, now: now, protecting: slot) else {
                    return .outOfMemory
                }
                let tokenSent = old.marks.contains(.winTokenSent)
                state.replaceBytes(slot, with: bytes)
                state.setCas(slot, cas)
                state.setDeadline(slot, deadline)
                state.setLastAccess(slot, now)
                state.removeMarks(slot, [.fetched, .stale, .winTokenSent, .fromPeer])
                if markStale {
                    state.insertMarks(slot, tokenSent ? [.stale, .winTokenSent] : .stale)
                }
                state.setFlags(slot, flags)
                state.counters.totalItems += 1
                state.record(.upsert, slot)
            } else {
                guard state.makeRoom(for: ShardState.cost(keyLength: key.count, valueCount: size), now: now) else {
                    return .outOfMemory
                }
                let slot = state.insert(bytes: bytes, keyLength: key.count, hash: hash, flags: flags, deadline: deadline.millis, cas: cas, now: now)
                state.record(.upsert, slot)
            }
            return .stored(cas: cas, size: size)
        }
    }

    /// Deletes (or, with `invalidate`/`removeValueOnly`, rewrites) an item.
    /// Invalidating a cold item throws `ValueOnDisk`: the stale version's
    /// row carries the value.
    public func delete(_ key: UnsafeRawBufferPointer, request: DeleteRequest = DeleteRequest()) throws(ValueOnDisk) -> DeleteOutcome {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return try shard.state.withLock { state throws(ValueOnDisk) -> DeleteOutcome in
            guard let slot = state.findLive(key, hash: hash, now: now) else { return .notFound }
            if let expected = request.compareCas, state.item(slot).cas != expected { return .exists }
            if request.invalidate && !request.removeValueOnly { try Self.requireValue(&state, slot) }
            guard request.invalidate || request.removeValueOnly else {
                // The delete gets a stamp of its own; the tombstone keeps it.
                let stamp = state.takeCas(stampBase(now))
                state.setCas(slot, stamp)
                state.rememberDelete(of: key, stamp: stamp, now: now)
                state.remove(slot, recordedAs: .delete)
                return .deleted
            }
            if request.removeValueOnly {
                state.replaceBytes(slot, with: Array(key))
            }
            if request.invalidate {
                state.insertMarks(slot, .stale)
                state.removeMarks(slot, .winTokenSent)
                if let deadline = request.deadline { state.setDeadline(slot, deadline) }
            }
            if let explicit = request.explicitCas {
                state.setCas(slot, explicit)
                state.raiseCas(above: explicit)
            } else {
                state.setCas(slot, state.takeCas(stampBase(now)))
            }
            state.record(.upsert, slot)
            return .deleted
        }
    }

    /// Increments or decrements a decimal value in place (a cold one is read
    /// first: `ValueOnDisk`).
    public func arithmetic(_ key: UnsafeRawBufferPointer, request: ArithmeticRequest) throws(ValueOnDisk) -> ArithmeticOutcome {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return try shard.state.withLock { state throws(ValueOnDisk) -> ArithmeticOutcome in
            guard let slot = state.findLive(key, hash: hash, now: now) else {
                guard let vivify = request.vivify else { return .notFound }
                if vivify.deadline.hasPassed(at: now) {
                    return .value(vivify.initial, cas: state.takeCas(stampBase(now)), deadline: vivify.deadline)
                }
                let bytes = Self.join(key, decimal: vivify.initial)
                guard state.makeRoom(for: ShardState.cost(keyLength: key.count, valueCount: bytes.count - key.count), now: now) else {
                    return .outOfMemory
                }
                let cas = request.explicitCas ?? state.takeCas(stampBase(now))
                if request.explicitCas != nil { state.raiseCas(above: cas) }
                let created = state.insert(bytes: bytes, keyLength: key.count, hash: hash, flags: 0, deadline: vivify.deadline.millis, cas: cas, now: now)
                state.record(.upsert, created)
                return .value(vivify.initial, cas: cas, deadline: vivify.deadline)
            }
            let item = state.item(slot)
            if let expected = request.compareCas, item.cas != expected { return .exists }
            try Self.requireValue(&state, slot)
            guard let current = Self.parseDecimal(item.bytes, from: Int(item.keyLength)) else { return .nonNumeric }
            let updated: UInt64
            if request.increment {
                updated = current &+ request.delta
            } else {
                updated = current < request.delta ? 0 : current - request.delta
            }
            let bytes = Self.join(key, decimal: updated)
            state.bump(slot)
            guard state.makeRoom(for: bytes.count - item.bytes.count, now: now, protecting: slot) else {
                return .outOfMemory
            }
            state.replaceBytes(slot, with: bytes)
            let cas = request.explicitCas ?? state.takeCas(stampBase(now))
            if request.explicitCas != nil { state.raiseCas(above: cas) }
            state.setCas(slot, cas)
            state.setLastAccess(slot, now)
            if let touch = request.touch { state.setDeadline(slot, touch) }
            state.record(.upsert, slot)
            return .value(updated, cas: cas, deadline: Deadline(millis: state.item(slot).deadline))
        }
    }

    /// Removes every item (`flush_all`). All shards are locked at once, so the
    /// flush has one place in the change stream: every change is either before
    /// it or after it.
    public func flushAll() {
        flushAll(stamp: nil)
    }

    /// A flush with a given stamp (one received from the peer), or a new one.
    /// Stamp 0 is a backup's full resync, whose snapshot replaces the items:
    /// it stands for no delete, so the tombstones stay. The snapshot holds
    /// only live items, and the deletes this node saw still order after the
    /// older versions a peer may bring back when it reconciles.
    public func flushAll(stamp given: UInt64?) {
        let now = clock.nowMillis()
        let stamp: UInt64
        if let given {
            stamp = given
            raiseStampFloor(above: given)
        } else {
            // Above every token any shard handed out, so it covers every item it removes.
            stamp = max(stampBase(now), stampCeiling())
            raiseStampFloor(above: stamp)
        }
        var current = flushStampValue.load(ordering: .relaxed)
        while current < stamp {
            let (exchanged, original) = flushStampValue.compareExchange(expected: current, desired: stamp, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        flushShards(from: 0, stamp: stamp)
    }

    /// Locks shard `index`, then the rest, takes the flush's sequence number
    /// while every lock is held, and clears each shard as the locks unwind.
    @discardableResult
    private func flushShards(from index: Int, stamp: UInt64) -> UInt64 {
        guard index < shards.count else { return recorder?.nextSequence() ?? 0 }
        return shards[index].state.withLock { state in
            let sequence = flushShards(from: index + 1, stamp: stamp)
            state.removeAll(keepingTombstones: stamp == 0)
            state.recordFlush(sequence: sequence, stamp: stamp)
            return sequence
        }
    }

    /// The stamp of the last `flush_all` (0: none since start).
    public var flushStamp: UInt64 { flushStampValue.load(ordering: .relaxed) }

    /// Above every stamp the store holds or handed out.
    public func stampCeiling() -> UInt64 {
        var ceiling = stampFloor.load(ordering: .relaxed)
        for shard in shards { ceiling = max(ceiling, shard.state.withLock { $0.casCeiling }) }
        return ceiling
    }

    /// Tombstones (of deletes, and of expiries) are kept for this long (and at most `ShardState.tombstoneBudget`).
    public static let tombstoneRetentionMillis: Int64 = 3_600_000

    // MARK: Change stream

    /// Takes every change recorded since the last call, in sequence order.
    /// Empty unless the store was configured with `recordsChanges`.
    public func takeChanges() -> [Change] {
        // Nothing recorded: no shard's lock needs taking (a change being
        // recorded now is taken by the pump that follows its write).
        guard let recorder, recorder.pending.load(ordering: .relaxed) > 0 else { return [] }
        var batch: [Change] = []
        for shard in shards {
            batch += shard.state.withLock { $0.takeChanges() }
        }
        // Each shard's list is already ordered; the merge orders changes across shards.
        batch.sort { $0.sequence < $1.sequence }
        return batch
    }

    /// Changes recorded but not yet taken.
    public var pendingChanges: Int { recorder?.pending.load(ordering: .relaxed) ?? 0 }

    /// The sequence number of the newest change.
    public var lastSequence: UInt64 { recorder?.lastSequence.load(ordering: .relaxed) ?? 0 }

    // MARK: Recovery and snapshots

    /// Sizes every shard for `items` in all, ahead of a recovery that is
    /// about to restore that many (a hint: more or fewer are fine).
    public func reserve(items: Int) {
        let perShard = items / shards.count + items / shards.count / 8 + 16
        for shard in shards {
            shard.state.withLock { $0.reserve(items: perShard) }
        }
    }

    /// Loads an item recovered from storage, without recording a change. Later
    /// CAS tokens of its shard are larger than `cas`; call `raiseCas(above:)`
    /// with the highest recovered token once loading is done for the others.
    /// `seq` names the log row it came from (the header's committed row).
    /// An expired item is not loaded: it removes any version loaded before,
    /// and leaves its tombstone (`forgetExpired`).
    @discardableResult
    public func restore(_ key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, flags: UInt32, deadline: Deadline, cas: UInt64, seq: UInt64 = 0) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        if deadline.hasPassed(at: now) {
            forgetExpired(key, stamp: cas)
            return false
        }
        let bytes = Self.join(key, value)
        return shard.state.withLock { state in
            if let slot = state.find(key, hash: hash) { state.removeQuietly(slot) }
            guard state.makeRoom(for: ShardState.cost(keyLength: key.count, valueCount: value.count), now: now) else { return false }
            let slot = state.insert(bytes: bytes, keyLength: key.count, hash: hash, flags: flags, deadline: deadline.millis, cas: cas, now: now)
            _ = state.setCommitted(slot, seq: seq, length: UInt32(truncatingIfNeeded: value.count))
            state.raiseCas(above: cas)
            return true
        }
    }

    /// Removes a key recovery loaded from an older row, without recording a
    /// change: a newer row of the log deleted it.
    public func forgetRestored(_ key: UnsafeRawBufferPointer) {
        let (shard, hash) = locate(key)
        shard.state.withLock { state in
            if let slot = state.find(key, hash: hash) { state.removeQuietly(slot) }
        }
    }

    /// Removes a key recovery loaded from an older row, without recording a
    /// change, because its newest row, stamped `stamp`, has expired; the
    /// stamp stays as a tombstone, as it does when an item expires in memory.
    public func forgetExpired(_ key: UnsafeRawBufferPointer, stamp: UInt64) {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        shard.state.withLock { state in
            if let slot = state.find(key, hash: hash) { state.removeQuietly(slot) }
            state.rememberExpiry(of: key, stamp: stamp, now: now)
        }
    }

    /// Applies an item received from the primary of a pair: it replaces any
    /// local version, keeps the primary's CAS and deadline, and is recorded in
    /// the change stream so that the backup persists it like any write.
    @discardableResult
    public func applyUpsert(_ key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, flags: UInt32, deadline: Deadline, cas: UInt64) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        let bytes = Self.join(key, value)
        let stored = shard.state.withLock { state in
            Self.put(&state, key: key, bytes: bytes, hash: hash, flags: flags, deadline: deadline, cas: cas, now: now)
        }
        raiseStampFloor(above: cas)
        return stored
    }

    /// Replaces or inserts a complete item with a given CAS, recorded as an
    /// upsert; an item already expired removes the key instead.
    static func put(
        _ state: inout ShardState, key: UnsafeRawBufferPointer, bytes: [UInt8], hash: UInt64,
        flags: UInt32, deadline: Deadline, cas: UInt64, now: Int64
    ) -> Bool {
        let existing = state.find(key, hash: hash)
        defer { state.raiseCas(above: cas) }
        if deadline.hasPassed(at: now) {
            // The newest version is this one, and it has expired.
            state.rememberExpiry(of: key, stamp: cas, now: now)
            if let slot = existing {
                state.setCas(slot, cas)
                state.setDeadline(slot, deadline)
                state.remove(slot)
            }
            return false
        }
        if let slot = existing {
            let old = state.item(slot)
            state.bump(slot)
            guard state.makeRoom(for: bytes.count - old.bytes.count, now: now, protecting: slot) else {
                state.remove(slot)
                return false
            }
            state.replaceBytes(slot, with: bytes)
            state.setFlags(slot, flags)
            state.setDeadline(slot, deadline)
            state.setCas(slot, cas)
            state.setLastAccess(slot, now)
            state.removeMarks(slot, [.fetched, .stale, .winTokenSent])
            state.insertMarks(slot, .fromPeer)
            state.record(.upsert, slot)
        } else {
            guard state.makeRoom(for: ShardState.cost(keyLength: key.count, valueCount: bytes.count - key.count), now: now) else { return false }
            let slot = state.insert(bytes: bytes, keyLength: key.count, hash: hash, flags: flags, deadline: deadline.millis, cas: cas, now: now, marks: .fromPeer)
            state.record(.upsert, slot)
        }
        return true
    }

    /// Applies a removal received from the primary (recorded, like
    /// `applyUpsert`). The primary removes an item when it expires or is
    /// evicted; one whose deadline has passed here too (allowing for the
    /// clocks' skew) expired, and keeps its tombstone as a local expiry does.
    @discardableResult
    public func applyRemove(_ key: UnsafeRawBufferPointer) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        return shard.state.withLock { state in
            guard let slot = state.find(key, hash: hash) else { return false }
            let deadline = state.item(slot).deadline
            if deadline != 0, deadline <= now &+ Self.expirySkewMillis {
                state.expire(slot, now: now)
            } else {
                state.remove(slot)
            }
            return true
        }
    }

    /// How far ahead of this node's clock the primary's may be when it
    /// expires an item: a removal of an item due within this is an expiry.
    static let expirySkewMillis: Int64 = 2_000

    /// Applies a client's delete received from the primary: removes the key and
    /// keeps the delete's stamp as a tombstone (recorded, like `applyUpsert`).
    @discardableResult
    public func applyDelete(_ key: UnsafeRawBufferPointer, stamp: UInt64) -> Bool {
        let (shard, hash) = locate(key)
        let now = clock.nowMillis()
        raiseStampFloor(above: stamp)
        return shard.state.withLock { state in
            state.raiseCas(above: stamp)
            state.rememberDelete(of: key, stamp: stamp, now: now)
            guard let slot = state.find(key, hash: hash) else { return false }
            state.setCas(slot, stamp)
            state.remove(slot, recordedAs: .delete)
            return true
        }
    }

    /// Makes every future CAS larger than `cas` in every shard.
    public func raiseCas(above cas: UInt64) {
        raiseStampFloor(above: cas)
        for shard in shards { shard.state.withLock { $0.raiseCas(above: cas) } }
    }

    /// Up to `limit` live items of one shard from slot `cursor` on, and the cursor to continue
    /// from (nil when the shard is done). Lets a snapshot walk the store in short lock holds.
    public func items(inShard shardIndex: Int, from cursor: Int, limit: Int) -> (items: [ItemSnapshot], next: Int?) {
        let now = clock.nowMillis()
        return shards[shardIndex].state.withLock { $0.liveItems(from: cursor, limit: limit, now: now) }
    }

    /// The number of shards, for walking the store with `items(inShard:from:limit:)`.
    public var shardCount: Int { shards.count }

    // MARK: Maintenance

    /// Removes expired items nobody reads again; each shard examines at most
    /// `budgetPerShard` slots, so a call is short however large the store.
    @discardableResult
    public func reclaimExpired(budgetPerShard: Int = 4096) -> Int {
        let now = clock.nowMillis()
        var removed = 0
        for shard in shards {
            removed += shard.state.withLock { $0.reclaimExpired(now: now, budget: budgetPerShard) }
        }
        return removed
    }

    /// Sums the shards' figures.
    public func statistics() -> StoreStatistics {
        var total = StoreStatistics()
        total.limitBytes = configuration.memoryLimit
        for shard in shards {
            shard.state.withLock { state in
                total.currentItems += state.count
                total.coldItems += state.coldCount
                total.coldBytes += state.coldBytes
                total.valuesEvicted += state.counters.valuesEvicted
                total.valuesLoaded += state.counters.valuesLoaded
                total.bytes += state.bytesUsed
                total.totalItems += state.counters.totalItems
                total.evictions += state.counters.evictions
                total.reclaimed += state.counters.reclaimed
                total.expiredUnfetched += state.counters.expiredUnfetched
            }
        }
        return total
    }

    // MARK: Helpers

    /// Throws `ValueOnDisk` if the item's value is not in RAM (an empty value
    /// is never read: there is nothing to read).
    /// A cold empty value is simply warm again.
    @inline(__always)
    static func requireValue(_ state: inout ShardState, _ slot: Int32) throws(ValueOnDisk) {
        let item = state.item(slot)
        guard item.marks.contains(.cold) else { return }
        guard item.rowLength > 0 else {
            state.replaceBytes(slot, with: item.bytes)
            return
        }
        throw ValueOnDisk(key: Array(item.bytes[..<Int(item.keyLength)]), cas: item.cas, seq: item.seq, length: item.rowLength)
    }

    static func join(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: key.count + value.count) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            raw.copyMemory(from: key)
            if value.count > 0 {
                UnsafeMutableRawBufferPointer(rebasing: raw[key.count...]).copyMemory(from: value)
            }
            initialized = key.count + value.count
        }
    }

    private static func join(_ key: UnsafeRawBufferPointer, decimal: UInt64) -> [UInt8] {
        var digits: [UInt8] = Array(String(decimal).utf8)
        return digits.withUnsafeMutableBytes { join(key, UnsafeRawBufferPointer($0)) }
    }

    /// Parses a stored value as memcached does for incr/decr: decimal digits,
    /// optionally followed by spaces, at most 20 digits, no overflow.
    static func parseDecimal(_ bytes: [UInt8], from start: Int) -> UInt64? {
        var value: UInt64 = 0
        var index = start
        var digits = 0
        while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(bytes[index] - 0x30))
            if o1 || o2 { return nil }
            value = sum
            digits += 1
            index += 1
        }
        guard digits > 0 else { return nil }
        while index < bytes.count {
            guard bytes[index] == 0x20 else { return nil }
            index += 1
        }
        return value
    }
}
