/*
 * sqlite-floor: what SQLite alone costs per write, with Tandem's schema and
 * settings and batches like Tandem's writer commits, so that the writer's
 * own cost can be told from SQLite's (the floor no writer on this file
 * format can go below).
 *
 *   sqlite-floor --workload mix --keys 50000 --writes 400000
 *   sqlite-floor --workload msm --sessions 25000 --writes 150000 --order hash
 *
 * mix: 2048-byte values on random keys of --keys (workload (c)).
 * msm: per request, `validity:<S>` (20 B) and `<S>` (2048 B) of a random
 *      session; the rows are first stored in --order `session` (a session's
 *      keys one after the other, as Tandem's writer orders a batch) or
 *      `hash` (every key shuffled, so a session's rows have unrelated
 *      neighbours, as a batch written in hash-map order gave them).
 *
 * Prints the CPU time (user + system, this process) per write or request.
 * The kernel's background writeback is not in it, as it is not in tandemd's.
 * Build: make -C Benchmarks/sqlite-floor (needs libsqlite3-dev).
 */
#include <sqlite3.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
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

/* The same statement and bindings as ItemDatabase.upsert. */
static void put(const char *key, int key_length, const unsigned char *value, int value_length) {
    sqlite3_bind_blob(upsert, 1, key, key_length, SQLITE_STATIC);
    sqlite3_bind_blob(upsert, 2, value, value_length, SQLITE_STATIC);
    sqlite3_bind_int64(upsert, 3, 0);
    sqlite3_bind_int64(upsert, 4, 0);
    sqlite3_bind_int64(upsert, 5, (int64_t)cas++);
    check(sqlite3_step(upsert), "upsert");
    sqlite3_reset(upsert);
}

static unsigned char big[2048], small[20];

/* msm's names: 32 hex digits and the node id, with `validity:` for the record. */
static void put_msm(uint64_t session, int validity) {
    char key[64];
    int n = snprintf(key, sizeof key, "%s%016llX%016llX-n1", validity ? "validity:" : "",
                     (unsigned long long)(session * 0x9E3779B97F4A7C15ull), (unsigned long long)session);
    if (validity) put(key, n, small, sizeof small); else put(key, n, big, sizeof big);
}

static void put_mix(uint64_t k) {
    char key[32];
    int n = snprintf(key, sizeof key, "key:%08llu", (unsigned long long)k);
    big[cas % sizeof big] ^= 1; /* every write a different value */
    put(key, n, big, sizeof big);
}

int main(int argc, char **argv) {
    const char *path = "sqlite-floor.sqlite3";
    const char *workload = "mix", *order = "session";
    long keys = 50000, sessions = 25000, writes = 400000, batch = 2500;
    static struct option options[] = {
        {"file", 1, 0, 'f'}, {"workload", 1, 0, 'w'}, {"keys", 1, 0, 'k'}, {"sessions", 1, 0, 's'},
        {"writes", 1, 0, 'n'}, {"batch", 1, 0, 'b'}, {"order", 1, 0, 'o'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0},
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
        default:
            fprintf(stderr, "usage: sqlite-floor [--file F] [--workload mix|msm] [--keys N] [--sessions N]\n"
                            "                    [--writes N] [--batch N] [--order session|hash]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    int msm = strcmp(workload, "msm") == 0;
    if ((!msm && strcmp(workload, "mix") != 0) || (strcmp(order, "session") != 0 && strcmp(order, "hash") != 0) ||
        keys < 1 || sessions < 1 || writes < 1 || batch < 2) {
        fprintf(stderr, "sqlite-floor: bad arguments (--help)\n");
        return 2;
    }
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
    check(sqlite3_exec(db,
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
        "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 8192;"
        "CREATE TABLE items (key BLOB NOT NULL UNIQUE, value BLOB NOT NULL, flags INTEGER NOT NULL,"
        " deadline INTEGER NOT NULL, cas INTEGER NOT NULL);", 0, 0, 0), "schema");
    check(sqlite3_prepare_v2(db,
        "INSERT INTO items (key, value, flags, deadline, cas) VALUES (?1, ?2, ?3, ?4, ?5) "
        "ON CONFLICT (key) DO UPDATE SET value = ?2, flags = ?3, deadline = ?4, cas = ?5", -1, &upsert, 0), "prepare");

    /* Store every key once, in batches, in the chosen order. */
    long rows = msm ? 2 * sessions : keys;
    long *first = malloc(sizeof(long) * rows);
    for (long i = 0; i < rows; i++) first[i] = i;
    if (msm && strcmp(order, "hash") == 0)
        for (long i = rows - 1; i > 0; i--) { long j = (long)(next_random() % (uint64_t)(i + 1)), t = first[i]; first[i] = first[j]; first[j] = t; }
    for (long i = 0; i < rows;) {
        check(sqlite3_exec(db, "BEGIN IMMEDIATE", 0, 0, 0), "begin");
        for (long j = 0; j < batch && i < rows; j++, i++) {
            if (msm) put_msm((uint64_t)first[i] / 2, first[i] & 1); else put_mix((uint64_t)first[i]);
        }
        check(sqlite3_exec(db, "COMMIT", 0, 0, 0), "commit");
    }
    free(first);

    /* The measured part: random writes, committed a batch at a time. */
    double cpu0 = cpu_seconds(), wall0 = wall_seconds();
    long per_batch = msm ? batch / 2 : batch;
    for (long i = 0; i < writes;) {
        check(sqlite3_exec(db, "BEGIN IMMEDIATE", 0, 0, 0), "begin");
        for (long j = 0; j < per_batch && i < writes; j++, i++) {
            if (msm) {
                uint64_t s = next_random() % (uint64_t)sessions;
                put_msm(s, 1);
                put_msm(s, 0);
            } else {
                put_mix(next_random() % (uint64_t)keys);
            }
        }
        check(sqlite3_exec(db, "COMMIT", 0, 0, 0), "commit");
    }
    double cpu = cpu_seconds() - cpu0, wall = wall_seconds() - wall0;
    printf("sqlite-floor: workload %s%s%s, %ld %s in %.2f s (%.2f s CPU): %.2f us of CPU per %s\n",
           workload, msm ? ", order " : "", msm ? order : "", writes, msm ? "requests (2 writes each)" : "writes",
           wall, cpu, cpu / writes * 1e6, msm ? "request" : "write");
    sqlite3_finalize(upsert);
    sqlite3_close(db);
    return 0;
}
