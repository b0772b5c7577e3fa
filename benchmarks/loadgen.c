/* loadgen: a TCP load generator for echo servers.
 *
 * Single-threaded, epoll, nonblocking.  Opens N connections.  Closed loop (the
 * default): keeps D messages in flight on each (a reply whole -> the next
 * message goes out).  Open loop (--rate R): sends R messages per second in
 * all, message g on connection g % N at start + g/R whatever the replies do,
 * and measures each latency from that scheduled time (so a server that falls
 * behind is charged for the queueing it causes).  Checks every
 * reply byte for byte against what was sent (each message has
 * distinct content: the connection id and a sequence number are stamped into
 * it), records per-message latency in a log-linear histogram, and prints one
 * line of JSON at the end:
 *
 *   {"msgs":..,"seconds":..,"msgs_per_sec":..,"p50_us":..,"p99_us":..,
 *    "p999_us":..,"errors":..,"server_cpu_s":..,"client_cpu_s":..,...}
 *
 * server_cpu_s is the utime+stime delta of /proc/PID/stat over the measured
 * window (after the warm-up), server_sys_s its stime part (the kernel's
 * share); null without --server-pid.  Exit status is 1
 * when errors > 0 (a wrong reply, a framing error, a connection lost), 2 on a
 * usage or setup error, 0 otherwise.
 *
 * TLS (a build with -DLOADGEN_TLS, linked with OpenSSL): --tls speaks TLS
 * 1.3 on every connection, offering TLS_AES_128_GCM_SHA256 alone (so every
 * server negotiates it), without verifying the server's certificate;
 * OpenSSL reads and writes the nonblocking sockets itself, with read-ahead,
 * and the handshake is driven by the first message's SSL_write.  The JSON
 * gets "tls_version" and "tls_cipher", as negotiated on the first connection
 * that completed its handshake.  --handshakes (with or without --tls): each
 * connection carries one message, then closes (TLS: close_notify, then the
 * socket) and a new connection takes its place, N connections at a time;
 * each message's latency counts from its connection's connect(), and "msgs"
 * is then the number of connections (with --tls, handshakes) completed.
 *
 * Build: gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror loadgen.c -o loadgen
 *        gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -DLOADGEN_TLS loadgen.c \
 *            -o loadgen-tls -lssl -lcrypto        (apt-get install libssl-dev)
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

enum { FR_LEN4, FR_LINE };

/* ---- histogram: values in ns; exact below 1024, then 512 sub-buckets per
 * power of two (relative error < 0.2%). ---- */
#define SUB_BITS 9
#define SUB (1u << SUB_BITS)           /* 512 */
#define NBUCKETS ((64 - SUB_BITS) * SUB + 2 * SUB)

static uint64_t hist[NBUCKETS];

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * SUB)
        return (unsigned)v;
    int msb = 63 - __builtin_clzll(v);            /* >= SUB_BITS + 1 */
    int shift = msb - SUB_BITS;                    /* >= 1 */
    uint64_t mant = v >> shift;                    /* [SUB, 2*SUB) */
    return (unsigned)((uint64_t)(shift + 1) * SUB + (mant - SUB));
}

static double value_of(unsigned b)
{
    if (b < 2 * SUB)
        return (double)b;
    unsigned shift = b / SUB - 1;
    uint64_t mant = b % SUB + SUB;
    /* midpoint of [mant << shift, (mant + 1) << shift) */
    return ((double)(mant << shift) + (double)((mant + 1) << shift)) / 2.0;
}

static double percentile_us(uint64_t total, double q)
{
    if (total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank < 1)
        rank = 1;
    if (rank > total)
        rank = total;
    uint64_t acc = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        acc += hist[b];
        if (acc >= rank)
            return value_of(b) / 1000.0;
    }
    return 0.0;
}

/* ---- options and state ---- */
static const char *opt_host = "127.0.0.1";
static const char *opt_port = NULL;
static int opt_conns = 50, opt_depth = 1, opt_framing = FR_LEN4;
static size_t opt_size = 64;
static double opt_seconds = 2.0, opt_warmup = 0.0;
static long opt_server_pid = 0;
static double opt_rate = 0.0;   /* messages per second in all; 0: closed loop */
static int opt_tls, opt_handshakes;

typedef struct {
    int fd;
    uint32_t id;
    int dead;
    int want_out;
    uint64_t next_seq;  /* sequence number of the next message to send */
    uint64_t head_seq;  /* sequence number of the oldest message in flight */
    uint64_t *sent_ns;  /* ring of send times, indexed by seq & ring_mask */
    uint64_t ring_mask; /* ring size - 1 (a power of two) */
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
    uint64_t conn_ns;   /* --handshakes: when this connection's connect() began */
    int answered;       /* --handshakes: its one message has its reply */
#ifdef LOADGEN_TLS
    SSL *ssl;
#endif
} conn_t;

static conn_t *conns;
static int epfd;
static char *pattern;    /* opt_size + 32 bytes of 'a'..'z' */
static char *scratch;    /* opt_size bytes: the expected payload */
static int measuring, stopping;
static uint64_t m_msgs, errors;
static int live_conns;
static uint64_t max_inflight;
static volatile sig_atomic_t got_signal;
static struct addrinfo *server_ai;
static uint64_t reconnects;
#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
static char tls_version[32], tls_cipher[64];
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(2);
    }
    return p;
}

/* The payload of message `seq` on connection `id`: a rotation of the
 * alphabet with the sequence number and connection id stamped in hex, least
 * significant digit first (so even short payloads differ from message to
 * message).  Never contains '\n'. */
static void make_payload(uint32_t id, uint64_t seq, char *dst)
{
    static const char hex[] = "0123456789abcdef";
    size_t off = (size_t)((seq * 7u + id * 3u) % 26u);
    memcpy(dst, pattern + off, opt_size);
    size_t i = 0;
    for (int k = 0; k < 16 && i < opt_size; k++, i++)
        dst[i] = hex[(seq >> (4 * k)) & 15];
    for (int k = 0; k < 8 && i < opt_size; k++, i++)
        dst[i] = hex[(id >> (4 * k)) & 15];
}

static size_t frame_size(void)
{
    return opt_framing == FR_LEN4 ? opt_size + 4 : opt_size + 1;
}

static void out_reserve(conn_t *c, size_t more)
{
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap)
        return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap)
            return;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + more)
        cap *= 2;
    char *p = realloc(c->out, cap);
    if (!p) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(2);
    }
    c->out = p;
    c->out_cap = cap;
}

/* Open loop can have any number of messages in flight: double the ring of
 * send times, keeping each entry at its seq's new index. */
static void ring_grow(conn_t *c)
{
    uint64_t size = c->ring_mask + 1, nsize = size * 2;
    uint64_t *n = xmalloc(sizeof(uint64_t) * nsize);
    for (uint64_t s = c->head_seq; s < c->next_seq; s++)
        n[s & (nsize - 1)] = c->sent_ns[s & c->ring_mask];
    free(c->sent_ns);
    c->sent_ns = n;
    c->ring_mask = nsize - 1;
}

static void queue_message(conn_t *c, uint64_t t)
{
    out_reserve(c, frame_size());
    char *p = c->out + c->out_len;
    if (opt_framing == FR_LEN4) {
        uint32_t n = (uint32_t)opt_size;
        p[0] = (char)(n >> 24);
        p[1] = (char)(n >> 16);
        p[2] = (char)(n >> 8);
        p[3] = (char)n;
        make_payload(c->id, c->next_seq, p + 4);
    } else {
        make_payload(c->id, c->next_seq, p);
        p[opt_size] = '\n';
    }
    c->out_len += frame_size();
    uint64_t inflight = c->next_seq - c->head_seq;
    if (inflight > c->ring_mask)
        ring_grow(c);
    if (inflight + 1 > max_inflight)
        max_inflight = inflight + 1;
    c->sent_ns[c->next_seq & c->ring_mask] = t;
    c->next_seq++;
}

static void set_events(conn_t *c, int want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u32 = c->id};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_out = want_out;
}

static void kill_conn(conn_t *c, const char *why)
{
    if (c->dead)
        return;
    if (!stopping) {
        fprintf(stderr, "loadgen: connection %u: %s\n", c->id, why);
        errors++;
    }
    c->dead = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
#ifdef LOADGEN_TLS
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
    close(c->fd);
    live_conns--;
}

#ifdef LOADGEN_TLS
/* What OpenSSL said, for a connection's error message. */
static const char *tls_error(SSL *ssl, int r)
{
    static char buf[256];
    int e = SSL_get_error(ssl, r);
    unsigned long code = ERR_peek_last_error();
    if (e == SSL_ERROR_ZERO_RETURN)
        return "closed by the server (close_notify)";
    if (e == SSL_ERROR_SYSCALL && !code)
        return errno ? strerror(errno) : "closed by the server";
    if (code) {
        ERR_error_string_n(code, buf, sizeof buf);
        return buf;
    }
    snprintf(buf, sizeof buf, "TLS error %d", e);
    return buf;
}

/* flush_out with TLS: SSL_write (which drives the handshake first). */
static void flush_out_tls(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) {
            set_events(c, 1);
            return;
        }
        if (e == SSL_ERROR_WANT_READ) {     /* the handshake waits for the server */
            set_events(c, 0);
            return;
        }
        kill_conn(c, tls_error(c->ssl, n));
        return;
    }
    c->out_off = c->out_len = 0;
    set_events(c, 0);
}
#endif

static void flush_out(conn_t *c)
{
#ifdef LOADGEN_TLS
    if (c->ssl) {
        flush_out_tls(c);
        return;
    }
#endif
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, 1);
            return;
        }
        kill_conn(c, n < 0 ? strerror(errno) : "write returned 0");
        return;
    }
    c->out_off = c->out_len = 0;
    set_events(c, 0);
}

/* One whole reply with payload [p, p+len) arrived for the oldest message. */
static void on_reply(conn_t *c, const char *p, size_t len, uint64_t t)
{
    if (c->head_seq >= c->next_seq) {
        fprintf(stderr, "loadgen: connection %u: reply with nothing in flight\n", c->id);
        errors++;
        return;
    }
    uint64_t seq = c->head_seq++;
    make_payload(c->id, seq, scratch);
    if (len != opt_size || memcmp(p, scratch, opt_size) != 0) {
        if (errors < 5)
            fprintf(stderr, "loadgen: connection %u message %llu: wrong reply "
                    "(%zu bytes, expected %zu)\n", c->id, (unsigned long long)seq,
                    len, opt_size);
        errors++;
    }
    if (measuring) {
        uint64_t sent = c->sent_ns[seq & c->ring_mask];
        hist[bucket_of(t > sent ? t - sent : 0)]++;
        m_msgs++;
    }
#ifdef LOADGEN_TLS
    if (c->ssl && !tls_cipher[0]) {
        snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
        snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
    }
#endif
    if (opt_handshakes)
        c->answered = 1;
    else if (!stopping && opt_rate <= 0)
        queue_message(c, t);
}

/* Read what the connection has: >0 bytes, 0 at the end of the stream, -1
 * with errno EAGAIN (nothing now) or the error (*why says it).  With TLS,
 * *more is set when the buffer filled before OpenSSL ran out of input. */
static ssize_t conn_read(conn_t *c, char *buf, size_t len, int *more, const char **why)
{
    *more = 0;
#ifdef LOADGEN_TLS
    if (c->ssl) {
        size_t got = 0;
        while (got < len) {
            ERR_clear_error();
            errno = 0;
            int n = SSL_read(c->ssl, buf + got, (int)(len - got > 0x40000000 ? 0x40000000
                                                                            : len - got));
            if (n > 0) {
                got += (size_t)n;
                if (!SSL_has_pending(c->ssl))
                    return (ssize_t)got;    /* epoll says when there is more */
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                if (e == SSL_ERROR_WANT_WRITE)
                    set_events(c, 1);
                if (got)
                    return (ssize_t)got;
                errno = EAGAIN;
                return -1;
            }
            if (got)
                return (ssize_t)got;    /* the end comes on the next call */
            if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL &&
                                               !ERR_peek_last_error() && !errno))
                return 0;
            *why = tls_error(c->ssl, n);
            errno = EIO;
            return -1;
        }
        *more = 1;
        return (ssize_t)got;
    }
#endif
    ssize_t n = read(c->fd, buf, len);
    if (n < 0)
        *why = strerror(errno);
    return n;
}

static void open_conn(conn_t *c);

static void on_readable(conn_t *c)
{
    int more;
again:;
    size_t want = frame_size() + 65536;
    if (want < 262144)
        want = 262144;
    if (c->in_cap - c->in_len < 65536 || c->in_cap < want) {
        size_t cap = c->in_cap ? c->in_cap : want;
        while (cap < want || cap - c->in_len < 65536)
            cap *= 2;
        char *p = realloc(c->in, cap);
        if (!p) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
        c->in = p;
        c->in_cap = cap;
    }
    const char *why = NULL;
    ssize_t n = conn_read(c, c->in + c->in_len, c->in_cap - c->in_len, &more, &why);
    if (n == 0) {
        kill_conn(c, "closed by the server");
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (c->out_len > c->out_off)
                flush_out(c);      /* TLS: a handshake the write waits for */
            return;
        }
        kill_conn(c, why);
        return;
    }
    c->in_len += (size_t)n;
    uint64_t t = now_ns();
    size_t pos = 0;
    while (pos < c->in_len) {
        size_t avail = c->in_len - pos;
        const char *p = c->in + pos;
        if (opt_framing == FR_LEN4) {
            if (avail < 4)
                break;
            uint32_t len = ((uint32_t)(unsigned char)p[0] << 24) |
                           ((uint32_t)(unsigned char)p[1] << 16) |
                           ((uint32_t)(unsigned char)p[2] << 8) |
                           (uint32_t)(unsigned char)p[3];
            if (len != opt_size) {
                /* the stream cannot be resynchronised: count and drop it */
                fprintf(stderr, "loadgen: connection %u: reply header says %u "
                        "bytes, expected %zu\n", c->id, len, opt_size);
                kill_conn(c, "bad length header");
                return;
            }
            if (avail < 4 + (size_t)len)
                break;
            on_reply(c, p + 4, len, t);
            pos += 4 + (size_t)len;
        } else {
            const char *nl = memchr(p, '\n', avail);
            if (!nl) {
                if (avail > opt_size) {
                    kill_conn(c, "reply line too long");
                    return;
                }
                break;
            }
            on_reply(c, p, (size_t)(nl - p), t);
            pos += (size_t)(nl - p) + 1;
        }
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    if (opt_handshakes && c->answered) {
        if (c->in_len) {
            kill_conn(c, "more than the reply");
            return;
        }
        /* done with it: close it, open the next (unless stopping) */
#ifdef LOADGEN_TLS
        if (c->ssl)
            SSL_shutdown(c->ssl);      /* our close_notify */
#endif
        int was_stopping = stopping;
        stopping = 1;                  /* not an error */
        kill_conn(c, "done");
        stopping = was_stopping;
        if (!stopping && !got_signal)
            open_conn(c);
        return;
    }
    if (c->out_len > c->out_off)
        flush_out(c);
    if (more && !c->dead)
        goto again;
}

/* The server's CPU seconds so far, user + system; *sys_s gets the system
 * part.  -1 without --server-pid or when /proc cannot tell. */
static double read_server_cpu(double *sys_s)
{
    *sys_s = -1.0;
    if (opt_server_pid <= 0)
        return -1.0;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", opt_server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1.0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1.0;
    /* after ") ": field 3 (state) ... field 14 utime, 15 stime */
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2)
        return -1.0;
    double tck = (double)sysconf(_SC_CLK_TCK);
    *sys_s = (double)stime / tck;
    return (double)(utime + stime) / tck;
}

static double client_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port PORT [--host H] [--conns N] [--depth D] [--size S]\n"
            "               [--framing len4|line] [--seconds T] [--warmup-seconds W]\n"
            "               [--server-pid PID] [--rate MSGS_PER_SEC] [--tls] [--handshakes]\n");
    exit(2);
}

/* Connect connection slot `c` (its id set): a blocking connect(), then
 * nonblocking; with TLS, the handshake starts with its first write.  In
 * --handshakes mode its one message is queued and sent at once. */
static void open_conn(conn_t *c)
{
    uint64_t t = now_ns();
    c->dead = 1;        /* until connected */
    int fd = socket(server_ai->ai_family, server_ai->ai_socktype | SOCK_CLOEXEC,
                    server_ai->ai_protocol);
    if (fd < 0)
        die("socket");
    if (connect(fd, server_ai->ai_addr, server_ai->ai_addrlen) < 0) {
        if (!opt_handshakes)
            die("connect");
        /* mid-run: count it, leave the slot empty */
        close(fd);
        fprintf(stderr, "loadgen: connection %u: connect: %s\n", c->id, strerror(errno));
        errors++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->dead = 0;
    c->answered = 0;
    c->want_out = 0;
    c->in_len = c->out_off = c->out_len = 0;
    c->head_seq = c->next_seq;
    c->conn_ns = t;
    if (!c->sent_ns) {
        uint64_t ring = 16;
        while (ring < (uint64_t)opt_depth)
            ring *= 2;
        c->sent_ns = xmalloc(sizeof(uint64_t) * ring);
        c->ring_mask = ring - 1;
    }
#ifdef LOADGEN_TLS
    if (opt_tls) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
            fprintf(stderr, "loadgen: SSL_new failed\n");
            exit(2);
        }
        SSL_set_connect_state(c->ssl);
    }
#endif
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c->id};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    live_conns++;
    if (opt_handshakes) {
        reconnects++;
        queue_message(c, t);
        flush_out(c);
    }
}

static void connect_all(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = getaddrinfo(opt_host, opt_port, &hints, &server_ai);
    if (rc) {
        fprintf(stderr, "loadgen: %s:%s: %s\n", opt_host, opt_port, gai_strerror(rc));
        exit(2);
    }
#ifdef LOADGEN_TLS
    if (opt_tls) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx || !SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION) ||
            !SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION) ||
            !SSL_CTX_set_ciphersuites(tls_ctx, "TLS_AES_128_GCM_SHA256")) {
            fprintf(stderr, "loadgen: cannot set up the TLS context\n");
            ERR_print_errors_fp(stderr);
            exit(2);
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_read_ahead(tls_ctx, 1);
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                         SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
    for (int i = 0; i < opt_conns; i++) {
        conns[i].id = (uint32_t)i;
        open_conn(&conns[i]);
    }
}

enum { MAXEV = 256 };

/* Open loop: send every message whose scheduled time (start + g/rate) has
 * come; return the scheduled time of the next one. */
static uint64_t send_due(uint64_t start, uint64_t *scheduled, uint64_t now)
{
    for (;;) {
        uint64_t due = start + (uint64_t)((double)*scheduled * 1e9 / opt_rate);
        if (due > now || live_conns == 0)
            return due;
        conn_t *c = &conns[*scheduled % (uint64_t)opt_conns];
        (*scheduled)++;
        if (c->dead)
            continue;
        queue_message(c, due);     /* latency counts from the schedule */
        flush_out(c);
    }
}

/* epoll_wait with a nanosecond timeout: epoll_pwait2 where the kernel has it
 * (5.11+); otherwise whole milliseconds, polling when less than one is left. */
static int wait_events(struct epoll_event *evs, int max, uint64_t wait_ns)
{
#ifdef SYS_epoll_pwait2
    static int no_pwait2;
    if (!no_pwait2) {
        struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000u),
                              .tv_nsec = (long)(wait_ns % 1000000000u)};
        int n = (int)syscall(SYS_epoll_pwait2, epfd, evs, max, &ts, NULL, (size_t)0);
        if (n >= 0 || errno != ENOSYS)
            return n;
        no_pwait2 = 1;
    }
#endif
    return epoll_wait(epfd, evs, max, (int)(wait_ns / 1000000u));
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tls")) {
#ifndef LOADGEN_TLS
            fprintf(stderr, "loadgen: --tls: this loadgen was built without TLS "
                    "(build it with -DLOADGEN_TLS ... -lssl -lcrypto)\n");
            exit(2);
#endif
            opt_tls = 1;
            continue;
        }
        if (!strcmp(a, "--handshakes")) {
            opt_handshakes = 1;
            continue;
        }
        if (!v)
            usage();
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = v;
        else if (!strcmp(a, "--conns")) opt_conns = atoi(v);
        else if (!strcmp(a, "--depth")) opt_depth = atoi(v);
        else if (!strcmp(a, "--size")) opt_size = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--seconds")) opt_seconds = atof(v);
        else if (!strcmp(a, "--warmup-seconds")) opt_warmup = atof(v);
        else if (!strcmp(a, "--server-pid")) opt_server_pid = atol(v);
        else if (!strcmp(a, "--rate")) opt_rate = atof(v);
        else if (!strcmp(a, "--framing")) {
            if (!strcmp(v, "len4")) opt_framing = FR_LEN4;
            else if (!strcmp(v, "line")) opt_framing = FR_LINE;
            else usage();
        } else
            usage();
        i++;
    }
    if (!opt_port || opt_conns < 1 || opt_depth < 1 || opt_seconds <= 0 ||
        opt_warmup < 0 || opt_rate < 0 || opt_size > 0xffffffffu ||
        (opt_handshakes && (opt_rate > 0 || opt_depth != 1)))
        usage();

    /* Open loop: wake at each message's scheduled time, not up to the
     * default 50 us timer slack later (which would count in every latency). */
    if (opt_rate > 0 && prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) != 0)
        die("prctl(PR_SET_TIMERSLACK)");
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    pattern = xmalloc(opt_size + 32);
    for (size_t i = 0; i < opt_size + 32; i++)
        pattern[i] = (char)('a' + i % 26);
    scratch = xmalloc(opt_size);
    conns = calloc((size_t)opt_conns, sizeof *conns);
    if (!conns)
        die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    connect_all();

    uint64_t start = now_ns();
    if (opt_rate <= 0 && !opt_handshakes) {
        for (int i = 0; i < opt_conns; i++) {
            for (int d = 0; d < opt_depth; d++)
                queue_message(&conns[i], start);
            flush_out(&conns[i]);
        }
    }
    uint64_t scheduled = 0;   /* open loop: messages sent so far */

    uint64_t warm_end = start + (uint64_t)(opt_warmup * 1e9);
    uint64_t t0 = 0, t1 = 0, end = 0;
    double cpu0 = -1, cpu1 = -1, sys0 = -1, sys1 = -1, ccpu0 = 0, ccpu1 = 0;
    if (opt_warmup <= 0) {
        measuring = 1;
        t0 = start;
        cpu0 = read_server_cpu(&sys0);
        ccpu0 = client_cpu();
        end = t0 + (uint64_t)(opt_seconds * 1e9);
    }

    struct epoll_event evs[MAXEV];
    while (live_conns > 0 && !got_signal) {
        uint64_t wait_ns = 10000000;
        if (opt_rate > 0) {
            uint64_t now = now_ns();
            uint64_t due = send_due(start, &scheduled, now);
            wait_ns = due > now ? due - now : 0;
        }
        int n = wait_events(evs, MAXEV, wait_ns);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u32];
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
            if (!c->dead && (evs[i].events & EPOLLOUT))
                flush_out(c);
        }
        uint64_t t = now_ns();
        if (!measuring && t >= warm_end) {
            measuring = 1;
            t0 = t;
            cpu0 = read_server_cpu(&sys0);
            ccpu0 = client_cpu();
            end = t0 + (uint64_t)(opt_seconds * 1e9);
        } else if (measuring && t >= end) {
            break;
        }
    }
    t1 = now_ns();
    if (!measuring)
        t0 = t1;
    cpu1 = read_server_cpu(&sys1);
    ccpu1 = client_cpu();
    stopping = 1;
    uint64_t unanswered = 0;
    for (int i = 0; i < opt_conns; i++)
        unanswered += conns[i].next_seq - conns[i].head_seq;
    for (int i = 0; i < opt_conns; i++)
        if (!conns[i].dead)
            kill_conn(&conns[i], "done");

    double secs = (double)(t1 - t0) / 1e9;
    char cpu_txt[64], sys_txt[64], tls_txt[160] = "";
#ifdef LOADGEN_TLS
    if (opt_tls)
        snprintf(tls_txt, sizeof tls_txt, ",\"tls_version\":\"%s\",\"tls_cipher\":\"%s\"",
                 tls_version, tls_cipher);
#endif
    if (opt_handshakes)
        snprintf(tls_txt + strlen(tls_txt), sizeof tls_txt - strlen(tls_txt),
                 ",\"handshakes\":true,\"connections_opened\":%llu",
                 (unsigned long long)reconnects);
    if (cpu0 >= 0 && cpu1 >= 0) {
        snprintf(cpu_txt, sizeof cpu_txt, "%.3f", cpu1 - cpu0);
        snprintf(sys_txt, sizeof sys_txt, "%.3f", sys1 - sys0);
    } else {
        snprintf(cpu_txt, sizeof cpu_txt, "null");
        snprintf(sys_txt, sizeof sys_txt, "null");
    }
    printf("{\"msgs\":%llu,\"seconds\":%.4f,\"msgs_per_sec\":%.1f,"
           "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"errors\":%llu,"
           "\"server_cpu_s\":%s,\"server_sys_s\":%s,\"client_cpu_s\":%.3f,\"conns\":%d,\"depth\":%d,"
           "\"size\":%zu,\"framing\":\"%s\",\"rate\":%.1f,"
           "\"max_inflight\":%llu,\"unanswered\":%llu%s}\n",
           (unsigned long long)m_msgs, secs, secs > 0 ? (double)m_msgs / secs : 0.0,
           percentile_us(m_msgs, 0.50), percentile_us(m_msgs, 0.99),
           percentile_us(m_msgs, 0.999), (unsigned long long)errors, cpu_txt, sys_txt,
           ccpu1 - ccpu0, opt_conns, opt_depth, opt_size,
           opt_framing == FR_LEN4 ? "len4" : "line", opt_rate,
           (unsigned long long)max_inflight, (unsigned long long)unanswered, tls_txt);
    fflush(stdout);
    return errors ? 1 : 0;
}
