import Prometheus
import Replication
import SessionPersistence
import TandemTLS

/// `GET /metrics`: every figure `stats` reports, and the latency histograms,
/// in the Prometheus text exposition format (version 0.0.4).
///
/// Values are read when scraped, into a `PrometheusCollectorRegistry` made
/// for that scrape: the registry is this node's alone (swift-metrics' global
/// `MetricsSystem` can be bootstrapped once per process, and tests run several
/// nodes in one), a snapshot has no counter to keep in step with the node's
/// own, and series that stop applying (a backup's link after its promotion)
/// simply disappear rather than freeze at their last value.
///
/// The histograms are written here, after the registry's output, in the same
/// format: swift-prometheus' histograms take observations one at a time behind
/// a lock, while the request latency is kept in per-event-loop buckets that
/// only need summing (see `RequestLatency`).
///
/// Names follow Prometheus' conventions: `tandem_` prefix, base units
/// (seconds, bytes), `_total` on counters. Counters come from the node's own
/// and restart from 0 with the process (and with `stats reset` for the
/// command counters; replication's resync counters restart with each role).
struct NodeMetrics {
    let context: ServerContext

    func exposition(health: NodeHealth.Verdict) -> [UInt8] {
        let stats = Stats(context.generalStats())
        var out = Exposition()

        out.gauge("tandem_build_info", "Always 1; the version label names the build.", 1, labels: [("version", ServerContext.version)])
        out.gauge("tandem_healthy", "1 while /health answers 200 (the node can serve), 0 otherwise.", health.canServe ? 1 : 0)
        out.gauge("tandem_uptime_seconds", "Seconds since the node started.", stats.number("uptime"))
        for (mode, key) in [("user", "rusage_user"), ("system", "rusage_system")] {
            out.counterValue("tandem_cpu_seconds_total", "CPU time the process used, by mode.", stats.number(key), labels: [("mode", mode)])
        }

        commands(stats, into: &out)
        store(stats, into: &out)
        connections(stats, into: &out)
        persistence(stats, into: &out)
        replication(stats, into: &out)
        tls(into: &out)
        return out.finish()
    }

    // MARK: Families

    private func commands(_ stats: Stats, into out: inout Exposition) {
        let help = "memcached commands by command and result (text, meta and binary alike; get, gat and touch count per key; a gat counts as get and touch; store is set, add, replace, append, prepend and cas)."
        let results: [(command: String, result: String, counter: Counter)] = [
            ("get", "hit", .getHits), ("get", "miss", .getMisses),
            ("store", "stored", .storeStored), ("store", "not_stored", .storeNotStored),
            ("store", "exists", .storeExists), ("store", "not_found", .storeNotFound),
            ("delete", "hit", .deleteHits), ("delete", "miss", .deleteMisses),
            ("incr", "hit", .incrHits), ("incr", "miss", .incrMisses),
            ("decr", "hit", .decrHits), ("decr", "miss", .decrMisses),
            ("touch", "hit", .touchHits), ("touch", "miss", .touchMisses),
            ("flush_all", "ok", .cmdFlush),
        ]
        let counters = context.counters
        for entry in results {
            out.counter("tandem_commands_total", help, counters.total(entry.counter), labels: [("command", entry.command), ("result", entry.result)])
        }
        for (result, counter) in [("hit", Counter.casHits), ("badval", .casBadval), ("miss", .casMisses)] {
            out.counter("tandem_cas_total", "Compare-and-swap outcomes (cas, ms with C, binary with a CAS): hit stored, badval the CAS did not match, miss no such key.", counters.total(counter), labels: [("result", result)])
        }
        for (reason, counter) in [("too_large", Counter.storeTooLarge), ("no_memory", .storeNoMemory)] {
            out.counter("tandem_store_refused_total", "Writes refused with a SERVER_ERROR: the value is over --max-item-size, or memory is full with -M (incr/decr included).", counters.total(counter), labels: [("reason", reason)])
        }
        out.counter("tandem_meta_commands_total", "Meta protocol commands (mg, ms, md, ma, mn, me).", counters.total(.cmdMeta))
        out.counter("tandem_protocol_errors_total", "Requests refused as malformed, unknown or too large: answered with ERROR, CLIENT_ERROR or a refusal, or silently under noreply.", counters.total(.protocolErrors))
        out.counter("tandem_auth_commands_total", "SASL authentication attempts.", counters.total(.authCommands))
        out.counter("tandem_auth_errors_total", "SASL authentication failures and unauthenticated requests.", counters.total(.authErrors))
        out.counter("tandem_received_bytes_total", "Bytes read from memcached connections.", counters.total(.bytesRead))
        out.counter("tandem_sent_bytes_total", "Bytes written to memcached connections.", counters.total(.bytesWritten))

        var series: [Exposition.HistogramSeries] = []
        for kind in RequestLatency.Kind.allCases {
            var snapshot = RequestLatency.Snapshot()
            for counters in context.countersByLoop.values { counters.latency.add(kind, into: &snapshot) }
            series.append(Exposition.HistogramSeries(
                labels: [("kind", kind.label)], counts: snapshot.counts, sum: Double(snapshot.sumNanos) / 1e9
            ))
        }
        out.histogram(
            "tandem_request_duration_seconds",
            "memcached requests from the first read of the burst that brought them to the flush of their reply, including waits for the backup (sync writes), the primary (writes on a backup) and storage backpressure; kind=write when the request's read burst wrote.",
            bounds: RequestLatency.boundsNanos.map { Double($0) / 1e9 }, series: series
        )
    }

    private func store(_ stats: Stats, into out: inout Exposition) {
        out.gauge("tandem_items", "Items in memory.", stats.number("curr_items"))
        out.counterValue("tandem_items_stored_total", "Items stored since start.", stats.number("total_items"))
        out.gauge("tandem_item_bytes", "Bytes the items use (keys, values, per-item overhead).", stats.number("bytes"))
        out.gauge("tandem_memory_limit_bytes", "The memory limit for items (-m).", stats.number("limit_maxbytes"))
        out.counterValue("tandem_evictions_total", "Live items evicted to make room (least recently used first).", stats.number("evictions"))
        out.counterValue("tandem_reclaimed_total", "Expired items whose memory was reclaimed.", stats.number("reclaimed"))
        out.counterValue("tandem_expired_unfetched_total", "Items that expired without being read.", stats.number("expired_unfetched"))
        if stats["tombstones"] != nil {
            out.gauge("tandem_tombstones", "Delete markers kept so a returning peer's older writes do not resurrect deleted keys.", stats.number("tombstones"))
        }
    }

    private func connections(_ stats: Stats, into out: inout Exposition) {
        out.gauge("tandem_open_connections", "Open memcached connections.", stats.number("curr_connections"))
        out.counterValue("tandem_connections_total", "memcached connections accepted since start.", stats.number("total_connections"))
        out.counterValue("tandem_connections_rejected_total", "memcached connections refused over --max-connections.", stats.number("rejected_connections"))
        out.gauge("tandem_max_connections", "The connection limit (-c).", stats.number("max_connections"))
    }

    private func persistence(_ stats: Stats, into out: inout Exposition) {
        guard let persistence = context.persistence else {
            out.gauge("tandem_persistence_enabled", "1 when items are written behind to SQLite, 0 with --no-persistence.", 0)
            return
        }
        let figures = persistence.statistics()
        out.gauge("tandem_persistence_enabled", "1 when items are written behind to SQLite, 0 with --no-persistence.", 1)
        out.gauge("tandem_persistence_pending_changes", "Changes not yet committed to SQLite.", Double(figures.pending))
        out.gauge("tandem_persistence_lag_seconds", "Upper bound on the age of the oldest uncommitted change.", Double(figures.lagMillis) / 1000)
        out.counter("tandem_persistence_errors_total", "Failed commit attempts (the node keeps serving from memory and retries).", figures.errors)
        out.gauge("tandem_persistence_failing", "1 while commits fail (disk full, I/O error, file removed): a crash now would lose the pending changes.", figures.failing ? 1 : 0)
        out.counter("tandem_persistence_flushes_total", "Successful commits.", figures.flushes)
        out.gauge("tandem_persistence_last_batch_keys", "Distinct keys the last commit wrote.", Double(figures.lastBatch))
        out.gauge("tandem_persistence_segments", "Segment tables of the log in SQLite.", Double(figures.segments))
        out.gauge("tandem_persistence_log_bytes", "Bytes of the log's rows (keys, values and row headers), dead ones included.", Double(figures.logBytes))
        out.gauge("tandem_persistence_live_bytes", "Bytes of the log's rows that are their key's newest version.", Double(figures.liveBytes))
        out.counter("tandem_persistence_compactions_total", "Log segments dropped by compaction since start.", figures.compactions)
        out.gauge("tandem_disk_limit_bytes", "Live bytes the log may hold (--disk-limit); absent without a limit.", figures.diskLimit.map(Double.init))
        out.gauge("tandem_disk_full", "1 while the log's live data is over --disk-limit: items are evicted, or with -M new data refused.", figures.diskFull ? 1 : 0)
        let store = context.store.statistics()
        out.gauge("tandem_cold_items", "Items whose value is only in the log (it left RAM under -m).", Double(store.coldItems))
        out.gauge("tandem_cold_bytes", "Bytes of the values that are only in the log.", Double(store.coldBytes))
        out.counter("tandem_values_evicted_total", "Clean values that left RAM to make room (their items stay).", store.valuesEvicted)
        out.counter("tandem_values_loaded_total", "Values read back from the log into RAM.", store.valuesLoaded)
        let reads = persistence.values.statistics
        out.counter("tandem_cold_reads_total", "Values read from the log on the reader threads.", reads.reads)
        out.gauge("tandem_cold_read_mean_seconds", "Mean time from asking for a value to having it, queueing included.", reads.meanMicros / 1_000_000)
        out.counter("tandem_cold_read_errors_total", "Reads of values from the log that failed.", reads.failures)
        out.gauge("tandem_recovered_items", "Items loaded from SQLite at start.", Double(figures.recovery.items))
        out.gauge("tandem_recovery_duration_seconds", "How long loading them took.", figures.recovery.seconds)
        let durations = figures.flushDurations
        out.histogram(
            "tandem_persistence_flush_duration_seconds", "How long successful commits took (one per --flush-interval, or sooner under load).",
            bounds: FlushDurations.bounds,
            series: [Exposition.HistogramSeries(labels: [], counts: durations.counts, sum: durations.sum)]
        )
    }

    /// Every replication state a primary reports (`replication_state`).
    private static let replicationStates: [PrimaryReplication.State] = [.sync, .degraded, .resyncing, .noBackup, .async]
    /// Every state of a backup's link (`link_state`).
    private static let linkStates: [ReplicaClient.LinkState] = [.connecting, .handshaking, .resyncing, .streaming, .down, .stopped]

    private func replication(_ stats: Stats, into out: inout Exposition) {
        let role = stats["role"] ?? "standalone"
        for candidate in ["standalone", "joining", "primary", "backup"] {
            out.gauge("tandem_role", "1 for the node's current role (standalone, joining, primary, backup), 0 for the others.", candidate == role ? 1 : 0, labels: [("role", candidate)])
        }
        out.counterValue("tandem_forwarded_writes_total", "Writes a backup forwarded to its primary, or a primary ran for its backup.", stats.number("forwarded_writes"))
        guard context.pair != nil else { return }
        out.gauge("tandem_epoch", "The epoch: raised by every promotion, it orders the primaries a pair has had.", stats.number("epoch"))
        out.counterValue("tandem_failovers_total", "Automatic promotions of this node (its primary was silent for --failover-after).", stats.number("failovers"))
        out.counterValue("tandem_promotions_total", "Promotions of this node: automatic, manual (tandemctl promote) and at start.", stats.number("promotions"))
        out.gauge("tandem_last_promotion_timestamp_seconds", "Unix time of this node's last promotion (0: never).", stats.number("last_promotion_time"))
        out.counterValue("tandem_reconciled_changes_total", "Changes merged from a peer that stepped down (writes only it had taken).", stats.number("reconciled_changes"))
        out.counterValue("tandem_reconcile_conflicts_total", "Merged keys where both nodes had written (the newer stamp won).", stats.number("reconcile_conflicts"))
        out.gauge("tandem_failover_after_seconds", "--failover-after (0: this node never promotes itself).", stats.number("failover_after_ms").map { $0 / 1000 })
        if stats["replication_offset"] != nil {
            out.gauge("tandem_replication_offset", "Position in the replication history: changes produced (primary) or applied (backup).", stats.number("replication_offset"))
        }
        if stats["full_resyncs"] != nil {
            out.counterValue("tandem_full_resyncs_total", "Full copies sent (primary) or received (backup) since this node took its role.", stats.number("full_resyncs"))
            out.counterValue("tandem_partial_resyncs_total", "Resumptions from the backlog since this node took its role.", stats.number("partial_resyncs"))
        }
        let linkUp = stats["link_state"].map { $0 == "up" || $0 == ReplicaClient.LinkState.streaming.rawValue }
        if let linkUp {
            out.gauge("tandem_replication_link_up", "1 while the replication link to the peer is up (on a backup: streaming changes).", linkUp ? 1 : 0)
        }
        switch role {
        case "primary":
            let state = stats["replication_state"] ?? ""
            var states = Self.replicationStates.map(\.rawValue)
            if !states.contains(state) { states.append(state) }
            for candidate in states {
                out.gauge("tandem_replication_state", "1 for the primary's replication state: sync (writes wait for the backup), degraded_async (a sync wait timed out), resyncing, async_no_backup, async.", candidate == state ? 1 : 0, labels: [("state", candidate)])
            }
            out.gauge("tandem_peer_offset", "The offset the backup has acknowledged.", stats.number("peer_offset"))
            out.gauge("tandem_peer_lag_changes", "Changes the backup has not acknowledged yet.", stats.number("peer_lag_changes"))
            out.gauge("tandem_peer_lag_seconds", "How long the backup has been behind.", stats.number("peer_lag_ms").map { $0 / 1000 })
            out.counterValue("tandem_sync_timeouts_total", "Sync writes answered after --sync-timeout without the backup's acknowledgement.", stats.number("sync_timeouts"))
            out.counterValue("tandem_sync_degradations_total", "Times replication fell back to async until the backup caught up.", stats.number("sync_degradations"))
            out.gauge("tandem_backlog_bytes", "Bytes of recent changes the backlog holds for a returning backup.", stats.number("backlog_bytes"))
            out.gauge("tandem_backlog_capacity_bytes", "The backlog's capacity (--backlog-size).", stats.number("backlog_capacity"))
        case "backup":
            let state = stats["link_state"] ?? ""
            var states = Self.linkStates.map(\.rawValue)
            if !states.contains(state) { states.append(state) }
            for candidate in states {
                out.gauge("tandem_replication_link_state", "1 for the state of the backup's link to its primary.", candidate == state ? 1 : 0, labels: [("state", candidate)])
            }
            if let contact = stats.number("peer_last_contact_ms"), contact >= 0 {
                out.gauge("tandem_peer_last_contact_seconds", "Seconds since the backup last heard from its primary.", contact / 1000)
            }
            out.gauge("tandem_peer_epoch", "The primary's epoch, as it last said.", stats.number("peer_epoch"))
        default:
            break
        }
    }
}

extension NodeMetrics {
    fileprivate func tls(into out: inout Exposition) {
        let tls = context.configuration.tls
        for (name, port) in [("wire", TLSPorts.wire), ("memcached", .memcached)] {
            out.gauge("tandem_tls_enabled", "1 when the port accepts TLS only (--tls-ports), 0 when it is plaintext.", tls?.ports.contains(port) == true ? 1 : 0, labels: [("port", name)])
        }
        out.gauge("tandem_tls_mutual", "1 when the wire port requires client certificates signed by --tls-ca (mutual TLS).", tls.map { $0.isMutual && $0.ports.contains(.wire) } == true ? 1 : 0)
        for (name, port) in [("wire", TLSPorts.wire), ("memcached", .memcached)] {
            out.counter("tandem_tls_handshake_errors_total", "Accepted connections whose TLS handshake failed (plaintext clients, certificates the CA did not sign, no handshake within 10 s).", tls?.handshakeFailures(on: port) ?? 0, labels: [("port", name)])
        }
    }
}

/// `stats`' name–value pairs, looked up by name.
private struct Stats {
    private let values: [String: String]

    init(_ pairs: [(String, String)]) {
        values = Dictionary(pairs, uniquingKeysWith: { first, _ in first })
    }

    subscript(_ name: String) -> String? { values[name] }

    func number(_ name: String) -> Double? {
        values[name].flatMap(Double.init)
    }
}

/// The text being built: the registry's families, then the histograms.
private struct Exposition {
    let registry = PrometheusCollectorRegistry()
    private var histograms: [UInt8] = []

    /// A counter from one of the node's own (unsigned) counters.
    func counter(_ name: String, _ help: String, _ value: UInt64, labels: [(String, String)] = []) {
        registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels).increment(by: Int64(clamping: value))
    }

    /// A counter from a figure `stats` reports (skipped when it does not).
    func counterValue(_ name: String, _ help: String, _ value: Double?, labels: [(String, String)] = []) {
        guard let value, value >= 0 else { return }
        let counter = registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
        if value.rounded() == value, value < 9.2e18 {
            counter.increment(by: Int64(value))
        } else {
            counter.increment(by: value)
        }
    }

    /// A gauge (skipped when the figure is missing).
    func gauge(_ name: String, _ help: String, _ value: Double?, labels: [(String, String)] = []) {
        guard let value else { return }
        registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels).set(to: value)
    }

    /// Names here are written whole (`tandem_…_total`), so the unit part stays empty.
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    struct HistogramSeries {
        var labels: [(String, String)]
        /// Per bucket, not cumulative; one more than the bounds (the unbounded bucket).
        var counts: [UInt64]
        var sum: Double
    }

    /// A histogram family in the text format: `_bucket` lines with cumulative
    /// counts and `le`, then `_sum` and `_count`, per series.
    mutating func histogram(_ name: String, _ help: String, bounds: [Double], series: [HistogramSeries]) {
        histograms.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) histogram\n".utf8)
        for entry in series {
            let labels = entry.labels.map { "\($0.0)=\"\($0.1)\"" }.joined(separator: ",")
            let prefix = labels.isEmpty ? "" : labels + ","
            let plain = labels.isEmpty ? "" : "{\(labels)}"
            var cumulative: UInt64 = 0
            for (index, bound) in bounds.enumerated() {
                cumulative &+= entry.counts[index]
                histograms.append(contentsOf: "\(name)_bucket{\(prefix)le=\"\(bound)\"} \(cumulative)\n".utf8)
            }
            cumulative &+= entry.counts[bounds.count]
            // _count is the +Inf bucket, as the format requires; a scrape that races a
            // recording may see its sum a request behind, which the next scrape settles.
            histograms.append(contentsOf: "\(name)_bucket{\(prefix)le=\"+Inf\"} \(cumulative)\n".utf8)
            histograms.append(contentsOf: "\(name)_sum\(plain) \(entry.sum)\n".utf8)
            histograms.append(contentsOf: "\(name)_count\(plain) \(cumulative)\n".utf8)
        }
    }

    func finish() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8192 + histograms.count)
        registry.emit(into: &bytes)
        bytes.append(contentsOf: histograms)
        return bytes
    }
}
