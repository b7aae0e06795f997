/*
 * tandem-load: a verifying load generator for the memcached text protocol,
 * and for Redis's RESP (--protocol resp), so that Tandem, memcached and Redis
 * are driven by the same generator doing the same work.
 *
 * Many connections on few threads (one epoll loop per thread), closed loop
 * (--pipeline requests in flight per connection) or open loop (--rate: each
 * connection sends on a fixed schedule and latency is measured from the
 * scheduled send time, so a stalled server cannot hide behind the client
 * waiting for it: no coordinated omission).
 *
 * Every reply is checked byte for byte.  A value is a pure function of its
 * key, its length and a generation number written into the value itself:
 *
 *   bytes 0..7    generation, 8 uppercase hex digits
 *   bytes 8..15   low 32 bits of h = mix(key id, generation, length), hex
 *   bytes 16..    xorshift64* stream seeded with h (binary, any byte,
 *                 including \r and \n)
 *
 * so whatever generation another connection stored last, a reader can
 * regenerate the exact bytes it must receive.  Values shorter than 16 bytes
 * are the stream alone, generation 0.  Gets of keys known to be stored must
 * hit, `ping-n1` must miss, sets must answer STORED, touches TOUCHED; any
 * other byte is an error and the exit status is 1 when errors > 0.
 *
 * Build: cc -O2 -pthread -o tandem-load tandem-load.c   (or: make)
 * Usage: tandem-load --help
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* limits                                                                   */

#define MAX_DURATION_S      3600.0  /* hard cap on --duration / --max-time */
#define DEFAULT_MAX_TIME_S  600.0   /* cap for --requests runs without --duration */
#define PRELOAD_TIMEOUT_S   300.0
#define CONNECT_TIMEOUT_MS  5000
#define MAX_LINE            1024    /* a reply line longer than this is garbage */
#define MAX_VALUE           (1 << 20)
#define MAX_KEYS            100000000ULL
#define MAX_SAMPLES         5

/* ------------------------------------------------------------------------ */
/* time                                                                     */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void cpu_split(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* utime+stime of another process, in seconds, from /proc/PID/stat (and each
   apart, when user/sys are given); -1 if unknown */
static double proc_cpu_seconds(int pid, double *user, double *sys) {
    if (pid <= 0) return -1;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    /* fields after ")": 3 state, 4 ppid, ... 14 utime, 15 stime */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14) ut = strtoull(tok, NULL, 10);
        if (field == 15) { st = strtoull(tok, NULL, 10); break; }
    }
    long hz = sysconf(_SC_CLK_TCK);
    double per = 1.0 / (double)(hz > 0 ? hz : 100);
    if (user) *user = (double)ut * per;
    if (sys) *sys = (double)st * per;
    return (double)(ut + st) * per;
}

/* busy and total jiffies of the whole machine, from /proc/stat; 0 on failure */
static int machine_jiffies(unsigned long long *busy, unsigned long long *total) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 4) return -1;
    /* user nice system idle iowait irq softirq steal (guest is inside user) */
    *total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    *busy = *total - v[3] - v[4];
    return 0;
}

/* ------------------------------------------------------------------------ */
/* hashing, randomness, values                                              */

static inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline uint64_t rng_below(uint64_t *s, uint64_t n) {
    return (uint64_t)(((unsigned __int128)rng_next(s) * n) >> 64);
}

static const char HEX[] = "0123456789ABCDEF";

static inline void put_hex32(uint8_t *d, uint32_t v) {
    for (int i = 7; i >= 0; i--) { d[i] = (uint8_t)HEX[v & 15]; v >>= 4; }
}

static inline int get_hex32(const uint8_t *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        uint8_t c = s[i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = (v << 4) | d;
    }
    *out = v;
    return 0;
}

static inline uint64_t value_hash(uint64_t keyid, uint32_t gen, uint32_t len) {
    return mix64(keyid * 0xD6E8FEB86659FD93ull ^ ((uint64_t)gen << 32) ^ len ^ 0x5EED);
}

static void fill_stream(uint8_t *d, uint32_t n, uint64_t seed) {
    uint64_t s = seed | 1;
    while (n >= 8) { uint64_t r = rng_next(&s); memcpy(d, &r, 8); d += 8; n -= 8; }
    if (n) { uint64_t r = rng_next(&s); memcpy(d, &r, n); }
}

static void value_fill(uint8_t *d, uint64_t keyid, uint32_t len, uint32_t gen) {
    if (len < 16) { fill_stream(d, len, value_hash(keyid, 0, len)); return; }
    uint64_t h = value_hash(keyid, gen, len);
    put_hex32(d, gen);
    put_hex32(d + 8, (uint32_t)h);
    fill_stream(d + 16, len - 16, h);
}

/* 0 when `d` is exactly a value this tool writes for keyid/len; scratch >= len */
static int value_check(const uint8_t *d, uint64_t keyid, uint32_t len, uint8_t *scratch) {
    if (len < 16) {
        fill_stream(scratch, len, value_hash(keyid, 0, len));
        return memcmp(scratch, d, len) != 0;
    }
    uint32_t gen, hh;
    if (get_hex32(d, &gen) || get_hex32(d + 8, &hh)) return -1;
    uint64_t h = value_hash(keyid, gen, len);
    if ((uint32_t)h != hh) return -1;
    fill_stream(scratch, len - 16, h);
    return memcmp(scratch, d + 16, len - 16) != 0;
}

/* ------------------------------------------------------------------------ */
/* latency histogram: log buckets, 64 linear sub-buckets per power of two   */
/* (relative error < 1.6%), values in nanoseconds up to 2^42 ns (~73 min)   */

#define H_SUB     7
#define H_HALF    (1 << (H_SUB - 1))
#define H_MAXEXP  42
#define H_BUCKETS ((H_MAXEXP - H_SUB + 3) * H_HALF)

typedef struct {
    uint64_t count[H_BUCKETS];
    uint64_t total, max, min;
    double sum;
} hist_t;

static inline int h_index(uint64_t v) {
    if (v < (1u << H_SUB)) return (int)v;
    int e = 63 - __builtin_clzll(v);
    if (e > H_MAXEXP) { e = H_MAXEXP; v = (1ull << (H_MAXEXP + 1)) - 1; }
    int k = e - H_SUB + 1;
    return k * H_HALF + (int)(v >> k);
}

static inline uint64_t h_upper(int idx) {
    if (idx < (1 << H_SUB)) return (uint64_t)idx;
    int k = idx / H_HALF - 1;
    uint64_t m = (uint64_t)(idx - k * H_HALF);
    return ((m + 1) << k) - 1;
}

static inline void h_record(hist_t *h, uint64_t v) {
    h->count[h_index(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
    if (v < h->min) h->min = v;
}

static void h_merge(hist_t *into, const hist_t *from) {
    for (int i = 0; i < H_BUCKETS; i++) into->count[i] += from->count[i];
    into->total += from->total;
    into->sum += from->sum;
    if (from->max > into->max) into->max = from->max;
    if (from->min < into->min) into->min = from->min;
}

static uint64_t h_percentile(const hist_t *h, double q) {
    if (!h->total) return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->total);
    if (want < 1) want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= want) { uint64_t u = h_upper(i); return u > h->max ? h->max : u; }
    }
    return h->max;
}

/* ------------------------------------------------------------------------ */
/* configuration                                                            */

enum { W_MIX, W_MSM };
/* memcached's text protocol, or Redis's RESP2: GET/SET (EX for a deadline)/EXPIRE.
 * RESP has no flags: a RESP run checks values, not flags. */
enum { PROTO_MEMCACHED, PROTO_RESP };
enum { OP_GET, OP_SET, OP_TOUCH };
enum { EXP_ANY, EXP_HIT, EXP_MISS };
enum { PH_IDLE, PH_PRELOAD, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };

#define PING_ID UINT64_MAX

static struct {
    const char *host;
    const char *port;
    int threads;
    int connections;
    int pct_get, pct_set, pct_touch;
    uint32_t value_size;
    uint64_t keys;
    uint32_t pipeline;
    double duration;      /* 0 = not given */
    uint64_t requests;    /* 0 = unbounded */
    double max_time;
    double warmup;
    double drain_timeout;
    int preload;
    double rate;          /* total req/s, 0 = closed loop */
    int workload;
    int protocol;
    uint64_t sessions;
    int json;
    int progress;
    int server_pid;
    int settle;
    int allow_misses;     /* a miss on a stored key is counted, not an error */
    uint32_t ttl;         /* mix: every set expires this many seconds after it (0: never) */
    uint64_t seed;
    const char *label;
} cfg = {
    .host = "127.0.0.1", .port = "11211", .threads = 1, .connections = 50,
    .pct_get = 90, .pct_set = 10, .pct_touch = 0, .value_size = 2048,
    .keys = 50000, .pipeline = 1, .max_time = 0, .warmup = 0, .drain_timeout = 5,
    .workload = W_MIX, .sessions = 10000, .seed = 0x7A11DE11ull, .label = "",
};

static uint64_t n_keyids;           /* size of the stored[] table */
static _Atomic uint8_t *stored;     /* 1 once a set of that key id was acknowledged */
static struct sockaddr_storage server_addr;
static socklen_t server_addrlen;

static _Atomic int phase = PH_IDLE;
static _Atomic uint64_t preload_next;
static _Atomic int preload_done_threads;
static _Atomic uint64_t measured_issued;   /* --requests accounting */
static _Atomic uint64_t measured_completed;
static _Atomic int drained_threads;
static uint64_t interval_ns;               /* open loop: per connection */

/* key id <-> key text.  mix: id = index.  msm: id = session*2 + kind. */

static inline int key_text(uint64_t id, char *out) {
    if (id == PING_ID) { memcpy(out, "ping-n1", 7); return 7; }
    if (cfg.workload == W_MIX) {
        memcpy(out, "key:", 4);
        uint64_t v = id;
        for (int i = 11; i >= 4; i--) { out[i] = (char)('0' + v % 10); v /= 10; }
        return 12;
    }
    uint64_t s = id >> 1;
    int n = 0;
    if (id & 1) { memcpy(out, "validity:", 9); n = 9; }
    uint64_t a = mix64(s ^ 0xA5A5A5A5ull), b = mix64(s + 0x1234567ull);
    for (int i = 15; i >= 0; i--) { out[n + i] = HEX[a & 15]; a >>= 4; }
    for (int i = 31; i >= 16; i--) { out[n + i] = HEX[b & 15]; b >>= 4; }
    memcpy(out + n + 32, "-n1", 3);
    return n + 35;
}

static inline uint32_t key_len_of_value(uint64_t id) {
    if (cfg.workload == W_MIX) return cfg.value_size;
    return (id & 1) ? 20 : cfg.value_size;
}

static inline uint32_t key_flags(uint64_t id) {
    if (cfg.workload == W_MSM) return 0;
    return (uint32_t)(mix64(id) & 0xFFFF);
}

static inline uint32_t key_exptime(uint64_t id) {
    if (cfg.workload == W_MIX) return cfg.ttl;
    return (id & 1) ? 1800 : 3600;
}

/* ------------------------------------------------------------------------ */
/* connections and threads                                                  */

typedef struct {
    uint64_t t0;       /* send (closed loop) or scheduled (open loop) time */
    uint64_t keyid;
    uint8_t op, expect, measured, preload;
} req_t;

typedef struct thread_s thread_t;
static void arm_timer(thread_t *th, uint64_t when);

typedef struct {
    thread_t *th;
    int fd;
    int dead;
    int want_out;
    uint64_t last_connect;
    uint8_t *rbuf; size_t rpos, rlen, rcap;
    uint8_t *wbuf; size_t woff, wlen, wcap;
    req_t *q; uint32_t qhead, qcount, qcap;
    uint64_t next_sched;
    int msm_step; uint64_t msm_sess;
} conn_t;

struct thread_s {
    int id;
    pthread_t pt;
    int ep, tfd;
    uint64_t timer_armed;
    conn_t *conns; int nconns;
    uint64_t rng;
    uint32_t gen;
    uint8_t *scratch;
    hist_t hist;
    int preload_reported, drained_reported;
    /* counters (measured = issued during the measure phase) */
    _Atomic uint64_t completed;       /* read by the progress printer */
    uint64_t errors, timeouts, conn_failures, preload_errors, preload_sets;
    uint64_t gets, hits, misses, sets, touches;
    uint64_t max_gap, last_completion;
    int nsamples;
    char samples[MAX_SAMPLES][160];
};

static thread_t *threads;

static void sample_error(thread_t *th, const char *what, const uint8_t *p, size_t n) {
    if (th->nsamples >= MAX_SAMPLES) return;
    char *d = th->samples[th->nsamples++];
    int k = snprintf(d, 160, "%s: \"", what);
    for (size_t i = 0; i < n && k < 150; i++) {
        uint8_t c = p[i];
        if (c == '\r') k += snprintf(d + k, 160 - k, "\\r");
        else if (c == '\n') k += snprintf(d + k, 160 - k, "\\n");
        else if (c >= 32 && c < 127 && c != '"' && c != '\\') d[k++] = (char)c;
        else k += snprintf(d + k, 160 - k, "\\x%02x", c);
    }
    if (k > 155) k = 155;
    snprintf(d + k, 160 - k, "%s\"", n > 60 ? "..." : "");
}

static void note_error(thread_t *th, req_t *r) {
    if (r->preload) th->preload_errors++;
    th->errors++;
    /* an answered-wrongly request is finished too, for --requests accounting */
    if (r->measured && cfg.requests) atomic_fetch_add_explicit(&measured_completed, 1, memory_order_relaxed);
}

static int set_nonblock_nodelay(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int connect_server(void) {
    int fd = socket(server_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (set_nonblock_nodelay(fd) < 0) { close(fd); return -1; }
    if (connect(fd, (struct sockaddr *)&server_addr, server_addrlen) < 0) {
        if (errno != EINPROGRESS) { close(fd); return -1; }
        struct pollfd p = {fd, POLLOUT, 0};
        int r;
        do { r = poll(&p, 1, CONNECT_TIMEOUT_MS); } while (r < 0 && errno == EINTR);
        int err = 0; socklen_t l = sizeof err;
        if (r <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) { close(fd); return -1; }
    }
    return fd;
}

static void conn_epoll(conn_t *c, int op) {
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(c->th->ep, op, c->fd, &ev);
}

/* A connection whose byte stream can no longer be trusted: every request in
 * flight is an error, and a fresh connection replaces it (at most every 100 ms). */
static void conn_fail(conn_t *c, const char *why) {
    thread_t *th = c->th;
    if (why && th->nsamples < MAX_SAMPLES) snprintf(th->samples[th->nsamples++], 160, "%s", why);
    for (uint32_t i = 0; i < c->qcount; i++) note_error(th, &c->q[(c->qhead + i) % c->qcap]);
    c->qcount = 0; c->qhead = 0;
    c->rpos = c->rlen = 0; c->woff = c->wlen = 0;
    c->msm_step = 0;
    th->conn_failures++;
    if (c->fd >= 0) { epoll_ctl(th->ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; }
    c->dead = 1;
}

static void conn_try_revive(conn_t *c, uint64_t now) {
    if (now - c->last_connect < 100000000ull) return;
    c->last_connect = now;
    int fd = connect_server();
    if (fd < 0) return;
    c->fd = fd; c->dead = 0; c->want_out = 0;
    conn_epoll(c, EPOLL_CTL_ADD);
}

static void wbuf_reserve(conn_t *c, size_t need) {
    if (c->wlen + need <= c->wcap) return;
    if (c->woff) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff; c->woff = 0;
        if (c->wlen + need <= c->wcap) return;
    }
    size_t cap = c->wcap * 2;
    while (cap < c->wlen + need) cap *= 2;
    c->wbuf = realloc(c->wbuf, cap);
    if (!c->wbuf) { perror("realloc"); exit(2); }
    c->wcap = cap;
}

static inline size_t put_u32(uint8_t *d, uint32_t v) {
    char t[10]; int n = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) d[i] = (uint8_t)t[n - 1 - i];
    return (size_t)n;
}

/* a RESP bulk string: $<len>\r\n<bytes>\r\n */
static inline uint8_t *put_bulk(uint8_t *d, const void *bytes, size_t n) {
    *d++ = '$'; d += put_u32(d, (uint32_t)n); *d++ = '\r'; *d++ = '\n';
    memcpy(d, bytes, n); d += n;
    *d++ = '\r'; *d++ = '\n';
    return d;
}

static inline uint8_t *put_bulk_u32(uint8_t *d, uint32_t v) {
    uint8_t digits[10];
    size_t n = put_u32(digits, v);
    return put_bulk(d, digits, n);
}

/* the same request in RESP: GET k | SET k v [EX s] | EXPIRE k s */
static uint8_t *issue_resp(thread_t *th, uint8_t *d, int op, uint64_t keyid, const char *key, int kl, uint32_t vlen) {
    if (op == OP_GET) {
        memcpy(d, "*2\r\n$3\r\nGET\r\n", 13); d += 13;
        return put_bulk(d, key, (size_t)kl);
    }
    uint32_t exptime = key_exptime(keyid);
    if (op == OP_SET) {
        if (exptime) { memcpy(d, "*5\r\n", 4); } else { memcpy(d, "*3\r\n", 4); }
        d += 4;
        memcpy(d, "$3\r\nSET\r\n", 9); d += 9;
        d = put_bulk(d, key, (size_t)kl);
        *d++ = '$'; d += put_u32(d, vlen); *d++ = '\r'; *d++ = '\n';
        value_fill(d, keyid, vlen, ++th->gen);
        d += vlen;
        *d++ = '\r'; *d++ = '\n';
        if (exptime) {
            memcpy(d, "$2\r\nEX\r\n", 8); d += 8;
            d = put_bulk_u32(d, exptime);
        }
        return d;
    }
    memcpy(d, "*3\r\n$6\r\nEXPIRE\r\n", 16); d += 16;
    d = put_bulk(d, key, (size_t)kl);
    return put_bulk_u32(d, exptime ? exptime : 3600);
}

static void issue(conn_t *c, int op, uint64_t keyid, int expect, uint64_t t0, int measured, int preload) {
    thread_t *th = c->th;
    char key[64];
    int kl = key_text(keyid, key);
    uint32_t vlen = keyid == PING_ID ? 0 : key_len_of_value(keyid);
    wbuf_reserve(c, (size_t)kl + vlen + 96);
    uint8_t *d = c->wbuf + c->wlen, *start = d;
    if (cfg.protocol == PROTO_RESP) {
        d = issue_resp(th, d, op, keyid, key, kl, vlen);
    } else if (op == OP_GET) {
        memcpy(d, "get ", 4); d += 4;
        memcpy(d, key, kl); d += kl;
    } else if (op == OP_SET) {
        memcpy(d, "set ", 4); d += 4;
        memcpy(d, key, kl); d += kl;
        *d++ = ' '; d += put_u32(d, key_flags(keyid));
        *d++ = ' '; d += put_u32(d, key_exptime(keyid));
        *d++ = ' '; d += put_u32(d, vlen);
        *d++ = '\r'; *d++ = '\n';
        value_fill(d, keyid, vlen, ++th->gen);
        d += vlen;
    } else {
        memcpy(d, "touch ", 6); d += 6;
        memcpy(d, key, kl); d += kl;
        *d++ = ' '; d += put_u32(d, key_exptime(keyid));
    }
    if (cfg.protocol == PROTO_MEMCACHED) { *d++ = '\r'; *d++ = '\n'; }
    c->wlen += (size_t)(d - start);
    req_t *r = &c->q[(c->qhead + c->qcount) % c->qcap];
    c->qcount++;
    r->t0 = t0; r->keyid = keyid; r->op = (uint8_t)op; r->expect = (uint8_t)expect;
    r->measured = (uint8_t)measured; r->preload = (uint8_t)preload;
}

static inline int expect_for(uint64_t keyid) {
    if (keyid == PING_ID) return EXP_MISS;
    return atomic_load_explicit(&stored[keyid], memory_order_relaxed) ? EXP_HIT : EXP_ANY;
}

/* the next request of the workload on this connection */
static void issue_next(conn_t *c, uint64_t t0, int measured) {
    thread_t *th = c->th;
    if (cfg.workload == W_MIX) {
        uint64_t k = rng_below(&th->rng, cfg.keys);
        uint64_t r = rng_below(&th->rng, 100);
        int op = r < (uint64_t)cfg.pct_get ? OP_GET : r < (uint64_t)(cfg.pct_get + cfg.pct_set) ? OP_SET : OP_TOUCH;
        issue(c, op, k, op == OP_SET ? EXP_ANY : expect_for(k), t0, measured, 0);
        return;
    }
    /* msm: one Tomcat request = get ping (miss), get session, get validity,
     * set validity (20 B), set session (value-size) */
    int step = c->msm_step;
    c->msm_step = (step + 1) % 5;
    if (step == 0) c->msm_sess = rng_below(&th->rng, cfg.sessions);
    uint64_t s = c->msm_sess;
    switch (step) {
    case 0: issue(c, OP_GET, PING_ID, EXP_MISS, t0, measured, 0); break;
    case 1: issue(c, OP_GET, s * 2, expect_for(s * 2), t0, measured, 0); break;
    case 2: issue(c, OP_GET, s * 2 + 1, expect_for(s * 2 + 1), t0, measured, 0); break;
    case 3: issue(c, OP_SET, s * 2 + 1, EXP_ANY, t0, measured, 0); break;
    default: issue(c, OP_SET, s * 2, EXP_ANY, t0, measured, 0); break;
    }
}

/* issue whatever this connection should have in flight now */
static void conn_fill(conn_t *c, int ph, uint64_t now) {
    if (c->dead) return;
    if (ph == PH_PRELOAD) {
        uint32_t depth = cfg.pipeline > 32 ? cfg.pipeline : 32;
        if (depth > c->qcap) depth = c->qcap;
        while (c->qcount < depth) {
            uint64_t k = atomic_fetch_add(&preload_next, 1);
            if (k >= n_keyids) break;
            issue(c, OP_SET, k, EXP_ANY, now, 0, 1);
            c->th->preload_sets++;
        }
        return;
    }
    if (ph != PH_WARMUP && ph != PH_MEASURE) return;
    int measured = ph == PH_MEASURE;
    if (cfg.rate > 0) {
        while (c->qcount < cfg.pipeline && c->next_sched <= now) {
            if (measured && cfg.requests && atomic_fetch_add(&measured_issued, 1) >= cfg.requests) return;
            issue_next(c, c->next_sched, measured);
            c->next_sched += interval_ns;
        }
        return;
    }
    while (c->qcount < cfg.pipeline) {
        if (measured && cfg.requests && atomic_fetch_add(&measured_issued, 1) >= cfg.requests) return;
        issue_next(c, now, measured);
    }
}

static void conn_flush(conn_t *c) {
    if (c->dead) return;
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) { c->woff += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_fail(c, errno == EPIPE || errno == ECONNRESET ? "send failed: connection reset" : "send failed");
        return;
    }
    if (c->woff == c->wlen) c->woff = c->wlen = 0;
    int want = c->wlen > c->woff;
    if (want != c->want_out) { c->want_out = want; conn_epoll(c, EPOLL_CTL_MOD); }
}

enum { P_MORE, P_OK, P_ERR, P_FATAL };

static int line_is(const uint8_t *p, size_t n, const char *s) {
    size_t l = strlen(s);
    return n == l && memcmp(p, s, l) == 0;
}

static int starts(const uint8_t *p, size_t n, const char *s) {
    size_t l = strlen(s);
    return n >= l && memcmp(p, s, l) == 0;
}

/* parse the RESP reply to `r` at the head of the read buffer */
static int parse_resp_reply(conn_t *c, req_t *r, size_t *used, int *hit) {
    thread_t *th = c->th;
    const uint8_t *p = c->rbuf + c->rpos;
    size_t avail = c->rlen - c->rpos;
    size_t scan = avail < MAX_LINE ? avail : MAX_LINE;
    const uint8_t *nl = memchr(p, '\n', scan);
    if (!nl) {
        if (avail >= MAX_LINE) { sample_error(th, "line too long", p, 60); return P_FATAL; }
        return P_MORE;
    }
    size_t ll = (size_t)(nl - p) + 1;
    if (ll < 3 || p[ll - 2] != '\r') { sample_error(th, "line not ending in \\r\\n", p, ll); return P_FATAL; }
    size_t n = ll - 2;
    *hit = 0;
    if (p[0] == '-') { sample_error(th, "error reply", p, n); *used = ll; return P_ERR; }
    if (r->op == OP_GET) {
        if (line_is(p, n, "$-1")) {
            *used = ll;
            if (r->expect == EXP_HIT && !cfg.allow_misses) { sample_error(th, "miss on a stored key", p, n); return P_ERR; }
            return P_OK;
        }
        if (p[0] == '$') {
            uint32_t alen = 0;
            for (size_t j = 1; j < n; j++) {
                if (p[j] < '0' || p[j] > '9' || j > 8) { sample_error(th, "bad bulk length", p, n); return P_FATAL; }
                alen = alen * 10 + (p[j] - '0');
            }
            if (alen > MAX_VALUE) { sample_error(th, "bad bulk length", p, n); return P_FATAL; }
            size_t total = ll + alen + 2;
            if (total > c->rcap) { sample_error(th, "value larger than expected", p, n); return P_FATAL; }
            if (avail < total) return P_MORE;
            if (memcmp(p + ll + alen, "\r\n", 2) != 0) { sample_error(th, "bulk not followed by \\r\\n", p + ll + alen, 2); return P_FATAL; }
            *used = total;
            uint32_t vlen = r->keyid == PING_ID ? 0 : key_len_of_value(r->keyid);
            if (r->expect == EXP_MISS) { sample_error(th, "hit on a key never stored", p, n); return P_ERR; }
            if (alen != vlen || value_check(p + ll, r->keyid, vlen, th->scratch)) { sample_error(th, "wrong value bytes", p + ll, alen < 48 ? alen : 48); return P_ERR; }
            *hit = 1;
            return P_OK;
        }
    } else if (r->op == OP_SET) {
        if (line_is(p, n, "+OK")) { *used = ll; return P_OK; }
    } else {
        if (line_is(p, n, ":1")) { *used = ll; *hit = 1; return P_OK; }
        if (line_is(p, n, ":0")) {
            *used = ll;
            if (r->expect == EXP_HIT) { sample_error(th, "EXPIRE found no key that was stored", p, n); return P_ERR; }
            return P_OK;
        }
    }
    sample_error(th, "unexpected RESP reply", p, n);
    return P_FATAL;
}

/* parse the reply to `r` at the head of the read buffer */
static int parse_reply(conn_t *c, req_t *r, size_t *used, int *hit) {
    thread_t *th = c->th;
    if (cfg.protocol == PROTO_RESP) return parse_resp_reply(c, r, used, hit);
    const uint8_t *p = c->rbuf + c->rpos;
    size_t avail = c->rlen - c->rpos;
    size_t scan = avail < MAX_LINE ? avail : MAX_LINE;
    const uint8_t *nl = memchr(p, '\n', scan);
    if (!nl) {
        if (avail >= MAX_LINE) { sample_error(th, "line too long", p, 60); return P_FATAL; }
        return P_MORE;
    }
    size_t ll = (size_t)(nl - p) + 1;     /* line incl. \r\n */
    if (ll < 2 || p[ll - 2] != '\r') { sample_error(th, "line not ending in \\r\\n", p, ll); return P_FATAL; }
    size_t n = ll - 2;
    *hit = 0;
    if (r->op == OP_GET) {
        if (line_is(p, n, "END")) {
            *used = ll;
            if (r->expect == EXP_HIT && !cfg.allow_misses) { sample_error(th, "miss on a stored key", p, n); return P_ERR; }
            return P_OK;
        }
        if (starts(p, n, "VALUE ")) {
            /* expected: VALUE <key> <flags> <len> */
            char exp[128];
            int el = 0;
            memcpy(exp, "VALUE ", 6); el = 6;
            el += key_text(r->keyid, exp + el);
            uint32_t vlen = r->keyid == PING_ID ? 0 : key_len_of_value(r->keyid);
            exp[el++] = ' '; el += (int)put_u32((uint8_t *)exp + el, r->keyid == PING_ID ? 0 : key_flags(r->keyid));
            exp[el++] = ' '; el += (int)put_u32((uint8_t *)exp + el, vlen);
            /* the length the server announced (last token), to stay in sync on a mismatch */
            size_t i = n; while (i > 6 && p[i - 1] >= '0' && p[i - 1] <= '9') i--;
            if (i == n || n - i > 7 || p[i - 1] != ' ') { sample_error(th, "bad VALUE line", p, n); return P_FATAL; }
            uint32_t alen = 0; for (size_t j = i; j < n; j++) alen = alen * 10 + (p[j] - '0');
            if (alen > MAX_VALUE) { sample_error(th, "bad VALUE length", p, n); return P_FATAL; }
            size_t total = ll + alen + 2 + 5;
            if (total > c->rcap) { sample_error(th, "VALUE larger than expected", p, n); return P_FATAL; }
            if (avail < total) return P_MORE;
            if (memcmp(p + ll + alen, "\r\nEND\r\n", 7) != 0) { sample_error(th, "VALUE not followed by \\r\\nEND\\r\\n", p + ll + alen, 7); return P_FATAL; }
            *used = total;
            if ((size_t)el != n || memcmp(exp, p, n) != 0) { sample_error(th, "unexpected VALUE line", p, n); return P_ERR; }
            if (r->expect == EXP_MISS) { sample_error(th, "hit on a key never stored", p, n); return P_ERR; }
            if (value_check(p + ll, r->keyid, vlen, th->scratch)) { sample_error(th, "wrong value bytes", p + ll, vlen < 48 ? vlen : 48); return P_ERR; }
            *hit = 1;
            return P_OK;
        }
    } else if (r->op == OP_SET) {
        if (line_is(p, n, "STORED")) { *used = ll; return P_OK; }
    } else {
        if (line_is(p, n, "TOUCHED")) { *used = ll; *hit = 1; return P_OK; }
        if (line_is(p, n, "NOT_FOUND")) {
            *used = ll;
            if (r->expect == EXP_HIT) { sample_error(th, "touch NOT_FOUND on a stored key", p, n); return P_ERR; }
            return P_OK;
        }
    }
    sample_error(th, r->op == OP_GET ? "unexpected reply to get" : r->op == OP_SET ? "unexpected reply to set" : "unexpected reply to touch", p, n);
    if (starts(p, n, "SERVER_ERROR") || starts(p, n, "CLIENT_ERROR") || line_is(p, n, "ERROR")) { *used = ll; return P_ERR; }
    return P_FATAL;
}

static void conn_read(conn_t *c, uint64_t *now) {
    thread_t *th = c->th;
    if (c->rpos && c->rpos == c->rlen) c->rpos = c->rlen = 0;
    if (c->rpos && c->rcap - c->rlen < c->rcap / 2) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos; c->rpos = 0;
    }
    ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
    if (n == 0) { conn_fail(c, "server closed the connection"); return; }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        conn_fail(c, errno == ECONNRESET ? "recv failed: connection reset" : "recv failed");
        return;
    }
    c->rlen += (size_t)n;
    *now = now_ns();
    while (c->rpos < c->rlen) {
        if (!c->qcount) {
            sample_error(th, "bytes nobody asked for", c->rbuf + c->rpos, c->rlen - c->rpos);
            th->errors++;
            conn_fail(c, NULL);
            return;
        }
        req_t *r = &c->q[c->qhead];
        size_t used = 0; int hit = 0;
        int res = parse_reply(c, r, &used, &hit);
        if (res == P_MORE) break;
        if (res == P_FATAL) { conn_fail(c, NULL); return; }
        c->rpos += used;
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qcount--;
        if (res == P_ERR) { note_error(th, r); continue; }
        if (r->op == OP_SET) atomic_store_explicit(&stored[r->keyid], 1, memory_order_relaxed);
        if (r->measured) {
            uint64_t lat = *now > r->t0 ? *now - r->t0 : 0;
            h_record(&th->hist, lat);
            if (th->last_completion && *now - th->last_completion > th->max_gap) th->max_gap = *now - th->last_completion;
            th->last_completion = *now;
            atomic_store_explicit(&th->completed, atomic_load_explicit(&th->completed, memory_order_relaxed) + 1, memory_order_relaxed);
            if (cfg.requests) atomic_fetch_add_explicit(&measured_completed, 1, memory_order_relaxed);
            if (r->op == OP_GET) { th->gets++; if (hit) th->hits++; else th->misses++; }
            else if (r->op == OP_SET) th->sets++;
            else th->touches++;
        }
    }
    if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
}

#ifdef SYS_epoll_pwait2
static int have_pwait2 = 1;   /* cleared when the kernel says ENOSYS */
#else
static int have_pwait2 = 0;
#endif

/* epoll_wait until `deadline` (CLOCK_MONOTONIC ns; 0 = none) or `max_ms` */
static int wait_events(thread_t *th, struct epoll_event *evs, int n, uint64_t deadline, int max_ms) {
#ifdef SYS_epoll_pwait2
    if (deadline && have_pwait2) {
        uint64_t now = now_ns(), max = now + (uint64_t)max_ms * 1000000ull;
        if (deadline > max) deadline = max;
        uint64_t d = deadline > now ? deadline - now : 0;
        struct timespec ts = {(time_t)(d / 1000000000ull), (long)(d % 1000000000ull)};
        int r = (int)syscall(SYS_epoll_pwait2, th->ep, evs, n, &ts, NULL, 0);
        if (r >= 0 || errno != ENOSYS) return r;
        have_pwait2 = 0;
    }
#endif
    if (deadline) arm_timer(th, deadline);
    return epoll_wait(th->ep, evs, n, max_ms);
}

static void arm_timer(thread_t *th, uint64_t when) {
    if (when == th->timer_armed) return;
    th->timer_armed = when;
    struct itimerspec its = {0};
    if (when) {
        its.it_value.tv_sec = (time_t)(when / 1000000000ull);
        its.it_value.tv_nsec = (long)(when % 1000000000ull);
    }
    timerfd_settime(th->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void *thread_main(void *arg) {
    thread_t *th = arg;
    struct epoll_event evs[256];
    int last_ph = PH_IDLE;
    for (;;) {
        int ph = atomic_load(&phase);
        uint64_t now = now_ns();
        if (ph != last_ph) {
            if ((ph == PH_WARMUP || ph == PH_MEASURE) && last_ph != PH_WARMUP && cfg.rate > 0) {
                /* open loop: spread the connections' schedules over one interval */
                for (int i = 0; i < th->nconns; i++)
                    th->conns[i].next_sched = now + rng_below(&th->rng, interval_ns);
            }
            last_ph = ph;
        }
        if (ph == PH_DONE) break;
        uint64_t inflight = 0, next_due = 0;
        for (int i = 0; i < th->nconns; i++) {
            conn_t *c = &th->conns[i];
            if (c->dead) {
                if (ph == PH_DRAIN) continue;
                conn_try_revive(c, now);
                if (c->dead) continue;
            }
            conn_fill(c, ph, now);
            if (c->wlen > c->woff) conn_flush(c);
            inflight += c->qcount;
            if (cfg.rate > 0 && !c->dead && c->qcount < cfg.pipeline && (!next_due || c->next_sched < next_due))
                next_due = c->next_sched;
        }
        if (ph == PH_PRELOAD && !th->preload_reported && inflight == 0 && atomic_load(&preload_next) >= n_keyids) {
            th->preload_reported = 1;
            atomic_fetch_add(&preload_done_threads, 1);
        }
        if (ph == PH_DRAIN && !th->drained_reported && inflight == 0) {
            th->drained_reported = 1;
            atomic_fetch_add(&drained_threads, 1);
        }
        int timeout = 2; /* ms: notice phase changes and revive dead connections */
        uint64_t deadline = cfg.rate > 0 && (ph == PH_WARMUP || ph == PH_MEASURE) ? next_due : 0;
        int n = wait_events(th, evs, 256, deadline, timeout);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); exit(2); }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t x; ssize_t rr = read(th->tfd, &x, sizeof x); (void)rr;
                th->timer_armed = 0;
                continue;
            }
            conn_t *c = evs[i].data.ptr;
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                uint64_t t = now;
                conn_read(c, &t);
                if (c->dead) continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->wlen > c->woff) conn_flush(c);
        }
    }
    /* whatever is still in flight never got an answer */
    for (int i = 0; i < th->nconns; i++) {
        conn_t *c = &th->conns[i];
        th->timeouts += c->qcount;
        for (uint32_t j = 0; j < c->qcount; j++) note_error(th, &c->q[(c->qhead + j) % c->qcap]);
        c->qcount = 0;
        if (c->fd >= 0) close(c->fd);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* command line                                                             */

static void usage(FILE *f) {
    fprintf(f,
"usage: tandem-load [options]\n"
"  --host H            server address (default 127.0.0.1)\n"
"  --port P            server port (default 11211)\n"
"  --threads N         load generator threads, one epoll loop each (default 1)\n"
"  --connections C     connections, spread over the threads (default 50)\n"
"  --pipeline D        requests in flight per connection (default 1)\n"
"  --workload mix|msm  mix: --get/--set/--touch over --keys; msm: see below (default mix)\n"
"  --protocol memcached|resp   memcached's text protocol, or Redis's RESP: GET, SET\n"
"                      (with EX for a deadline), EXPIRE for touch; values are\n"
"                      checked, flags (which Redis lacks) are not (default memcached)\n"
"  --get P --set P --touch P   mix percentages, must add up to 100 (default 90/10/0)\n"
"  --value-size B      value bytes (msm: session value; validity is 20 B) (default 2048)\n"
"  --keys N            key space key:00000000.. (default 50000)\n"
"  --sessions N        msm: session ids (default 10000)\n"
"  --preload           store every key (msm: both keys of every session) first\n"
"  --duration S        measure for S seconds (default 10 unless --requests; max %.0f)\n"
"  --requests N        measure N requests (bounded by --max-time, default %.0f s)\n"
"  --max-time S        hard cap on the measured phase (max %.0f)\n"
"  --warmup S          run S seconds unmeasured before measuring (default 0)\n"
"  --drain-timeout S   wait at most S seconds for replies after the end (default 5)\n"
"  --rate R            open loop: R requests/s in total, on a fixed schedule per\n"
"                      connection; latency counts from the scheduled time\n"
"  --server-pid PID    also report that process's CPU time during the measurement\n"
"  --settle            after --preload, wait (at most 120 s) until the server's\n"
"                      `stats` persistence_pending is 0 (servers without it: no wait)\n"
"  --allow-misses      a miss on a key that was stored is counted as a miss, not\n"
"                      an error (a cache that may lose what it was given)\n"
"  --ttl N             mix: every set expires N seconds after it (default:\n"
"                      never); with gets, add --allow-misses\n"
"  --seed N            random seed\n"
"  --label TEXT        copied into the output\n"
"  --progress          print throughput every second on stderr\n"
"  --json              print one JSON object instead of the text report\n"
"msm workload: per simulated request on a random session id S (32 hex + -n1):\n"
"  get ping-n1 (must miss), get S, get validity:S, set validity:S 0 1800 20,\n"
"  set S 0 3600 <value-size>\n"
"Exit status: 0 when every reply was right, 1 when any was not (or nothing was\n"
"measured), 2 on usage or connection errors.\n",
        MAX_DURATION_S, DEFAULT_MAX_TIME_S, MAX_DURATION_S);
}

static void die(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "tandem-load: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static double parse_num(const char *name, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) die("--%s: expected a number in [%g, %g], got '%s'", name, lo, hi, s);
    return v;
}

static void parse_args(int argc, char **argv) {
    enum { O_HOST = 1000, O_PORT, O_THREADS, O_CONNS, O_PIPE, O_WORKLOAD, O_GET, O_SET, O_TOUCH, O_VSIZE, O_KEYS,
           O_SESSIONS, O_PRELOAD, O_DURATION, O_REQUESTS, O_MAXTIME, O_WARMUP, O_DRAIN, O_RATE, O_PID, O_SETTLE, O_SEED,
           O_LABEL, O_PROGRESS, O_JSON, O_PROTOCOL, O_ALLOW_MISSES, O_TTL, O_HELP };
    static const struct option opts[] = {
        {"host", 1, 0, O_HOST}, {"port", 1, 0, O_PORT}, {"threads", 1, 0, O_THREADS},
        {"connections", 1, 0, O_CONNS}, {"pipeline", 1, 0, O_PIPE}, {"workload", 1, 0, O_WORKLOAD},
        {"get", 1, 0, O_GET}, {"set", 1, 0, O_SET}, {"touch", 1, 0, O_TOUCH}, {"value-size", 1, 0, O_VSIZE},
        {"keys", 1, 0, O_KEYS}, {"sessions", 1, 0, O_SESSIONS}, {"preload", 0, 0, O_PRELOAD},
        {"duration", 1, 0, O_DURATION}, {"requests", 1, 0, O_REQUESTS}, {"max-time", 1, 0, O_MAXTIME},
        {"warmup", 1, 0, O_WARMUP}, {"drain-timeout", 1, 0, O_DRAIN}, {"rate", 1, 0, O_RATE},
        {"server-pid", 1, 0, O_PID}, {"settle", 0, 0, O_SETTLE}, {"seed", 1, 0, O_SEED}, {"label", 1, 0, O_LABEL},
        {"progress", 0, 0, O_PROGRESS}, {"json", 0, 0, O_JSON}, {"protocol", 1, 0, O_PROTOCOL}, {"allow-misses", 0, 0, O_ALLOW_MISSES}, {"ttl", 1, 0, O_TTL},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    int o;
    int pct_given = 0;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_HOST: cfg.host = optarg; break;
        case O_PORT: cfg.port = optarg; break;
        case O_THREADS: cfg.threads = (int)parse_num("threads", optarg, 1, 256); break;
        case O_CONNS: cfg.connections = (int)parse_num("connections", optarg, 1, 100000); break;
        case O_PIPE: cfg.pipeline = (uint32_t)parse_num("pipeline", optarg, 1, 4096); break;
        case O_WORKLOAD:
            if (!strcmp(optarg, "mix")) cfg.workload = W_MIX;
            else if (!strcmp(optarg, "msm")) cfg.workload = W_MSM;
            else die("--workload: mix or msm");
            break;
        case O_GET: cfg.pct_get = (int)parse_num("get", optarg, 0, 100); pct_given |= 1; break;
        case O_SET: cfg.pct_set = (int)parse_num("set", optarg, 0, 100); pct_given |= 2; break;
        case O_TOUCH: cfg.pct_touch = (int)parse_num("touch", optarg, 0, 100); pct_given |= 4; break;
        case O_VSIZE: cfg.value_size = (uint32_t)parse_num("value-size", optarg, 1, MAX_VALUE); break;
        case O_KEYS: cfg.keys = (uint64_t)parse_num("keys", optarg, 1, (double)MAX_KEYS); break;
        case O_SESSIONS: cfg.sessions = (uint64_t)parse_num("sessions", optarg, 1, (double)MAX_KEYS / 2); break;
        case O_PRELOAD: cfg.preload = 1; break;
        case O_DURATION: cfg.duration = parse_num("duration", optarg, 0.001, MAX_DURATION_S); break;
        case O_REQUESTS: cfg.requests = (uint64_t)parse_num("requests", optarg, 1, 1e12); break;
        case O_MAXTIME: cfg.max_time = parse_num("max-time", optarg, 0.001, MAX_DURATION_S); break;
        case O_WARMUP: cfg.warmup = parse_num("warmup", optarg, 0, 600); break;
        case O_DRAIN: cfg.drain_timeout = parse_num("drain-timeout", optarg, 0, 600); break;
        case O_RATE: cfg.rate = parse_num("rate", optarg, 0.001, 1e9); break;
        case O_PID: cfg.server_pid = (int)parse_num("server-pid", optarg, 1, 1e9); break;
        case O_SETTLE: cfg.settle = 1; break;
        case O_SEED: cfg.seed = (uint64_t)parse_num("seed", optarg, 0, 1e18); break;
        case O_LABEL: cfg.label = optarg; break;
        case O_PROGRESS: cfg.progress = 1; break;
        case O_JSON: cfg.json = 1; break;
        case O_ALLOW_MISSES: cfg.allow_misses = 1; break;
        case O_TTL: cfg.ttl = (uint32_t)parse_num("ttl", optarg, 0, 2592000); break;
        case O_PROTOCOL:
            if (!strcmp(optarg, "memcached")) cfg.protocol = PROTO_MEMCACHED;
            else if (!strcmp(optarg, "resp")) cfg.protocol = PROTO_RESP;
            else die("--protocol: memcached or resp");
            break;
        case O_HELP: case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) die("unexpected argument '%s'", argv[optind]);
    if (cfg.workload == W_MIX) {
        /* --set 100 alone means 0% gets: unspecified percentages default to 0 once any is given */
        if (pct_given) {
            if (!(pct_given & 1)) cfg.pct_get = 0;
            if (!(pct_given & 2)) cfg.pct_set = 0;
            if (!(pct_given & 4)) cfg.pct_touch = 0;
        }
        if (cfg.pct_get + cfg.pct_set + cfg.pct_touch != 100)
            die("--get + --set + --touch must be 100 (got %d)", cfg.pct_get + cfg.pct_set + cfg.pct_touch);
    } else if (cfg.value_size < 16) {
        die("--workload msm needs --value-size >= 16");
    }
    if (cfg.connections < cfg.threads) cfg.threads = cfg.connections;
    if (!cfg.duration && !cfg.requests) cfg.duration = 10;
    if (!cfg.max_time) cfg.max_time = cfg.duration ? cfg.duration : DEFAULT_MAX_TIME_S;
    if (cfg.duration && cfg.max_time > cfg.duration) cfg.max_time = cfg.duration;
    if (cfg.rate > 0) {
        interval_ns = (uint64_t)(1e9 * cfg.connections / cfg.rate);
        if (interval_ns < 1) interval_ns = 1;
    }
}

static void resolve(void) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int e = getaddrinfo(cfg.host, cfg.port, &hints, &res);
    if (e) die("cannot resolve %s:%s: %s", cfg.host, cfg.port, gai_strerror(e));
    memcpy(&server_addr, res->ai_addr, res->ai_addrlen);
    server_addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

/* one numeric `stats` value of the server, on a fresh blocking connection; -1 when
 * the server has no such stat or does not answer within 2 s */
static double server_stat(const char *name) {
    /* Only memcached's `stats` has these (Tandem's persistence_*); Redis: none. */
    if (cfg.protocol == PROTO_RESP) return -1;
    int fd = connect_server();
    if (fd < 0) return -1;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    double result = -1;
    char buf[65536];
    size_t len = 0;
    if (send(fd, "stats\r\n", 7, MSG_NOSIGNAL) == 7) {
        while (len < sizeof buf - 1) {
            ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
            if (n <= 0) break;
            len += (size_t)n;
            buf[len] = 0;
            if (strstr(buf, "END\r\n") || strstr(buf, "ERROR")) break;
        }
        buf[len] = 0;
        char pat[128];
        snprintf(pat, sizeof pat, "STAT %s ", name);
        char *p = strstr(buf, pat);
        if (p) result = strtod(p + strlen(pat), NULL);
    }
    close(fd);
    return result;
}

/* ------------------------------------------------------------------------ */

static const char *wl_name(void) { return cfg.workload == W_MSM ? "msm" : "mix"; }

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    resolve();

    n_keyids = cfg.workload == W_MIX ? cfg.keys : cfg.sessions * 2;
    stored = calloc(n_keyids, 1);
    if (!stored) die("out of memory");
    uint32_t max_value = cfg.value_size > 20 ? cfg.value_size : 20;

    threads = calloc((size_t)cfg.threads, sizeof *threads);
    uint32_t qcap = cfg.pipeline > 32 ? cfg.pipeline : 32;
    for (int t = 0; t < cfg.threads; t++) {
        thread_t *th = &threads[t];
        th->id = t;
        th->rng = mix64(cfg.seed + (uint64_t)t * 7919) | 1;
        th->gen = (uint32_t)t << 24;
        th->scratch = malloc(max_value + 16);
        th->hist.min = UINT64_MAX;
        th->ep = epoll_create1(EPOLL_CLOEXEC);
        th->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (th->ep < 0 || th->tfd < 0) die("epoll/timerfd: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(th->ep, EPOLL_CTL_ADD, th->tfd, &ev);
        th->nconns = cfg.connections / cfg.threads + (t < cfg.connections % cfg.threads);
        th->conns = calloc((size_t)th->nconns, sizeof(conn_t));
        for (int i = 0; i < th->nconns; i++) {
            conn_t *c = &th->conns[i];
            c->th = th;
            c->qcap = qcap;
            c->q = calloc(qcap, sizeof(req_t));
            c->rcap = 65536 > 2 * ((size_t)max_value + MAX_LINE) ? 65536 : 2 * ((size_t)max_value + MAX_LINE);
            c->rbuf = malloc(c->rcap);
            c->wcap = (size_t)qcap * (max_value + 128) + 4096;
            c->wbuf = malloc(c->wcap);
            c->fd = connect_server();
            if (c->fd < 0) die("cannot connect to %s:%s: %s", cfg.host, cfg.port, strerror(errno));
            c->last_connect = now_ns();
            conn_epoll(c, EPOLL_CTL_ADD);
        }
    }

    double cpu0_all = cpu_seconds();
    uint64_t t_begin = now_ns();
    for (int t = 0; t < cfg.threads; t++) pthread_create(&threads[t].pt, NULL, thread_main, &threads[t]);

    double preload_s = 0;
    int preload_timed_out = 0;
    if (cfg.preload) {
        uint64_t t0 = now_ns();
        atomic_store(&phase, PH_PRELOAD);
        while (atomic_load(&preload_done_threads) < cfg.threads) {
            if (now_ns() - t0 > (uint64_t)(PRELOAD_TIMEOUT_S * 1e9)) { preload_timed_out = 1; break; }
            sleep_ns(1000000);
        }
        preload_s = (now_ns() - t0) / 1e9;
    }
    double settle_s = 0;
    if (cfg.preload && cfg.settle && !preload_timed_out) {
        uint64_t t0 = now_ns();
        while (now_ns() - t0 < 120000000000ull && server_stat("persistence_pending") > 0) sleep_ns(50000000);
        settle_s = (now_ns() - t0) / 1e9;
    }
    if (cfg.warmup > 0 && !preload_timed_out) {
        atomic_store(&phase, PH_WARMUP);
        sleep_ns((uint64_t)(cfg.warmup * 1e9));
    }

    /* measure */
    double u0, s0; cpu_split(&u0, &s0);
    double srv_user0 = 0, srv_sys0 = 0;
    double srv0 = proc_cpu_seconds(cfg.server_pid, &srv_user0, &srv_sys0);
    unsigned long long mb0 = 0, mt0 = 0, mb1 = 0, mt1 = 0;
    int have_machine = machine_jiffies(&mb0, &mt0) == 0;
    uint64_t t_start = now_ns();
    uint64_t cap_ns = (uint64_t)(cfg.max_time * 1e9);
    uint64_t next_progress = t_start + 1000000000ull, last_completed = 0;
    if (!preload_timed_out) {
        atomic_store(&phase, PH_MEASURE);
        for (;;) {
            uint64_t t = now_ns();
            if (t - t_start >= cap_ns) break;
            if (cfg.requests && atomic_load(&measured_completed) >= cfg.requests) break;
            if (cfg.progress && t >= next_progress) {
                uint64_t done = 0;
                for (int i = 0; i < cfg.threads; i++) done += atomic_load_explicit(&threads[i].completed, memory_order_relaxed);
                fprintf(stderr, "[%6.1fs] %10.0f req/s\n", (t - t_start) / 1e9, (double)(done - last_completed));
                last_completed = done;
                next_progress += 1000000000ull;
            }
            uint64_t left = cap_ns - (t - t_start);
            sleep_ns(cfg.requests ? (left < 1000000 ? left : 1000000) : (left < 10000000 ? left : 10000000));
        }
    }
    uint64_t t_end = now_ns();
    double u1, s1; cpu_split(&u1, &s1);
    double srv_user1 = 0, srv_sys1 = 0;
    double srv1 = proc_cpu_seconds(cfg.server_pid, &srv_user1, &srv_sys1);
    have_machine = have_machine && machine_jiffies(&mb1, &mt1) == 0;
    double pend_end = server_stat("persistence_pending"), lag_end = server_stat("persistence_lag_ms");

    atomic_store(&phase, PH_DRAIN);
    uint64_t td = now_ns();
    while (atomic_load(&drained_threads) < cfg.threads && now_ns() - td < (uint64_t)(cfg.drain_timeout * 1e9)) sleep_ns(1000000);
    atomic_store(&phase, PH_DONE);
    for (int t = 0; t < cfg.threads; t++) pthread_join(threads[t].pt, NULL);
    double cpu_all = cpu_seconds() - cpu0_all;
    double wall_all = (now_ns() - t_begin) / 1e9;

    /* merge */
    hist_t *h = calloc(1, sizeof *h);
    h->min = UINT64_MAX;
    uint64_t errors = 0, timeouts = 0, connfail = 0, perr = 0, psets = 0, gets = 0, hits = 0, misses = 0, sets = 0, touches = 0, gap = 0;
    for (int t = 0; t < cfg.threads; t++) {
        thread_t *th = &threads[t];
        h_merge(h, &th->hist);
        errors += th->errors; timeouts += th->timeouts; connfail += th->conn_failures;
        perr += th->preload_errors; psets += th->preload_sets;
        gets += th->gets; hits += th->hits; misses += th->misses; sets += th->sets; touches += th->touches;
        if (th->max_gap > gap) gap = th->max_gap;
    }
    if (preload_timed_out) errors++;
    double secs = (t_end - t_start) / 1e9;
    if (cfg.requests && h->total >= cfg.requests) {
        /* the run ended at the last completion, not at the next poll */
        secs = (t_end - t_start) / 1e9;
    }
    double thr = secs > 0 ? h->total / secs : 0;
    double cpu_meas = (u1 - u0) + (s1 - s0);
    double cpu_pct = secs > 0 ? 100.0 * cpu_meas / secs : 0;
    double srv_cpu = (srv0 >= 0 && srv1 >= 0) ? srv1 - srv0 : -1;
    double srv_user = srv_cpu >= 0 ? srv_user1 - srv_user0 : -1, srv_sys = srv_cpu >= 0 ? srv_sys1 - srv_sys0 : -1;
    /* CPU the rest of the machine used meanwhile, in % of one core: the noise */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double machine_busy_pct = -1, background_pct = -1;
    if (have_machine && mt1 > mt0 && ncpu > 0) {
        machine_busy_pct = 100.0 * ncpu * (double)(mb1 - mb0) / (double)(mt1 - mt0);
        background_pct = machine_busy_pct - (secs > 0 ? 100 * cpu_meas / secs : 0) - (srv_cpu > 0 && secs > 0 ? 100 * srv_cpu / secs : 0);
        if (background_pct < 0) background_pct = 0;
    }
    double us = 1000.0;
    double p50 = h_percentile(h, 0.50) / us, p90 = h_percentile(h, 0.90) / us, p99 = h_percentile(h, 0.99) / us,
           p999 = h_percentile(h, 0.999) / us, mx = h->max / us, mn = h->total ? h->min / us : 0,
           mean = h->total ? h->sum / h->total / us : 0;

    for (int t = 0; t < cfg.threads; t++)
        for (int i = 0; i < threads[t].nsamples; i++) {
            int seen = 0;
            for (int u = 0; u <= t && !seen; u++)
                for (int j = 0; j < (u == t ? i : threads[u].nsamples); j++)
                    if (!strcmp(threads[u].samples[j], threads[t].samples[i])) { seen = 1; break; }
            if (!seen) fprintf(stderr, "tandem-load: error sample: %s\n", threads[t].samples[i]);
        }

    if (cfg.json) {
        printf("{\"label\":\"%s\",\"workload\":\"%s\",\"host\":\"%s\",\"port\":\"%s\",\"threads\":%d,\"connections\":%d,"
               "\"pipeline\":%u,\"get_pct\":%d,\"set_pct\":%d,\"touch_pct\":%d,\"value_size\":%u,\"keys\":%" PRIu64 ",\"sessions\":%" PRIu64 ","
               "\"rate\":%.3f,\"preload\":%s,\"preload_seconds\":%.3f,\"preload_sets\":%" PRIu64 ",\"preload_errors\":%" PRIu64 ","
               "\"duration_s\":%.3f,\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"connection_failures\":%" PRIu64 ","
               "\"throughput\":%.1f,\"gets\":%" PRIu64 ",\"get_hits\":%" PRIu64 ",\"get_misses\":%" PRIu64 ",\"sets\":%" PRIu64 ",\"touches\":%" PRIu64 ","
               "\"lat_min_us\":%.1f,\"lat_mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
               "\"max_completion_gap_ms\":%.2f,\"loadgen_cpu_s\":%.3f,\"loadgen_user_s\":%.3f,\"loadgen_sys_s\":%.3f,\"loadgen_cpu_pct\":%.1f,"
               "\"loadgen_cpu_total_s\":%.3f,\"wall_total_s\":%.3f,\"server_cpu_s\":%.3f,\"server_user_s\":%.3f,\"server_sys_s\":%.3f,\"server_cpu_pct\":%.1f,"
               "\"machine_busy_pct\":%.1f,\"background_cpu_pct\":%.1f,\"cores\":%ld,\"settle_s\":%.3f,"
               "\"server_persistence_pending_end\":%.0f,\"server_persistence_lag_ms_end\":%.0f}\n",
               cfg.label, wl_name(), cfg.host, cfg.port, cfg.threads, cfg.connections, cfg.pipeline, cfg.pct_get, cfg.pct_set,
               cfg.pct_touch, cfg.value_size, cfg.keys, cfg.sessions, cfg.rate, cfg.preload ? "true" : "false", preload_s, psets, perr,
               secs, h->total, errors, timeouts, connfail, thr, gets, hits, misses, sets, touches, mn, mean, p50, p90, p99, p999, mx,
               gap / 1e6, cpu_meas, u1 - u0, s1 - s0, cpu_pct, cpu_all, wall_all, srv_cpu, srv_user, srv_sys, srv_cpu >= 0 && secs > 0 ? 100 * srv_cpu / secs : -1,
               machine_busy_pct, background_pct, ncpu, settle_s, pend_end, lag_end);
    } else {
        printf("tandem-load%s%s: %s:%s, workload %s", *cfg.label ? " " : "", cfg.label, cfg.host, cfg.port, wl_name());
        if (cfg.workload == W_MIX) printf(" (get %d%% set %d%% touch %d%%, %" PRIu64 " keys)", cfg.pct_get, cfg.pct_set, cfg.pct_touch, cfg.keys);
        else printf(" (%" PRIu64 " sessions)", cfg.sessions);
        printf(", value %u B, %d connections on %d threads, pipeline %u, %s\n", cfg.value_size, cfg.connections, cfg.threads,
               cfg.pipeline, cfg.rate > 0 ? "open loop" : "closed loop");
        if (cfg.rate > 0) printf("target rate:   %.0f req/s\n", cfg.rate);
        if (cfg.preload) printf("preload:       %" PRIu64 " sets in %.2f s, %" PRIu64 " errors%s\n", psets, preload_s, perr, preload_timed_out ? " (TIMED OUT)" : "");
        printf("requests:      %" PRIu64 " in %.2f s\n", h->total, secs);
        printf("errors:        %" PRIu64 " (unanswered %" PRIu64 ", connection failures %" PRIu64 ")\n", errors, timeouts, connfail);
        printf("throughput:    %.0f req/s\n", thr);
        printf("latency (us):  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  (min %.1f, mean %.1f)\n", p50, p90, p99, p999, mx, mn, mean);
        printf("longest gap between replies: %.2f ms\n", gap / 1e6);
        printf("gets:          %" PRIu64 " (%" PRIu64 " hits, %" PRIu64 " misses), sets %" PRIu64 ", touches %" PRIu64 "\n", gets, hits, misses, sets, touches);
        printf("loadgen cpu:   %.2f s (user %.2f + sys %.2f) = %.1f%% of wall (of one core)\n", cpu_meas, u1 - u0, s1 - s0, cpu_pct);
        if (srv_cpu >= 0) {
            printf("server cpu:    %.2f s (user %.2f + sys %.2f) = %.1f%% of wall (pid %d)\n", srv_cpu, srv_user, srv_sys,
                   secs > 0 ? 100 * srv_cpu / secs : 0, cfg.server_pid);
            /* The server's cost per request, user and kernel apart: what a
               server's code adds shows in user time, the sockets in sys. */
            if (h->total) printf("server cpu per request: %.2f us (user %.2f + sys %.2f)\n", 1e6 * srv_cpu / h->total,
                                 1e6 * srv_user / h->total, 1e6 * srv_sys / h->total);
        }
        if (machine_busy_pct >= 0) printf("machine:       %.0f%% busy of %ld cores x 100%%; others used %.0f%% (of one core)\n", machine_busy_pct, ncpu, background_pct);
        if (settle_s > 0) printf("settle:        %.2f s until the server had persisted the preload\n", settle_s);
        if (pend_end >= 0) printf("server at end: persistence_pending %.0f, persistence_lag_ms %.0f\n", pend_end, lag_end);
    }
    if (errors) return 1;
    if (!h->total) { fprintf(stderr, "tandem-load: no request completed during the measurement\n"); return 1; }
    return 0;
}
