/*
 * sqlite-floor: what SQLite alone costs per write, with Tandem's schema and
 * settings and batches like Tandem's writer commits, so that the writer's
 * own cost can be told from SQLite's (the floor no writer on this file
 * format can go below).
 *
 *   sqlite-floor --workload mix --keys 50000 --writes 400000
 *   sqlite-floor --workload msm --sessions 25000 --writes 150000 --order hash
 *   sqlite-floor --layout log --segments table --page-size 16384 --workload mix --writes 200000
 *
 * mix: 2048-byte values on random keys of --keys (workload (c)).
 * msm: per request, `validity:<S>` (20 B) and `<S>` (2048 B) of a random
 *      session; the rows are first stored in --order `session` (a session's
 *      keys one after the other, as Tandem's writer orders a batch) or
 *      `hash` (every key shuffled, so a session's rows have unrelated
 *      neighbours, as a batch written in hash-map order gave them).
 *
 * --layout items (the default): today's file, one row per key, upsert on
 *      `key UNIQUE`.
 * --layout log: every change appended as a new row in commit order (rowid =
 *      a global sequence number), the newest row of a key being its value.
 *      The program keeps what the server would keep in RAM, a map key ->
 *      (segment, seq, size), and accounts live and garbage bytes per
 *      segment (a run of --segment-mb of appended rows). After each commit
 *      batch, while the rows on disk exceed --disk-ratio times the live
 *      bytes, it compacts a victim segment (--victim garbage: the one with
 *      the most garbage; oldest: the first): the victim's live rows are
 *      appended again, taking the value from RAM (--compact-from ram) or
 *      reading the victim's rows (disk), then the victim goes, in the same
 *      transaction. How it goes is --segments:
 *        range  one table `log`; `DELETE FROM log WHERE seq BETWEEN lo AND hi`
 *        table  one table per segment, `seg_000123`; `DROP TABLE`
 *      --hints writes, when a segment is sealed, one row of `hints` holding
 *      the headers of its rows (key, seq, flags, deadline, cas, size) so
 *      that recovery need not read the values (Bitcask's hint files).
 *      The log is measured at its steady state: --warmup writes (default 3x
 *      the keys) first fill the file to the ratio, unmeasured.
 *
 * Both layouts: --page-size (4096 by default, today's), --secure-delete
 * on|off|fast (by default what libsqlite3 was built with: Debian builds it
 * with SECURE_DELETE, which zeroes and rewrites every freed page), --mmap
 * (the writer maps the file), --checkpoint-pages (default 32 MB of WAL, as
 * today's 8,192 pages of 4 KB).
 *
 * After the writes, --reads N measures N point reads of the value of a
 * random key by its rowid from a second connection (what a cold `get` costs
 * a reader thread): warm (the reader's cache holds the file), cold-ish (a
 * 2 MB cache: every read a pread from the kernel's page cache), cold-ish
 * through mmap, and cold (the file's pages dropped from the kernel's cache
 * with posix_fadvise; CPU and wall time). --scan measures recovery: reading
 * every row's header in sequence order into a hash map of keys, the newest
 * version winning (and, with --hints, the same from the hints).
 *
 * Prints the CPU time (user + system, this process) per write or request.
 * The kernel's background writeback is not in it, as it is not in tandemd's.
 * The last line, `details:`, repeats every figure as name=value.
 * Build: make -C Benchmarks/sqlite-floor (needs libsqlite3-dev).
 */
#include <sqlite3.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static sqlite3 *db;
static sqlite3_stmt *upsert;
static uint64_t cas = 1;

static void check(int rc, const char *what) {
    if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
    fprintf(stderr, "sqlite-floor: %s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
}

static void exec(const char *sql) { check(sqlite3_exec(db, sql, 0, 0, 0), sql); }

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static double system_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

/* Finer than getrusage, for the parts of a run (compaction). */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double wall_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t next_random(void) {
    static uint64_t state = 0x9E3779B97F4A7C15ull;
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return state;
}

/* ---- options ---- */

static int log_layout, table_segments, hints, compact_from_disk, victim_oldest, msm;
static long page_size = 4096, segment_bytes = 16l << 20, reads, checkpoint_pages;
static double disk_ratio = 2.0;
static int scan, writer_mmap;
static const char *secure_delete = "";
static long key_count_value;

/* ---- today's layout ---- */

/* The same statement and bindings as ItemDatabase.upsert. */
static void put_items(const char *key, int key_length, const unsigned char *value, int value_length) {
    sqlite3_bind_blob(upsert, 1, key, key_length, SQLITE_STATIC);
    sqlite3_bind_blob(upsert, 2, value, value_length, SQLITE_STATIC);
    sqlite3_bind_int64(upsert, 3, 0);
    sqlite3_bind_int64(upsert, 4, 0);
    sqlite3_bind_int64(upsert, 5, (int64_t)cas++);
    check(sqlite3_step(upsert), "upsert");
    sqlite3_reset(upsert);
}

/* ---- the log layout ---- */

/* What the server keeps in RAM per key: where its newest row is. */
struct location { int32_t segment; int32_t size; int64_t seq; };

struct segment {
    int64_t low, high;            /* seq range: rows low ... high (high = low - 1 while empty) */
    int64_t live_bytes, total_bytes;
    int32_t *key_of;              /* key id of each row, by seq - low */
    long capacity;
    int alive, sealed;
    sqlite3_stmt *insert;         /* table layout: the head's insert */
};

static struct location *where;    /* by key id */
static struct segment *segments;
static long segment_count, segment_capacity, head = -1, live_segments;
static int64_t next_seq = 1, live_bytes, disk_bytes; /* accounted: key + value bytes */
static long copied_rows, compactions;
static double compaction_cpu;
static sqlite3_stmt *log_insert, *hint_insert;
static int in_compaction;

static void segment_table(long id, char *name, size_t size) { snprintf(name, size, "seg_%06ld", id); }

/* The key of a key id, as the workloads name them. */
static int key_name(long id, char *key, size_t size) {
    if (!msm) return snprintf(key, size, "key:%08llu", (unsigned long long)id);
    uint64_t session = (uint64_t)id / 2;
    return snprintf(key, size, "%s%016llX%016llX-n1", (id & 1) ? "validity:" : "",
                    (unsigned long long)(session * 0x9E3779B97F4A7C15ull), (unsigned long long)session);
}

static void write_hints(long id);
static unsigned char big[2048], small[20];

static void open_segment(void) {
    if (head >= 0) {
        segments[head].sealed = 1;
        if (segments[head].insert) { sqlite3_finalize(segments[head].insert); segments[head].insert = 0; }
        if (hints) write_hints(head);
    }
    if (segment_count == segment_capacity) {
        segment_capacity = segment_capacity ? 2 * segment_capacity : 64;
        segments = realloc(segments, sizeof *segments * segment_capacity);
    }
    struct segment *s = &segments[segment_count];
    memset(s, 0, sizeof *s);
    s->low = next_seq;
    s->high = next_seq - 1;
    s->alive = 1;
    s->capacity = segment_bytes / 1024 + 16;
    s->key_of = malloc(sizeof(int32_t) * s->capacity);
    head = segment_count++;
    live_segments++;
    if (table_segments) {
        char name[32], sql[512];
        segment_table(head, name, sizeof name);
        snprintf(sql, sizeof sql, "CREATE TABLE %s (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, flags INTEGER NOT NULL,"
                 " deadline INTEGER NOT NULL, cas INTEGER NOT NULL, value BLOB NOT NULL)", name);
        exec(sql);
        snprintf(sql, sizeof sql, "INSERT INTO %s (seq, key, flags, deadline, cas, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", name);
        check(sqlite3_prepare_v2(db, sql, -1, &s->insert, 0), "prepare insert");
    }
}

/* Appends a version of key `id` (key and value copied by SQLite unless `stable`). */
static void append(long id, const void *key, int key_length, const void *value, int value_length,
                   uint32_t flags, int64_t deadline, uint64_t version, int stable) {
    if (head < 0 || segments[head].total_bytes >= segment_bytes) open_segment();
    struct segment *s = &segments[head];
    sqlite3_stmt *insert = table_segments ? s->insert : log_insert;
    int64_t seq = next_seq++;
    sqlite3_bind_int64(insert, 1, seq);
    sqlite3_bind_blob(insert, 2, key, key_length, stable ? SQLITE_STATIC : SQLITE_TRANSIENT);
    sqlite3_bind_int64(insert, 3, flags);
    sqlite3_bind_int64(insert, 4, deadline);
    sqlite3_bind_int64(insert, 5, (int64_t)version);
    sqlite3_bind_blob(insert, 6, value, value_length, stable ? SQLITE_STATIC : SQLITE_TRANSIENT);
    check(sqlite3_step(insert), "append");
    sqlite3_reset(insert);
    int32_t size = key_length + value_length;
    struct location *w = &where[id];
    if (w->seq) {
        segments[w->segment].live_bytes -= w->size;
        live_bytes -= w->size;
    }
    w->segment = (int32_t)head;
    w->seq = seq;
    w->size = size;
    if (s->high - s->low + 1 == s->capacity) {
        s->capacity *= 2;
        s->key_of = realloc(s->key_of, sizeof(int32_t) * s->capacity);
    }
    s->key_of[seq - s->low] = (int32_t)id;
    s->high = seq;
    s->live_bytes += size;
    s->total_bytes += size;
    live_bytes += size;
    disk_bytes += size;
}

/* A sealed segment's headers, packed: per row u8 key length, key, i64 seq,
 * u32 flags, i64 deadline, u64 cas, u32 value size. */
static void write_hints(long id) {
    struct segment *s = &segments[id];
    long rows = s->high - s->low + 1;
    unsigned char *blob = malloc((size_t)rows * 96), *p = blob;
    for (long i = 0; i < rows; i++) {
        long key_id = s->key_of[i];
        char key[80];
        int n = key_name(key_id, key, sizeof key);
        int64_t seq = s->low + i, deadline = 0;
        uint32_t flags = 0, size = (msm && (key_id & 1)) ? sizeof small : sizeof big;
        uint64_t version = (uint64_t)seq;
        *p++ = (unsigned char)n;
        memcpy(p, key, n); p += n;
        memcpy(p, &seq, 8); p += 8;
        memcpy(p, &flags, 4); p += 4;
        memcpy(p, &deadline, 8); p += 8;
        memcpy(p, &version, 8); p += 8;
        memcpy(p, &size, 4); p += 4;
    }
    sqlite3_bind_int64(hint_insert, 1, id);
    sqlite3_bind_blob(hint_insert, 2, blob, (int)(p - blob), SQLITE_STATIC);
    check(sqlite3_step(hint_insert), "hints");
    sqlite3_reset(hint_insert);
    free(blob);
}

static void put(long id, const char *key, int key_length, const unsigned char *value, int value_length) {
    if (!log_layout) put_items(key, key_length, value, value_length);
    else append(id, key, key_length, value, value_length, 0, 0, cas++, 1);
}

/* msm's names: 32 hex digits and the node id, with `validity:` for the record. */
static void put_msm(uint64_t session, int validity) {
    char key[64];
    long id = (long)(2 * session + (validity ? 1 : 0));
    int n = key_name(id, key, sizeof key);
    if (validity) put(id, key, n, small, sizeof small); else put(id, key, n, big, sizeof big);
}

static void put_mix(uint64_t k) {
    char key[32];
    int n = key_name((long)k, key, sizeof key);
    big[cas % sizeof big] ^= 1; /* every write a different value */
    put((long)k, key, n, big, sizeof big);
}

/* Re-appends the live rows of segment `v`, then removes it. */
static void compact(long v) {
    struct segment *s;
    char name[32], sql[256];
    segment_table(v, name, sizeof name);
    if (!compact_from_disk) {
        /* Values from RAM: only the in-memory map is read. */
        /* `segments` may move when an append opens a segment: indexed, never held. */
        for (int64_t seq = segments[v].low; seq <= segments[v].high; seq++) {
            long id = segments[v].key_of[seq - segments[v].low];
            if (where[id].seq != seq) continue;
            char key[80];
            int n = key_name(id, key, sizeof key);
            int validity = msm && (id & 1);
            append(id, key, n, validity ? small : big, validity ? (int)sizeof small : (int)sizeof big, 0, 0, cas++, 1);
            copied_rows++;
        }
    } else {
        /* Values read back from the victim, each row checked against the map. */
        sqlite3_stmt *select;
        if (table_segments) snprintf(sql, sizeof sql, "SELECT seq, key, flags, deadline, cas, value FROM %s", name);
        else snprintf(sql, sizeof sql, "SELECT seq, key, flags, deadline, cas, value FROM log WHERE seq BETWEEN %lld AND %lld",
                      (long long)segments[v].low, (long long)segments[v].high);
        check(sqlite3_prepare_v2(db, sql, -1, &select, 0), "prepare compaction read");
        int rc;
        while ((rc = sqlite3_step(select)) == SQLITE_ROW) {
            int64_t seq = sqlite3_column_int64(select, 0);
            long id = segments[v].key_of[seq - segments[v].low];
            if (where[id].seq != seq) continue;
            append(id, sqlite3_column_blob(select, 1), sqlite3_column_bytes(select, 1),
                   sqlite3_column_blob(select, 5), sqlite3_column_bytes(select, 5),
                   (uint32_t)sqlite3_column_int64(select, 2), sqlite3_column_int64(select, 3), cas++, 0);
            copied_rows++;
        }
        check(rc, "compaction read");
        sqlite3_finalize(select);
    }
    s = &segments[v];
    if (table_segments) {
        snprintf(sql, sizeof sql, "DROP TABLE %s", name);
    } else {
        snprintf(sql, sizeof sql, "DELETE FROM log WHERE seq BETWEEN %lld AND %lld", (long long)s->low, (long long)s->high);
    }
    exec(sql);
    if (hints) {
        snprintf(sql, sizeof sql, "DELETE FROM hints WHERE segment = %ld", v);
        exec(sql);
    }
    disk_bytes -= s->total_bytes;
    s->alive = 0;
    free(s->key_of);
    s->key_of = 0;
    live_segments--;
    compactions++;
}

/* After a batch: compact while the log holds more than --disk-ratio x live. */
static void maintain(void) {
    if (disk_ratio <= 0 || in_compaction) return;
    in_compaction = 1;
    double t0 = cpu_now();
    while (disk_bytes > disk_ratio * live_bytes) {
        long victim = -1;
        for (long i = 0; i < segment_count; i++) {
            struct segment *s = &segments[i];
            if (!s->alive || !s->sealed) continue;
            if (victim_oldest) { victim = i; break; }
            if (victim < 0 || s->total_bytes - s->live_bytes > segments[victim].total_bytes - segments[victim].live_bytes) victim = i;
        }
        /* Nothing sealed, or nothing to gain: the live data itself is too large. */
        if (victim < 0 || segments[victim].live_bytes * 10 > segments[victim].total_bytes * 9) break;
        compact(victim);
    }
    compaction_cpu += cpu_now() - t0;
    in_compaction = 0;
}

/* ---- reading it back ---- */

static long file_bytes(const char *path, const char *suffix) {
    char name[4096];
    struct stat st;
    snprintf(name, sizeof name, "%s%s", path, suffix);
    return stat(name, &st) == 0 ? (long)st.st_size : 0;
}

/* The statement reading one row by seq: per segment for the table layout. */
static sqlite3_stmt **read_statements;

static sqlite3_stmt *read_statement(sqlite3 *reader, long segment) {
    long slot = table_segments ? segment : 0;
    if (!read_statements[slot]) {
        char sql[128], name[32];
        segment_table(segment, name, sizeof name);
        snprintf(sql, sizeof sql, "SELECT value FROM %s WHERE seq = ?1", table_segments ? name : "log");
        if (sqlite3_prepare_v2(reader, sql, -1, &read_statements[slot], 0) != SQLITE_OK) {
            fprintf(stderr, "sqlite-floor: prepare read: %s\n", sqlite3_errmsg(reader));
            exit(1);
        }
    }
    return read_statements[slot];
}

/* n random point reads by rowid; returns CPU and wall microseconds per read. */
static void point_reads(const char *path, long n, long cache_kib, int mmap, int drop, double *cpu_us, double *wall_us) {
    sqlite3 *reader;
    if (sqlite3_open_v2(path, &reader, SQLITE_OPEN_READONLY, 0) != SQLITE_OK) { fprintf(stderr, "open reader\n"); exit(1); }
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA cache_size = -%ld; PRAGMA mmap_size = %lld", cache_kib, mmap ? 1ll << 40 : 0ll);
    sqlite3_exec(reader, sql, 0, 0, 0);
    read_statements = calloc((size_t)segment_count + 1, sizeof *read_statements);
    long keys = key_count_value;
    if (!drop && cache_kib > 65536) {
        /* Warm: every row once through this connection's cache first. */
        for (long id = 0; id < keys; id++) {
            sqlite3_stmt *st = read_statement(reader, where[id].segment);
            sqlite3_bind_int64(st, 1, where[id].seq);
            if (sqlite3_step(st) != SQLITE_ROW) { fprintf(stderr, "sqlite-floor: row %ld missing\n", id); exit(1); }
            sqlite3_reset(st);
        }
    }
    if (drop) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) { fdatasync(fd); posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); close(fd); }
    }
    long bytes = 0;
    double c0 = cpu_now(), w0 = wall_seconds();
    for (long i = 0; i < n; i++) {
        long id = (long)(next_random() % (uint64_t)keys);
        sqlite3_stmt *st = read_statement(reader, where[id].segment);
        sqlite3_bind_int64(st, 1, where[id].seq);
        if (sqlite3_step(st) != SQLITE_ROW) { fprintf(stderr, "sqlite-floor: row %ld missing\n", id); exit(1); }
        bytes += sqlite3_column_bytes(st, 0);
        sqlite3_reset(st);
    }
    *cpu_us = (cpu_now() - c0) / n * 1e6;
    *wall_us = (wall_seconds() - w0) / n * 1e6;
    for (long i = 0; i <= segment_count; i++) if (read_statements[i]) sqlite3_finalize(read_statements[i]);
    free(read_statements);
    sqlite3_close(reader);
    if (bytes == 0) exit(1);
}

/* Recovery's map: key -> newest (seq, flags, deadline, cas, size). */
struct header { uint64_t hash; int64_t seq, deadline; uint64_t version; uint32_t flags, size; uint32_t key_at; uint8_t key_length; };
static struct header *map;
static char *arena;
static long map_size, map_count, arena_used, arena_capacity;

static uint64_t hash_bytes(const void *p, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h | 1;
}

static void map_reset(long expected) {
    free(map); free(arena);
    map_size = 16;
    while (map_size < 2 * expected) map_size *= 2;
    map = calloc((size_t)map_size, sizeof *map);
    arena_capacity = expected * 48 + 4096;
    arena = malloc((size_t)arena_capacity);
    map_count = arena_used = 0;
}

/* One row seen by recovery: it wins if it is newer than what the map holds. */
static void recover_row(const void *key, int n, int64_t seq, uint32_t flags, int64_t deadline, uint64_t version, uint32_t size) {
    uint64_t h = hash_bytes(key, n);
    long i = (long)(h & (uint64_t)(map_size - 1));
    while (map[i].hash) {
        if (map[i].hash == h && map[i].key_length == n && memcmp(arena + map[i].key_at, key, n) == 0) {
            if (seq > map[i].seq) { map[i].seq = seq; map[i].flags = flags; map[i].deadline = deadline; map[i].version = version; map[i].size = size; }
            return;
        }
        i = (i + 1) & (map_size - 1);
    }
    if (arena_used + n > arena_capacity) { arena_capacity *= 2; arena = realloc(arena, (size_t)arena_capacity); }
    memcpy(arena + arena_used, key, n);
    map[i] = (struct header){h, seq, deadline, version, flags, size, (uint32_t)arena_used, (uint8_t)n};
    arena_used += n;
    map_count++;
}

/* Scans the log's rows (headers only) into the map; returns rows read. */
static long scan_rows(sqlite3 *reader, long from_segment) {
    long rows = 0;
    for (long i = table_segments ? from_segment : 0; i < (table_segments ? segment_count : 1); i++) {
        if (table_segments && !segments[i].alive) continue;
        char sql[160], name[32];
        segment_table(i, name, sizeof name);
        int64_t low = (!table_segments && from_segment > 0) ? segments[from_segment].low : 0;
        snprintf(sql, sizeof sql, "SELECT seq, key, flags, deadline, cas, length(value) FROM %s WHERE seq >= %lld ORDER BY seq",
                 table_segments ? name : "log", (long long)low);
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(reader, sql, -1, &st, 0) != SQLITE_OK) { fprintf(stderr, "scan: %s\n", sqlite3_errmsg(reader)); exit(1); }
        while (sqlite3_step(st) == SQLITE_ROW) {
            recover_row(sqlite3_column_blob(st, 1), sqlite3_column_bytes(st, 1), sqlite3_column_int64(st, 0),
                        (uint32_t)sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3),
                        (uint64_t)sqlite3_column_int64(st, 4), (uint32_t)sqlite3_column_int64(st, 5));
            rows++;
        }
        sqlite3_finalize(st);
    }
    return rows;
}

/* Recovery from the hints of sealed segments plus a scan of the open one. */
static long scan_hints(sqlite3 *reader) {
    long rows = 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(reader, "SELECT segment, data FROM hints ORDER BY segment", -1, &st, 0) != SQLITE_OK) exit(1);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *p = sqlite3_column_blob(st, 1), *end = p + sqlite3_column_bytes(st, 1);
        while (p < end) {
            int n = *p++;
            const unsigned char *key = p;
            int64_t seq, deadline; uint32_t flags, size; uint64_t version;
            p += n;
            memcpy(&seq, p, 8); p += 8;
            memcpy(&flags, p, 4); p += 4;
            memcpy(&deadline, p, 8); p += 8;
            memcpy(&version, p, 8); p += 8;
            memcpy(&size, p, 4); p += 4;
            recover_row(key, n, seq, flags, deadline, version, size);
            rows++;
        }
    }
    sqlite3_finalize(st);
    return rows + scan_rows(reader, head);
}


int main(int argc, char **argv) {
    const char *path = "sqlite-floor.sqlite3";
    const char *workload = "mix", *order = "session", *layout = "items", *segment_kind = "table";
    const char *victim = "garbage", *compact_from = "ram";
    long keys = 50000, sessions = 25000, writes = 400000, batch = 2500, warmup = -1;
    double segment_mb = 16;
    static struct option options[] = {
        {"file", 1, 0, 'f'}, {"workload", 1, 0, 'w'}, {"keys", 1, 0, 'k'}, {"sessions", 1, 0, 's'},
        {"writes", 1, 0, 'n'}, {"batch", 1, 0, 'b'}, {"order", 1, 0, 'o'}, {"help", 0, 0, 'h'},
        {"layout", 1, 0, 'L'}, {"segments", 1, 0, 'S'}, {"segment-mb", 1, 0, 'M'}, {"disk-ratio", 1, 0, 'R'},
        {"victim", 1, 0, 'V'}, {"compact-from", 1, 0, 'C'}, {"page-size", 1, 0, 'P'}, {"warmup", 1, 0, 'W'},
        {"reads", 1, 0, 'r'}, {"scan", 0, 0, 'c'}, {"hints", 0, 0, 'H'}, {"checkpoint-pages", 1, 0, 'K'},
        {"mmap", 0, 0, 'm'}, {"secure-delete", 1, 0, 'D'},
        {0, 0, 0, 0},
    };
    for (int c; (c = getopt_long(argc, argv, "", options, 0)) != -1;) {
        switch (c) {
        case 'f': path = optarg; break;
        case 'w': workload = optarg; break;
        case 'k': keys = atol(optarg); break;
        case 's': sessions = atol(optarg); break;
        case 'n': writes = atol(optarg); break;
        case 'b': batch = atol(optarg); break;
        case 'o': order = optarg; break;
        case 'L': layout = optarg; break;
        case 'S': segment_kind = optarg; break;
        case 'M': segment_mb = atof(optarg); break;
        case 'R': disk_ratio = atof(optarg); break;
        case 'V': victim = optarg; break;
        case 'C': compact_from = optarg; break;
        case 'P': page_size = atol(optarg); break;
        case 'W': warmup = atol(optarg); break;
        case 'r': reads = atol(optarg); break;
        case 'c': scan = 1; break;
        case 'H': hints = 1; break;
        case 'K': checkpoint_pages = atol(optarg); break;
        case 'm': writer_mmap = 1; break;
        case 'D': secure_delete = optarg; break;
        default:
            fprintf(stderr,
                "usage: sqlite-floor [--file F] [--workload mix|msm] [--keys N] [--sessions N]\n"
                "                    [--writes N] [--batch N] [--order session|hash] [--page-size B]\n"
                "                    [--layout items|log] [--warmup N] [--reads N] [--scan] [--checkpoint-pages N] [--mmap]\n"
                "                    [--secure-delete on|off|fast (default: as libsqlite3 was built)]\n"
                "  log layout:       [--segments table|range] [--segment-mb MB] [--disk-ratio R (0: never compact)]\n"
                "                    [--victim garbage|oldest] [--compact-from ram|disk] [--hints]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    msm = strcmp(workload, "msm") == 0;
    log_layout = strcmp(layout, "log") == 0;
    table_segments = strcmp(segment_kind, "table") == 0;
    victim_oldest = strcmp(victim, "oldest") == 0;
    compact_from_disk = strcmp(compact_from, "disk") == 0;
    segment_bytes = (long)(segment_mb * (1 << 20));
    if ((!msm && strcmp(workload, "mix") != 0) || (strcmp(order, "session") != 0 && strcmp(order, "hash") != 0) ||
        (!log_layout && strcmp(layout, "items") != 0) || (!table_segments && strcmp(segment_kind, "range") != 0) ||
        (!victim_oldest && strcmp(victim, "garbage") != 0) || (!compact_from_disk && strcmp(compact_from, "ram") != 0) ||
        (page_size & (page_size - 1)) || page_size < 512 || page_size > 65536 || segment_bytes < 65536 ||
        keys < 1 || sessions < 1 || writes < 1 || batch < 2 || (hints && !(log_layout && table_segments)) ||
        ((reads || scan) && !log_layout) ||
        (*secure_delete && strcmp(secure_delete, "on") && strcmp(secure_delete, "off") && strcmp(secure_delete, "fast"))) {
        fprintf(stderr, "sqlite-floor: bad arguments (--help)\n");
        return 2;
    }
    /* Today's WAL length at a checkpoint: 8,192 pages of 4 KB (32 MB). */
    if (checkpoint_pages <= 0) checkpoint_pages = (32l << 20) / page_size;
    /* The log is measured at its steady state: after the disk has filled to
     * the ratio and compaction runs. */
    if (warmup < 0) warmup = log_layout ? 3 * (msm ? sessions : keys) : 0;
    /* A fresh file every run. */
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char name[4096];
        snprintf(name, sizeof name, "%s%s", path, suffixes[i]);
        unlink(name);
    }
    memset(big, 'x', sizeof big);
    memset(small, 'v', sizeof small);

    check(sqlite3_open(path, &db), "open");
    /* ItemDatabase's settings; SQLite's own checkpoints stand in for the
     * Checkpointer thread at the WAL length where the writer asks for one. */
    char settings[512];
    snprintf(settings, sizeof settings,
        "PRAGMA page_size = %ld; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
        "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = %ld;", page_size, checkpoint_pages);
    exec(settings);
    /* --mmap: the writer reads the file's pages (a dropped table's, the
     * freelist's) through a map instead of copying them with pread. */
    if (writer_mmap) exec("PRAGMA mmap_size = 1099511627776");
    /* Debian's libsqlite3 is built with SECURE_DELETE: every freed page
     * and deleted row is overwritten with zeros, and so written again. */
    if (*secure_delete) {
        snprintf(settings, sizeof settings, "PRAGMA secure_delete = %s", secure_delete);
        exec(settings);
    }
    if (!log_layout) {
        exec("CREATE TABLE items (key BLOB NOT NULL UNIQUE, value BLOB NOT NULL, flags INTEGER NOT NULL,"
             " deadline INTEGER NOT NULL, cas INTEGER NOT NULL);");
        check(sqlite3_prepare_v2(db,
            "INSERT INTO items (key, value, flags, deadline, cas) VALUES (?1, ?2, ?3, ?4, ?5) "
            "ON CONFLICT (key) DO UPDATE SET value = ?2, flags = ?3, deadline = ?4, cas = ?5", -1, &upsert, 0), "prepare");
    } else {
        exec("CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;");
        if (hints) {
            exec("CREATE TABLE hints (segment INTEGER PRIMARY KEY, data BLOB NOT NULL);");
            check(sqlite3_prepare_v2(db, "INSERT INTO hints (segment, data) VALUES (?1, ?2)", -1, &hint_insert, 0), "prepare hints");
        }
        if (!table_segments) {
            exec("CREATE TABLE log (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, flags INTEGER NOT NULL,"
                 " deadline INTEGER NOT NULL, cas INTEGER NOT NULL, value BLOB NOT NULL);");
            check(sqlite3_prepare_v2(db, "INSERT INTO log (seq, key, flags, deadline, cas, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                     -1, &log_insert, 0), "prepare");
        }
    }
    long rows = msm ? 2 * sessions : keys;
    key_count_value = rows;
    where = calloc((size_t)rows, sizeof *where);

    /* Store every key once, in batches, in the chosen order. */
    long *first = malloc(sizeof(long) * rows);
    for (long i = 0; i < rows; i++) first[i] = i;
    if (msm && strcmp(order, "hash") == 0)
        for (long i = rows - 1; i > 0; i--) { long j = (long)(next_random() % (uint64_t)(i + 1)), t = first[i]; first[i] = first[j]; first[j] = t; }
    for (long i = 0; i < rows;) {
        exec("BEGIN IMMEDIATE");
        for (long j = 0; j < batch && i < rows; j++, i++) {
            if (msm) put_msm((uint64_t)first[i] / 2, first[i] & 1); else put_mix((uint64_t)first[i]);
        }
        if (log_layout) maintain();
        exec("COMMIT");
    }
    free(first);

    /* Random writes, committed a batch at a time: --warmup unmeasured, then --writes. */
    long per_batch = msm ? batch / 2 : batch;
    double cpu0 = 0, wall0 = 0, sys0 = 0;
    long copied0 = 0, compactions0 = 0;
    for (int phase = warmup > 0 ? 0 : 1; phase < 2; phase++) {
        long count = phase == 0 ? warmup : writes;
        if (phase == 1) {
            cpu0 = cpu_seconds(); wall0 = wall_seconds(); sys0 = system_seconds();
            copied0 = copied_rows; compactions0 = compactions; compaction_cpu = 0;
        }
        for (long i = 0; i < count;) {
            exec("BEGIN IMMEDIATE");
            for (long j = 0; j < per_batch && i < count; j++, i++) {
                if (msm) {
                    /* The session's own key first, then its validity record (RowPlacement's order). */
                    uint64_t s = next_random() % (uint64_t)sessions;
                    if (log_layout) { put_msm(s, 0); put_msm(s, 1); }
                    else { put_msm(s, 1); put_msm(s, 0); }
                } else {
                    put_mix(next_random() % (uint64_t)keys);
                }
            }
            if (log_layout) maintain();
            exec("COMMIT");
        }
    }
    double cpu = cpu_seconds() - cpu0, wall = wall_seconds() - wall0, sys = system_seconds() - sys0;
    printf("sqlite-floor: workload %s%s%s, %ld %s in %.2f s (%.2f s CPU): %.2f us of CPU per %s\n",
           workload, msm ? ", order " : "", msm ? order : "", writes, msm ? "requests (2 writes each)" : "writes",
           wall, cpu, cpu / writes * 1e6, msm ? "request" : "write");
    if (upsert) sqlite3_finalize(upsert);
    if (!log_layout) {
        sqlite3_close(db);
        return 0;
    }

    /* The log: what compaction cost, and the file against the live data. */
    long copied = copied_rows - copied0;
    double per = cpu / writes * 1e6, compaction_per = compaction_cpu / writes * 1e6;
    long db_bytes = file_bytes(path, ""), wal_bytes = file_bytes(path, "-wal");
    sqlite3_stmt *st;
    long free_pages = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA freelist_count", -1, &st, 0) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        free_pages = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    printf("log: %s segments of %.0f MB, %ld-byte pages, disk ratio %.1f, victim %s, values from %s%s:\n"
           "  compaction %.2f us of the %.2f (%.0f%%; system %.2f us), %.3f rows copied per write, %ld compactions\n"
           "  file %.1f MB + WAL %.1f MB (%.1f MB free pages) for %.1f MB live: file/live %.2f, (file+WAL)/live %.2f; %ld segments\n",
           table_segments ? "table" : "range", segment_mb, page_size, disk_ratio, victim, compact_from, hints ? ", hints" : "",
           compaction_per, per, per > 0 ? 100 * compaction_per / per : 0, sys / writes * 1e6, (double)copied / (msm ? 2.0 * writes : writes),
           compactions - compactions0, db_bytes / 1048576.0, wal_bytes / 1048576.0, free_pages * page_size / 1048576.0,
           live_bytes / 1048576.0, (double)db_bytes / live_bytes, (double)(db_bytes + wal_bytes) / live_bytes, live_segments);
    /* Readers and recovery see a file with everything checkpointed. */
    exec("PRAGMA wal_checkpoint(TRUNCATE)");
    double warm_cpu = 0, warm_wall = 0, coldish_cpu = 0, coldish_wall = 0, mmap_cpu = 0, mmap_wall = 0, cold_cpu = 0, cold_wall = 0;
    if (reads > 0) {
        point_reads(path, reads, 1l << 20, 0, 0, &warm_cpu, &warm_wall);
        point_reads(path, reads, 2000, 0, 0, &coldish_cpu, &coldish_wall);
        point_reads(path, reads, 2000, 1, 0, &mmap_cpu, &mmap_wall);
        point_reads(path, reads, 2000, 0, 1, &cold_cpu, &cold_wall);
        printf("  point read by rowid, us per read (CPU / wall): warm %.2f / %.2f, cold-ish %.2f / %.2f,"
               " cold-ish mmap %.2f / %.2f, cold (dropped from page cache) %.2f / %.2f\n",
               warm_cpu, warm_wall, coldish_cpu, coldish_wall, mmap_cpu, mmap_wall, cold_cpu, cold_wall);
    }
    double scan_us = 0, hint_us = 0, scan_cold_us = 0;
    long scanned = 0, hinted = 0;
    if (scan) {
        sqlite3 *reader;
        for (int pass = 0; pass < (hints ? 3 : 2); pass++) {
            if (pass == 1) { /* the same scan with the file dropped from the page cache */
                int fd = open(path, O_RDONLY);
                if (fd >= 0) { posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); close(fd); }
            }
            check(sqlite3_open_v2(path, &reader, SQLITE_OPEN_READONLY, 0), "open reader");
            sqlite3_exec(reader, "PRAGMA mmap_size = 1099511627776", 0, 0, 0); /* as recovery reads today */
            map_reset(rows);
            double c0 = cpu_now();
            long n = pass < 2 ? scan_rows(reader, 0) : scan_hints(reader);
            double us = (cpu_now() - c0) / n * 1e6;
            if (map_count != rows) { fprintf(stderr, "sqlite-floor: recovery found %ld keys of %ld\n", map_count, rows); exit(1); }
            if (pass == 0) { scan_us = us; scanned = n; } else if (pass == 1) scan_cold_us = us; else { hint_us = us; hinted = n; }
            sqlite3_close(reader);
        }
        printf("  recovery: scan %ld rows, %.3f us CPU per row (%.2f s per million; file not in page cache %.3f)",
               scanned, scan_us, scan_us, scan_cold_us);
        if (hints) printf("; from hints %ld rows, %.3f us per row (%.2f s per million)", hinted, hint_us, hint_us);
        printf("\n");
    }
    printf("details: layout=log segments=%s segment_mb=%g page=%ld ratio=%g victim=%s from=%s hints=%d mmap=%d secure_delete=%s workload=%s"
           " us_per_write=%.3f system_us=%.3f compaction_us=%.3f copied_per_write=%.4f file_over_live=%.3f filewal_over_live=%.3f"
           " read_warm=%.3f read_coldish=%.3f read_mmap=%.3f read_cold_cpu=%.3f read_cold_wall=%.3f"
           " scan_us=%.4f scan_cold_us=%.4f hint_us=%.4f\n",
           table_segments ? "table" : "range", segment_mb, page_size, disk_ratio, victim, compact_from, hints, writer_mmap, *secure_delete ? secure_delete : "default", workload,
           per, sys / writes * 1e6, compaction_per, (double)copied / (msm ? 2.0 * writes : writes), (double)db_bytes / live_bytes,
           (double)(db_bytes + wal_bytes) / live_bytes, warm_cpu, coldish_cpu, mmap_cpu, cold_cpu, cold_wall,
           scan_us, scan_cold_us, hint_us);
    sqlite3_close(db);
    return 0;
}
