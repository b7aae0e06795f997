import Foundation
import MemcacheProtocol
import NIOCore
import SessionStore

#if canImport(Glibc)
import Glibc
#endif

/// `stats` and its groups, in memcached's format (`STAT <name> <value>` … `END`).
extension Dispatcher {
    func stats(_ group: StatsGroup, into out: inout ByteBuffer) {
        switch group {
        case .general:
            for (name, value) in context.generalStats() { out.writeStat(name, value) }
        case .settings:
            for (name, value) in settingsStats() { out.writeStat(name, value) }
        case .items:
            let figures = store.statistics()
            if figures.currentItems > 0 {
                out.writeStat("items:1:number", "\(figures.currentItems)")
                out.writeStat("items:1:age", "0")
                out.writeStat("items:1:evicted", "\(figures.evictions)")
                out.writeStat("items:1:reclaimed", "\(figures.reclaimed)")
                out.writeStat("items:1:expired_unfetched", "\(figures.expiredUnfetched)")
                out.writeStat("items:1:outofmemory", "\(counters.value(.storeNoMemory))")
            }
        case .slabs:
            let figures = store.statistics()
            if figures.currentItems > 0 {
                out.writeStat("1:chunk_size", "\(context.configuration.store.maxItemSize)")
                out.writeStat("1:used_chunks", "\(figures.currentItems)")
                out.writeStat("1:mem_requested", "\(figures.bytes)")
            }
            out.writeStat("active_slabs", figures.currentItems > 0 ? "1" : "0")
            out.writeStat("total_malloced", "\(figures.bytes)")
        case .sizes:
            out.writeStat("sizes_status", "disabled")
        case .conns:
            break
        case .reset:
            context.counters.reset()
            out.writeStaticString("RESET\r\n")
            return
        case .other:
            out.writeStatus(.error)
            return
        }
        out.writeStatus(.end)
    }

    func settingsStats() -> [(String, String)] {
        let configuration = context.configuration
        return [
            ("maxbytes", "\(configuration.store.memoryLimit)"),
            ("maxconns", "\(configuration.maxConnections)"),
            ("tcpport", "\(context.boundPort.load(ordering: .relaxed))"),
            ("udpport", "0"),
            ("inter", configuration.host),
            ("verbosity", "\(context.verbosity.load(ordering: .relaxed))"),
            ("evictions", configuration.store.evictionsEnabled ? "on" : "off"),
            ("num_threads", "\(configuration.threads)"),
            ("cas_enabled", "yes"),
            ("item_size_max", "\(configuration.store.maxItemSize)"),
            ("shards", "\(store.configuration.shardCount)"),
            ("binding_protocol", "ascii"),
            ("data_dir", context.persistence?.dataDirectory ?? "none"),
            ("flush_interval_ms", configuration.persistence.map { "\($0.flushIntervalMillis)" } ?? "none"),
        ]
    }
}

extension ServerContext {
    /// memcached's general `stats` block, plus Tandem's persistence and replication figures.
    func generalStats() -> [(String, String)] {
        let now = store.now()
        let figures = store.statistics()
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        func seconds(_ time: timeval) -> String {
            let micros = Int(time.tv_usec)
            return "\(time.tv_sec)." + String(repeating: "0", count: 6 - String(micros).count) + "\(micros)"
        }
        let configuration = self.configuration
        var stats: [(String, String)] = [
            ("pid", "\(getpid())"),
            ("uptime", "\(now / 1000 - self.startedAt)"),
            ("time", "\(now / 1000)"),
            ("version", ServerContext.version),
            ("pointer_size", "\(MemoryLayout<Int>.size * 8)"),
            ("rusage_user", seconds(usage.ru_utime)),
            ("rusage_system", seconds(usage.ru_stime)),
            ("max_connections", "\(configuration.maxConnections)"),
            ("curr_connections", "\(self.currentConnections.load(ordering: .relaxed))"),
            ("total_connections", "\(self.totalConnections.load(ordering: .relaxed))"),
            ("rejected_connections", "\(self.rejectedConnections.load(ordering: .relaxed))"),
        ]
        for counter in Counter.allCases {
            stats.append((counter.statName, "\(self.counters.total(counter))"))
        }
        stats += [
            ("limit_maxbytes", "\(figures.limitBytes)"),
            ("threads", "\(configuration.threads)"),
            ("shards", "\(store.configuration.shardCount)"),
            ("expired_unfetched", "\(figures.expiredUnfetched)"),
            ("evictions", "\(figures.evictions)"),
            ("reclaimed", "\(figures.reclaimed)"),
            ("curr_items", "\(figures.currentItems)"),
            ("total_items", "\(figures.totalItems)"),
            ("bytes", "\(figures.bytes)"),
        ]
        if let persistence = self.persistence {
            let persisted = persistence.statistics()
            stats += [
                ("persistence", "sqlite"),
                ("persistence_pending", "\(persisted.pending)"),
                ("persistence_errors", "\(persisted.errors)"),
                ("persistence_last_error", persisted.lastError ?? "none"),
                ("persistence_flushes", "\(persisted.flushes)"),
                ("persistence_batch_last", "\(persisted.lastBatch)"),
                ("persistence_lag_ms", "\(persisted.lagMillis)"),
                ("persistence_segments", "\(persisted.segments)"),
                ("persistence_log_bytes", "\(persisted.logBytes)"),
                ("persistence_live_bytes", "\(persisted.liveBytes)"),
                ("persistence_compactions", "\(persisted.compactions)"),
                // RAM is a cache of the log: items whose values are only on
                // disk, the values that left RAM and came back, and the reads
                // that brought them (mean latency, queueing included).
                ("disk_limit", persisted.diskLimit.map { "\($0)" } ?? "none"),
                ("disk_full", persisted.diskFull ? "1" : "0"),
                ("warming_up", persistence.isWarmingUp ? "1" : "0"),
                ("cold_items", "\(figures.coldItems)"),
                ("cold_bytes", "\(figures.coldBytes)"),
                ("values_evicted", "\(figures.valuesEvicted)"),
                ("values_loaded", "\(figures.valuesLoaded)"),
                ("cold_reads", "\(persistence.values.statistics.reads)"),
                ("cold_read_mean_us", String(format: "%.1f", persistence.values.statistics.meanMicros)),
                ("cold_read_errors", "\(persistence.values.statistics.failures)"),
                ("recovered_items", "\(persisted.recovery.items)"),
                ("recovery_seconds", String(format: "%.3f", persisted.recovery.seconds)),
            ]
        } else {
            stats.append(("persistence", "disabled"))
        }
        if let pair {
            if let primary = pair.primary {
                stats += primary.statistics()
            } else if let replica = pair.replica {
                stats += replica.statistics()
            } else {
                stats.append(("role", "joining"))
            }
            stats += pair.statistics()
            stats.append(("tombstones", "\(store.tombstoneCount)"))
            stats.append(("watchers", "\(watchers.load(ordering: .relaxed))"))
        } else {
            stats.append(("role", "standalone"))
        }
        stats.append(("forwarded_writes", "\(forwardedWrites.load(ordering: .relaxed))"))
        stats += tlsStatistics()
        return stats
    }
}
