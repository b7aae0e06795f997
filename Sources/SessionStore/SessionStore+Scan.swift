extension SessionStore {
    /// Examines up to `budget` slots of shard `shardIndex` from slot `cursor`
    /// under one short lock hold, and returns the live items `include` accepts
    /// (it runs under the lock: keep it cheap), how many live items were
    /// examined, and the slot to continue from (nil: the shard is done).
    /// Nothing is bumped in the LRU: looking is not using.
    public func scan(
        shard shardIndex: Int, from cursor: Int, budget: Int, include: (ItemSnapshot) -> Bool
    ) -> (items: [ItemSnapshot], examined: Int, next: Int?) {
        let now = clock.nowMillis()
        return shards[shardIndex].state.withLock { state in
            let page = state.liveItems(from: cursor, limit: budget, now: now)
            return (page.items.filter(include), page.items.count, page.next)
        }
    }
}
